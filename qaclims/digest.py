"""Code digests: what a stage runs, for its rule's settings param and its stores' keys.

Snakemake's code trigger sees a rule's own shell text, not the modules it imports, so each
rule's settings carry `code_digest("<module>")`. The digest covers the module, every qaclims
module it imports (transitively), the package `__init__` files on the way and the CLI entry
every job runs (`qaclims/cli.py`, `qaclims/__main__.py`). It hashes the syntax tree with
docstrings dropped (comments never reach it), so an edit to a comment, a docstring or the
formatting reruns nothing; a touched mtime reruns nothing.

The CLI's stage table (`STAGES`) is left out of the CLI's digest: which module a stage runs
is already in the digest (its closure), so adding a stage to the table reruns no other one.

`library_versions` lists the installed versions of the numerics-shaping libraries the
closure imports (a transformers upgrade can change VQA answers; a pyarrow one cannot).
"""

from __future__ import annotations

import ast
import hashlib
from functools import cache
from importlib import metadata
from pathlib import Path

from qaclims.fingerprint import DigestCache

PACKAGE = "qaclims"
PACKAGE_ROOT = Path(__file__).resolve().parent
ENTRY = f"{PACKAGE}.cli"
ENTRY_FILES = ("__main__.py",)
STAGE_TABLE = "STAGES"

# import name -> distribution, for the libraries whose behaviour shapes artifacts' numbers.
NUMERIC_LIBRARIES = {
    "torch": "torch",
    "torchvision": "torchvision",
    "transformers": "transformers",
    "open_clip": "open_clip_torch",
    "numpy": "numpy",
    "PIL": "pillow",
    "cv2": "opencv-python-headless",
    "pydensecrf": "pydensecrf2",
    "lemminflect": "lemminflect",
    "nltk": "nltk",
    "pycocotools": "pycocotools",
}
# Modules whose third-party imports only resolve names (no numbers flow through them).
NAME_RESOLVERS = ("fingerprint.py",)


def _module_file(name: str, root: Path) -> Path | None:
    """The source file of an in-package module name, or None if it is not one."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = root.joinpath(*parts[1:])
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _package_inits(name: str, root: Path) -> list[Path]:
    """`__init__.py` of every package above `name`: importing it runs them."""
    parts = name.split(".")
    inits = []
    for i in range(1, len(parts)):
        init = root.joinpath(*parts[1:i]) / "__init__.py"
        if init.is_file():
            inits.append(init)
    return inits


def _imports(tree: ast.AST, name: str, is_package: bool) -> set[str]:
    """Absolute names of the modules a parsed module imports (relative imports resolved)."""
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - node.level + 1]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _stamp(path: Path) -> tuple[int, int]:
    """(size, mtime): the memo key of a file's parse, so an edited file is parsed again."""
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


@cache
def _facts(path: Path, name: str, stamp: tuple[int, int]) -> tuple[frozenset[str], str]:
    """What one parse of a file gives: the modules it imports and its syntax digest."""
    tree = _parse(path)
    imports = frozenset(_imports(tree, name, path.name == "__init__.py"))
    tree = _strip_docstrings(tree)
    if path.name == "cli.py":
        tree = _without_stage_table(tree)
    dumped = ast.dump(tree, annotate_fields=False, include_attributes=False)
    return imports, hashlib.sha256(dumped.encode()).hexdigest()


def _file_facts(path: Path, name: str, memo: DigestCache | None) -> tuple[frozenset[str], str]:
    stamp = _stamp(path)
    if memo is None:
        return _facts(path, name, stamp)

    def compute() -> list:
        imports, digest = _facts(path, name, stamp)
        return [sorted(imports), digest]

    imports, digest = memo.memo(f"ast {path} {name}", list(stamp), compute)
    return frozenset(imports), digest


def _name_of(path: Path, root: Path) -> str:
    """The module name of a file under the root: `qaclims/sub/__init__.py` -> `qaclims.sub`."""
    parts = [PACKAGE, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


_CLOSURES: dict[tuple[str, Path], tuple[dict[Path, tuple[int, int]], set[str]]] = {}


def _closure(name: str, root: Path, memo: DigestCache | None = None) -> tuple[list[Path], set[str]]:
    """In-package files of `name` and its imports (transitively), and every import name.

    Remembered in-process while none of the files changed size or mtime (an edit that adds
    an import changes the file that adds it).
    """
    known = _CLOSURES.get((name, root))
    if known is not None and all(
        p.is_file() and _stamp(p) == stamp for p, stamp in known[0].items()
    ):
        return sorted(known[0]), known[1]
    files, imported = _walk(name, root, memo)
    _CLOSURES[(name, root)] = ({p: _stamp(p) for p in files}, imported)
    return files, imported


def _walk(name: str, root: Path, memo: DigestCache | None) -> tuple[list[Path], set[str]]:
    seen: dict[str, Path] = {}
    visited: set[str] = set()
    imported: set[str] = set()
    todo = [name]
    while todo:
        current = todo.pop()
        if current in visited or not current.startswith(PACKAGE):
            continue
        visited.add(current)
        path = _module_file(current, root)
        if path is None:
            continue
        seen[current] = path
        for init in _package_inits(current, root):
            seen.setdefault(str(init), init)
        names = _file_facts(path, current, memo)[0]
        if path.name not in NAME_RESOLVERS:
            imported |= names
        todo.extend(names)
    if name not in seen:
        raise KeyError(f"{name} is not a module of the {PACKAGE} package under {root}")
    return sorted(set(seen.values())), imported


def module_closure(name: str, root: Path = PACKAGE_ROOT) -> list[Path]:
    """Files of `name` and of every in-package module it imports, transitively, sorted."""
    return _closure(name, root)[0]


def _strip_docstrings(tree: ast.Module) -> ast.Module:
    """The tree without module, class and function docstrings (they never run)."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                node.body = body[1:] or [ast.Pass()]
    return tree


def _without_stage_table(tree: ast.Module) -> ast.Module:
    """The CLI's tree without its `STAGES = {...}` table (see the module docstring)."""

    def is_table(node: ast.stmt) -> bool:
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, ast.AnnAssign)
            else []
        )
        return any(isinstance(t, ast.Name) and t.id == STAGE_TABLE for t in targets)

    tree.body = [node for node in tree.body if not is_table(node)]
    return tree


def source_digest(path: Path, root: Path = PACKAGE_ROOT) -> str:
    """SHA-256 of a module's syntax tree without docstrings: meaning, not bytes."""
    return _file_facts(path, _name_of(path, root), None)[1]


def code_digest(
    name: str, root: Path = PACKAGE_ROOT, *, entry: bool = True, memo: DigestCache | None = None
) -> str:
    """Hash (16 hex digits) of the closure of `name` plus (`entry`) the CLI, by syntax tree.

    `memo` remembers each file's parse by size and mtime between processes (the DAG).
    """
    files = set(_closure(name, root, memo)[0])
    if entry and _module_file(ENTRY, root) is not None:
        files |= set(_closure(ENTRY, root, memo)[0])
        files |= {root / f for f in ENTRY_FILES if (root / f).is_file()}
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(b"\0")
        digest.update(_file_facts(path, _name_of(path, root), memo)[1].encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


@cache
def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def library_versions(
    name: str, root: Path = PACKAGE_ROOT, *, memo: DigestCache | None = None
) -> dict[str, str]:
    """Installed versions of the numerics-shaping libraries the closure of `name` imports."""
    imported = {n.partition(".")[0] for n in _closure(name, root, memo)[1]}
    versions = {}
    for module, distribution in sorted(NUMERIC_LIBRARIES.items()):
        if module in imported and (version := _version(distribution)) is not None:
            versions[distribution] = version
    return versions
