"""Code digests change with the code a rule runs and with nothing else."""

from __future__ import annotations

import os
from pathlib import Path

from qaclims.digest import PACKAGE_ROOT, code_digest, module_closure


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
