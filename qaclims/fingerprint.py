"""Content fingerprints of models and datasets: what a rule's settings say it was made from.

A model enters the settings of every rule that loads it as what it *is*, not where it lies:
a local file or folder by the SHA-256 of its bytes, a Hugging Face hub id by the snapshot
revision in the local cache, an open_clip tag or torchvision weight name by the cached file
it resolves to. Swapping weights changes the fingerprint; the same weights at another path
do not. Everything is resolved from local caches only, so a model that cannot be found
fails here, when the DAG is built, before any job runs.

Digests are remembered in a JSON file by (path, size, mtime), so a multi-GB checkpoint is
read once, not at every dry run. Name resolutions that need a heavy import (open_clip's tag
table, torchvision's weight URLs) are remembered by library version.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from importlib import metadata, util
from pathlib import Path
from typing import Any

from qaclims.errors import InputError

CACHE_ENV = "QACLIMS_DIGEST_CACHE"
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model")
VQA_MARKERS = ("config.json",)


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


class DigestCache:
    """SHA-256 of files by (path, size, mtime_ns), and resolved names, kept in a JSON file.

    `path=None` keeps nothing between processes. Entries are merged into the file on
    `save`, so concurrent processes only ever lose each other's new entries, never the file.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.files: dict[str, list] = {}
        self.resolved: dict[str, Any] = {}
        self.memos: dict[str, list] = {}
        self._dirty = False
        if path is not None:
            stored = _read_json(path)
            self.files = stored.get("files", {})
            self.resolved = stored.get("resolved", {})
            self.memos = stored.get("memos", {})

    @classmethod
    def from_env(cls) -> DigestCache:
        """The cache named by $QACLIMS_DIGEST_CACHE (the workflow sets it), else none."""
        value = os.environ.get(CACHE_ENV)
        return cls(Path(value)) if value else cls()

    def file(self, path: Path) -> str:
        """SHA-256 of a file's bytes, read again only when its size or mtime changed."""
        try:
            stat = path.stat()
        except OSError as err:
            raise InputError(f"{path}: cannot read ({err.strerror})") from err
        key = str(path.resolve())
        stamp = [stat.st_size, stat.st_mtime_ns]
        known = self.files.get(key)
        if known is not None and known[:2] == stamp:
            return known[2]
        digest = sha256_file(path)
        self.files[key] = [*stamp, digest]
        self._dirty = True
        return digest

    def folder(self, path: Path) -> str:
        """SHA-256 over the relative names and digests of a folder's files (hidden ones not)."""
        digest = hashlib.sha256()
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            relative = file.relative_to(path)
            if any(part.startswith(".") for part in relative.parts):
                continue
            digest.update(f"{relative.as_posix()}\0{self.file(file)}\0".encode())
        return digest.hexdigest()

    def resolve(self, key: str, compute: Callable[[], Any]) -> Any:
        """`compute()` once per key (keys name the library version they depend on)."""
        if key not in self.resolved:
            self.resolved[key] = compute()
            self._dirty = True
        return self.resolved[key]

    def memo(self, key: str, stamp: list, compute: Callable[[], Any]) -> Any:
        """`compute()` for `key`, remembered while `stamp` (e.g. size and mtime) holds."""
        known = self.memos.get(key)
        if known is not None and known[0] == stamp:
            return known[1]
        value = compute()
        self.memos[key] = [stamp, value]
        self._dirty = True
        return value

    def save(self) -> None:
        if self.path is None or not self._dirty:
            return
        stored = _read_json(self.path)
        merged = {
            name: {**stored.get(name, {}), **mine}
            for name, mine in (
                ("files", self.files),
                ("resolved", self.resolved),
                ("memos", self.memos),
            )
        }
        text = json.dumps(merged, sort_keys=True)
        # Several processes may save at once (SLURM jobs parse the Snakefile too): each
        # writes its own temporary file and renames it; a lost save only costs a re-read.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f"{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
            os.replace(tmp, self.path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        self._dirty = False


def _read_json(path: Path) -> dict:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            return data
    return {}


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def hf_hub_cache() -> Path:
    """Where huggingface_hub keeps downloads (its own precedence of variables)."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return Path(os.environ[name]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return _cache_home() / "huggingface" / "hub"


def torch_hub_dir() -> Path:
    """Where torch.hub keeps checkpoints (`torch.hub.get_dir()` without importing torch)."""
    if os.environ.get("TORCH_HOME"):
        return Path(os.environ["TORCH_HOME"]).expanduser() / "hub"
    return _cache_home() / "torch" / "hub"


def hub_revision(repo_id: str, files: tuple[str, ...], what: str) -> str:
    """The cached snapshot revision of a hub repo holding one of `files`, else InputError."""
    repo = hf_hub_cache() / f"models--{repo_id.replace('/', '--')}"
    ref = repo / "refs" / "main"
    try:
        revision = ref.read_text().strip()
    except OSError:
        raise InputError(
            f"{what} '{repo_id}' is not in the local Hugging Face cache ({repo}); fetch it "
            f"once with `hf download {repo_id}` where there is a network, or give a local path"
        ) from None
    snapshot = repo / "snapshots" / revision
    if not any((snapshot / f).is_file() for f in files):
        raise InputError(
            f"{what} '{repo_id}': the cached snapshot {snapshot} has none of {list(files)}"
        )
    return revision


def looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "~"))


def _hub_repo(repo_id: str) -> Path:
    """Where the local Hugging Face cache keeps `repo_id` (as `hub_revision` reads it)."""
    return hf_hub_cache() / f"models--{repo_id.replace('/', '--')}"


def missing_vqa(name: str) -> InputError:
    """The error for a `models.vqa` that is neither an existing folder nor a cached hub id.

    "a/b" reads as a hub id, so a mistyped relative folder must not be reported as a model
    to download: when the folder's parent exists, the name is a path that is missing.
    """
    path = Path(name).expanduser().absolute()
    if not looks_like_hub_id(name) or path.parent.is_dir():
        return InputError(
            f"{name}: VQA model folder (models.vqa) does not exist ({path}), "
            "nor is it a hub id in the local Hugging Face cache"
        )
    return InputError(
        f"VQA model (models.vqa) '{name}' is not in the local Hugging Face cache "
        f"({_hub_repo(name)}) and there is no folder {path}; fetch it once with "
        f"`hf download {name}` where there is a network, or give an existing folder"
    )


def vqa_identity(name: str, cache: DigestCache) -> dict[str, str]:
    """A VQA model: a local folder by its files' digest, a hub id by cached revision."""
    path = Path(name).expanduser()
    if path.is_dir():
        return {"folder": cache.folder(path)}
    if path.exists():
        raise InputError(f"{name}: VQA model (models.vqa) is a file, not a model folder")
    if not looks_like_hub_id(name) or not (_hub_repo(name) / "refs" / "main").is_file():
        raise missing_vqa(name)
    return {"hub": name, "revision": hub_revision(name, VQA_MARKERS, "VQA model (models.vqa)")}


def file_identity(name: str, what: str, cache: DigestCache) -> dict[str, str]:
    path = Path(name).expanduser()
    if not path.is_file():
        raise InputError(f"{name}: {what} not found")
    return {"file": cache.file(path)}


def looks_like_file(name: str) -> bool:
    return os.sep in name or name.endswith((".safetensors", ".pt", ".pth", ".bin", ".json"))


def _open_clip_config_folder() -> Path | None:
    spec = util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "model_configs"


def _open_clip_config_names() -> list[str]:
    folder = _open_clip_config_folder()
    return sorted(p.stem for p in folder.glob("*.json")) if folder else []


def _hf_tokenizer_name(architecture: str, config_json: str | None) -> str | None:
    """`text_cfg.hf_tokenizer_name` of the architecture (SigLIP's and the like), if any.

    An unreadable or not yet built config JSON names none here: loading it reports it.
    """
    if config_json is not None:
        path = Path(config_json)
    else:
        folder = _open_clip_config_folder()
        if folder is None:
            return None
        path = folder / f"{architecture}.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    data = data.get("model_cfg", data) if isinstance(data, dict) else {}
    text_cfg = data.get("text_cfg") if isinstance(data, dict) else None
    return (text_cfg or {}).get("hf_tokenizer_name") or None


def tokenizer_identity(name: str, cache: DigestCache) -> dict[str, str]:
    """An HF tokenizer open_clip loads by name: a local folder by digest, a hub id by revision."""
    path = Path(name).expanduser()
    if path.is_dir():
        return {"tokenizer_folder": cache.folder(path)}
    what = "HF tokenizer (text_cfg.hf_tokenizer_name of models.clip)"
    return {"tokenizer": name, "tokenizer_revision": hub_revision(name, HF_TOKENIZER_FILES, what)}


def _open_clip_tag(architecture: str, tag: str) -> dict[str, str]:
    import open_clip

    cfg = open_clip.get_pretrained_cfg(architecture, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(architecture)
        return {"error": f"'{tag}' is not a pretrained tag of {architecture} ({tags})"}
    return {"hf_hub": cfg.get("hf_hub", ""), "url": cfg.get("url", ""), "file": cfg.get("file", "")}


def clip_identity(
    architecture: str, pretrained: str, config_json: str | None, cache: DigestCache
) -> dict[str, Any]:
    """open_clip weights: a file by digest, a tag by the cached file it resolves to.

    An HF tokenizer (SigLIP's) from another repo than the weights is identified too: it
    shapes the text features as much as the weights do.
    """
    if config_json is None and architecture not in _open_clip_config_names():
        raise InputError(
            f"open_clip architecture '{architecture}' (models.clip.architecture) is unknown; "
            "give its config JSON (models.clip_config) for a custom one"
        )
    identity = _clip_weights_identity(architecture, pretrained, cache)
    tokenizer = _hf_tokenizer_name(architecture, config_json)
    if tokenizer and tokenizer.rstrip("/") != identity.get("hub"):
        identity |= tokenizer_identity(tokenizer, cache)
    return identity


def _clip_weights_identity(architecture: str, pretrained: str, cache: DigestCache) -> dict:
    """The weights alone: a file by digest, a tag by the cached file or snapshot."""
    if looks_like_file(pretrained):
        return file_identity(pretrained, "CLIP weights file (models.clip.pretrained)", cache)
    key = f"open_clip {_version('open_clip_torch')} {architecture} {pretrained}"
    cfg = cache.resolve(key, lambda: _open_clip_tag(architecture, pretrained))
    if "error" in cfg:
        raise InputError(f"models.clip.pretrained: {cfg['error']}")
    if cfg["file"]:
        return {"tag": pretrained, **file_identity(cfg["file"], "CLIP weights file", cache)}
    if cfg["hf_hub"] and util.find_spec("huggingface_hub") is not None:
        repo_id, filename = os.path.split(cfg["hf_hub"])
        files = (filename,) if filename else OPEN_CLIP_WEIGHTS
        what = f"CLIP weights for tag '{pretrained}' (models.clip.pretrained)"
        return {"tag": pretrained, "hub": repo_id, "revision": hub_revision(repo_id, files, what)}
    cached = _cache_home() / "clip" / Path(cfg["url"]).name
    if not cached.is_file():
        raise InputError(
            f"CLIP weights for tag '{pretrained}' are not in open_clip's cache ({cached})"
        )
    return {"tag": pretrained, "file": cached.name}


def _torchvision_url(depth: int, name: str) -> dict[str, str]:
    from torchvision.models import resnet

    enums = {18: "ResNet18", 34: "ResNet34", 50: "ResNet50", 101: "ResNet101"}
    try:
        weights = getattr(resnet, f"{enums[depth]}_Weights")[name]
    except KeyError:
        return {"error": f"backbone weights '{name}' unknown for ResNet-{depth}"}
    return {"url": weights.url}


def backbone_identity(depth: int, weights: str | None, cache: DigestCache) -> dict[str, str]:
    """ResNet init weights: none, a file by digest, a torchvision name by its cached file."""
    if weights is None:
        return {"init": "random"}
    if looks_like_file(weights):
        return file_identity(weights, "backbone weights file", cache)
    key = f"torchvision {_version('torchvision')} resnet{depth} {weights}"
    resolved = cache.resolve(key, lambda: _torchvision_url(depth, weights))
    if "error" in resolved:
        raise InputError(resolved["error"])
    cached = torch_hub_dir() / "checkpoints" / Path(resolved["url"]).name
    if not cached.is_file():
        raise InputError(
            f"backbone weights '{weights}' are not in the torch hub cache ({cached}); "
            "download them once on a connected machine or give a local file path"
        )
    return {"torchvision": weights, "file": cached.name}


# Folders a reader lists (their mtime changes when an entry is added, removed, renamed) and
# folders whose files are lists or annotations (each file by size and mtime).
DATASET_LAYOUT = {
    "voc12": (
        ("JPEGImages", "Annotations", "SegmentationClass", "SegmentationClassAug"),
        ("ImageSets/Segmentation",),
    ),
    "coco14": (("train2014", "val2014"), ("annotations",)),
}


def _stamps(base: Path, label: str, listed: tuple[str, ...], files: tuple[str, ...]) -> dict:
    entries: dict[str, list[int]] = {}
    for name in (*listed, *files):
        folder = base / name
        if folder.is_dir():
            entries[f"{label}/{name}"] = [folder.stat().st_mtime_ns]
    for name in files:
        folder = base / name
        for item in sorted(folder.iterdir()) if folder.is_dir() else ():
            if item.is_file():
                stat = item.stat()
                entries[f"{label}/{name}/{item.name}"] = [stat.st_size, stat.st_mtime_ns]
    return entries


def dataset_identity(kind: str, root: str, sbd_root: str | None) -> dict[str, Any]:
    """What a dataset root holds, cheaply: its folders' mtimes, its list files' sizes and mtimes.

    Adding, removing or renaming an image changes its folder's mtime; an image rewritten
    in place does not (rerun the manifest with `--forcerun manifest` after such an edit).
    """
    base = Path(root).expanduser()
    if not base.is_dir():
        raise InputError(f"{root}: dataset root (dataset.root) not found")
    listed, files = DATASET_LAYOUT.get(kind, ((), ()))
    entries = _stamps(base, "root", listed, files)
    if sbd_root is not None:
        sbd = Path(sbd_root).expanduser()
        if not sbd.is_dir():
            raise InputError(f"{sbd_root}: SBD folder (dataset.sbd_root) not found")
        entries |= _stamps(sbd.parent, "sbd", (), (sbd.name,))
    return {"root": str(base), "sbd_root": sbd_root, "stamps": entries}
