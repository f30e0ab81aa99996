"""Code digests: a hash of the source a stage runs, for Snakemake params.

Snakemake's code trigger sees a rule's own code, not the modules it imports, so each rule
carries `code_digest("<module>")` as a param. The digest covers the module, every qaclims
module it imports (transitively) and the package `__init__` files on the way, by content:
an edit reruns exactly the rules that run the edited code; a touched mtime reruns nothing.
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

PACKAGE = "qaclims"
PACKAGE_ROOT = Path(__file__).resolve().parent


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


def _imports(path: Path, name: str, is_package: bool) -> set[str]:
    """Absolute names of the modules `path` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
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


def module_closure(name: str, root: Path = PACKAGE_ROOT) -> list[Path]:
    """Files of `name` and of every in-package module it imports, transitively, sorted."""
    seen: dict[str, Path] = {}
    todo = [name]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        path = _module_file(current, root)
        if path is None:
            continue
        seen[current] = path
        for init in _package_inits(current, root):
            seen.setdefault(str(init), init)
        todo.extend(_imports(path, current, path.name == "__init__.py"))
    if name not in seen:
        raise KeyError(f"{name} is not a module of the {PACKAGE} package under {root}")
    return sorted(set(seen.values()))


def code_digest(name: str, root: Path = PACKAGE_ROOT) -> str:
    """SHA-256 (first 16 hex digits) over the relative paths and contents of the closure."""
    digest = hashlib.sha256()
    for path in module_closure(name, root):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()[:16]
