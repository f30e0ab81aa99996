"""Model and dataset fingerprints: by content, from local caches only, cached by mtime."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from qaclims import fingerprint
from qaclims.errors import InputError
from qaclims.fingerprint import DigestCache


def _fake_hub_repo(cache: Path, repo_id: str, files: dict[str, bytes], revision: str) -> None:
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for name, data in files.items():
        (snapshot / name).write_bytes(data)


def test_same_bytes_same_digest_wherever_they_lie(tmp_path):
    cache = DigestCache(tmp_path / "digests.json")
    a = tmp_path / "a.pt"
    a.write_bytes(b"weights")
    b = tmp_path / "elsewhere" / "b.pt"
    b.parent.mkdir()
    shutil.copy(a, b)
    assert cache.file(a) == cache.file(b)
    b.write_bytes(b"other weights")
    assert cache.file(a) != cache.file(b)


def test_digests_are_remembered_by_size_and_mtime(tmp_path):
    path = tmp_path / "w.pt"
    path.write_bytes(b"x" * 10)
    first = DigestCache(tmp_path / "digests.json")
    digest = first.file(path)
    first.save()
    stat = path.stat()
    path.write_bytes(b"y" * 10)  # same size; put the old mtime back: the cache answers
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert DigestCache(tmp_path / "digests.json").file(path) == digest
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert DigestCache(tmp_path / "digests.json").file(path) != digest


def test_folder_digest_ignores_hidden_files_and_sees_renames(tmp_path):
    folder = tmp_path / "vqa"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"w")
    cache = DigestCache()
    before = cache.folder(folder)
    (folder / ".cache").mkdir()
    (folder / ".cache" / "lock").write_text("x")
    assert cache.folder(folder) == before
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    assert cache.folder(folder) != before


def test_vqa_hub_id_is_its_cached_revision(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    _fake_hub_repo(tmp_path / "hub", "org/vqa", {"config.json": b"{}"}, "abc123")
    assert fingerprint.vqa_identity("org/vqa", DigestCache()) == {
        "hub": "org/vqa",
        "revision": "abc123",
    }
    with pytest.raises(InputError, match="'org/missing' is not in the local Hugging Face cache"):
        fingerprint.vqa_identity("org/missing", DigestCache())
    with pytest.raises(InputError, match="VQA model folder"):
        fingerprint.vqa_identity(str(tmp_path / "no" / "folder"), DigestCache())


def test_clip_tag_resolves_to_its_cached_hub_snapshot(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    cache = DigestCache(tmp_path / "digests.json")
    with pytest.raises(InputError, match="not in the local Hugging Face cache"):
        fingerprint.clip_identity("ViT-B-32", "openai", None, cache)
    files = {"open_clip_model.safetensors": b"w"}
    _fake_hub_repo(tmp_path / "hub", "timm/vit_base_patch32_clip_224.openai", files, "r1")
    identity = fingerprint.clip_identity("ViT-B-32", "openai", None, cache)
    assert identity == {
        "tag": "openai",
        "hub": "timm/vit_base_patch32_clip_224.openai",
        "revision": "r1",
    }
    with pytest.raises(InputError, match="not a pretrained tag"):
        fingerprint.clip_identity("ViT-B-32", "no-such-tag", None, cache)
    with pytest.raises(InputError, match=r"architecture 'ViT-Q-99' .* is unknown"):
        fingerprint.clip_identity("ViT-Q-99", "openai", None, cache)
    cache.save()
    assert any("ViT-B-32 openai" in k for k in json.loads(cache.path.read_text())["resolved"])


def test_torchvision_weights_are_their_cached_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(InputError, match="not in the torch hub cache"):
        fingerprint.backbone_identity(50, "IMAGENET1K_V1", DigestCache())
    (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "torch" / "hub" / "checkpoints" / "resnet50-0676ba61.pth").write_bytes(b"w")
    assert fingerprint.backbone_identity(50, "IMAGENET1K_V1", DigestCache()) == {
        "torchvision": "IMAGENET1K_V1",
        "file": "resnet50-0676ba61.pth",
    }
    with pytest.raises(InputError, match="unknown for ResNet-50"):
        fingerprint.backbone_identity(50, "IMAGENET9K", DigestCache())
    assert fingerprint.backbone_identity(50, None, DigestCache()) == {"init": "random"}


def test_dataset_identity_changes_when_an_image_is_added(tmp_path):
    root = tmp_path / "VOC2012"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    (root / "JPEGImages" / "a.jpg").write_bytes(b"a")
    (root / "ImageSets/Segmentation/train.txt").write_text("a\n")
    before = fingerprint.dataset_identity("voc12", str(root), None)
    assert fingerprint.dataset_identity("voc12", str(root), None) == before
    (root / "JPEGImages" / "b.jpg").write_bytes(b"b")
    os.utime(root / "JPEGImages", ns=(1, 10**18))  # coarse filesystems: make the change visible
    assert fingerprint.dataset_identity("voc12", str(root), None) != before
    with pytest.raises(InputError, match="dataset root"):
        fingerprint.dataset_identity("voc12", str(tmp_path / "none"), None)


def test_missing_relative_vqa_folder_is_a_missing_folder_not_a_download(tmp_path, monkeypatch):
    """A name like local_models/vqa reads as a hub id; with local_models/ present it is a path."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "local_models").mkdir()
    with pytest.raises(
        InputError, match=r"local_models/vqa: VQA model folder .* does not exist"
    ) as err:
        fingerprint.vqa_identity("local_models/vqa", DigestCache())
    assert "hf download" not in str(err.value)
    with pytest.raises(InputError, match=r"'elsewhere/vqa' is not in .* and there is no folder"):
        fingerprint.vqa_identity("elsewhere/vqa", DigestCache())
    _fake_hub_repo(tmp_path / "hub", "local_models/vqa", {"config.json": b"{}"}, "abc123")
    assert fingerprint.vqa_identity("local_models/vqa", DigestCache())["hub"] == "local_models/vqa"


def test_clip_hf_tokenizer_is_part_of_the_identity(tmp_path, monkeypatch):
    """SigLIP-style configs name an HF tokenizer: its snapshot (or folder) is identified too."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    cache = DigestCache(tmp_path / "digests.json")
    weights = tmp_path / "sig-lip-x.safetensors"
    weights.write_bytes(b"w")
    config = tmp_path / "sig-lip-x.json"
    config.write_text(json.dumps({"text_cfg": {"hf_tokenizer_name": "org/tok"}}))
    with pytest.raises(InputError, match=r"HF tokenizer .* 'org/tok' is not in the local"):
        fingerprint.clip_identity("sig-lip-x", str(weights), str(config), cache)
    _fake_hub_repo(tmp_path / "hub", "org/tok", {"tokenizer.json": b"{}"}, "t1")
    identity = fingerprint.clip_identity("sig-lip-x", str(weights), str(config), cache)
    assert identity == {**identity, "tokenizer": "org/tok", "tokenizer_revision": "t1"}
    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "tokenizer.json").write_text("{}")
    config.write_text(json.dumps({"model_cfg": {"text_cfg": {"hf_tokenizer_name": str(folder)}}}))
    first = fingerprint.clip_identity("sig-lip-x", str(weights), str(config), cache)
    (folder / "tokenizer.json").write_text('{"other": 1}')
    second = fingerprint.clip_identity("sig-lip-x", str(weights), str(config), cache)
    assert "tokenizer_folder" in first and first != second
    # A built-in SigLIP's tokenizer lives in its weights' repo: the revision covers both.
    _fake_hub_repo(
        tmp_path / "hub", "timm/ViT-B-16-SigLIP", {"open_clip_model.safetensors": b"w"}, "r9"
    )
    identity = fingerprint.clip_identity("ViT-B-16-SigLIP", "webli", None, cache)
    assert identity == {"tag": "webli", "hub": "timm/ViT-B-16-SigLIP", "revision": "r9"}
