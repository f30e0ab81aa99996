"""Code digests change with the code a rule runs and with nothing else."""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path

from qaclims.digest import PACKAGE_ROOT, code_digest, library_versions, module_closure


def _package(tmp_path: Path) -> Path:
    root = tmp_path / "qaclims"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text('"""pkg"""\n')
    (root / "sub" / "__init__.py").write_text("")
    (root / "crf.py").write_text("from qaclims.sub import helper\nimport numpy\n")
    (root / "sub" / "helper.py").write_text("from . import deep\n")
    (root / "sub" / "deep.py").write_text("X = 1\n")
    (root / "other.py").write_text("Y = 2\n")
    return root


def test_closure_follows_in_package_imports(tmp_path):
    root = _package(tmp_path)
    names = {str(p.relative_to(root)) for p in module_closure("qaclims.crf", root)}
    assert names == {"__init__.py", "crf.py", "sub/__init__.py", "sub/helper.py", "sub/deep.py"}


def test_digest_changes_with_the_code_it_runs_only(tmp_path):
    root = _package(tmp_path)
    before = code_digest("qaclims.crf", root)
    (root / "other.py").write_text("Y = 3\n")
    assert code_digest("qaclims.crf", root) == before
    (root / "sub" / "deep.py").write_text("X = 2\n")
    assert code_digest("qaclims.crf", root) != before


def test_digest_ignores_mtime(tmp_path):
    root = _package(tmp_path)
    before = code_digest("qaclims.crf", root)
    os.utime(root / "crf.py", (1, 1))
    assert code_digest("qaclims.crf", root) == before


def test_manifest_closure_is_what_the_manifest_stage_runs():
    names = {str(p.relative_to(PACKAGE_ROOT)) for p in module_closure("qaclims.manifest")}
    assert {"manifest.py", "datasets/voc.py", "datasets/coco.py", "tables.py"} <= names
    assert "cli.py" not in names


def test_comments_docstrings_and_formatting_do_not_count(tmp_path):
    root = _package(tmp_path)
    deep = root / "sub" / "deep.py"
    deep.write_text('"""A module."""\n\n\ndef f(x):\n    """Twice x."""\n    return 2 * x\n')
    before = code_digest("qaclims.crf", root)
    deep.write_text('"""Another text."""\n\n# a comment\ndef f(x):  # inline\n    return 2*x\n')
    assert code_digest("qaclims.crf", root) == before
    deep.write_text("def f(x):\n    return 3 * x\n")
    assert code_digest("qaclims.crf", root) != before


def test_the_cli_is_in_every_digest_but_not_its_stage_table(tmp_path):
    root = _package(tmp_path)
    cli = root / "cli.py"
    cli.write_text('STAGES = {"crf": "qaclims.crf"}\n\n\ndef main():\n    return 1\n')
    before = code_digest("qaclims.crf", root)
    cli.write_text(
        'STAGES = {"crf": "qaclims.crf", "new": "qaclims.other"}\n\n\ndef main():\n    return 1\n'
    )
    assert code_digest("qaclims.crf", root) == before
    cli.write_text('STAGES = {"crf": "qaclims.crf"}\n\n\ndef main():\n    return 2\n')
    assert code_digest("qaclims.crf", root) != before
    entry_free = code_digest("qaclims.crf", root, entry=False)
    cli.write_text('STAGES = {"crf": "qaclims.crf"}\n\n\ndef main():\n    return 3\n')
    assert code_digest("qaclims.crf", root, entry=False) == entry_free


def test_library_versions_follow_the_closures_imports():
    crf = library_versions("qaclims.crf")
    assert set(crf) == {"numpy", "pillow", "pydensecrf2"}
    assert crf["pydensecrf2"] == metadata.version("pydensecrf2")
    assert {"torch", "transformers"} <= set(library_versions("qaclims.qape"))
    assert library_versions("qaclims.summary") == {}
