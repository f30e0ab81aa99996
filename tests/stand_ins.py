"""Stand-ins for what a real machine has: cached paper checkpoints and dataset folders.

Empty files where the paper's models would lie in the local Hugging Face and torch hub
caches, an OV-Seg file and dataset roots with the readers' folders, so the VOC and COCO
configs can be planned (models fingerprinted, nothing loaded) on any machine. Used by the
workflow tests and by benchmarks/bench_dag.py.
"""

from __future__ import annotations

from pathlib import Path

HUB_REPOS = {
    "Salesforce/blip-vqa-capfilt-large": "config.json",
    "timm/vit_large_patch14_clip_224.openai": "open_clip_model.safetensors",
}
TORCH_FILES = ("resnet50-0676ba61.pth", "resnet101-63fe2227.pth")
ROOT = Path(__file__).resolve().parent.parent


def model_caches(work: Path) -> dict[str, str]:
    """Hub snapshots and torch hub files under `work`; the environment that points at them."""
    hub = work / "hf-hub"
    for repo_id, filename in HUB_REPOS.items():
        snapshot = hub / f"models--{repo_id.replace('/', '--')}" / "snapshots" / "0123abcd"
        snapshot.mkdir(parents=True, exist_ok=True)
        (snapshot / filename).write_text("{}")
        (snapshot.parents[1] / "refs").mkdir(exist_ok=True)
        (snapshot.parents[1] / "refs" / "main").write_text("0123abcd")
    checkpoints = work / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    for name in TORCH_FILES:
        (checkpoints / name).write_bytes(b"stand-in")
    return {"HF_HUB_CACHE": str(hub), "TORCH_HOME": str(work / "torch")}


def paper_config(work: Path, kind: str) -> Path:
    """configs/<kind>.yaml with its dataset and OV-Seg paths under `work` (all of COCO)."""
    ovseg = work / "ovseg_vitL14_mpt.safetensors"
    ovseg.write_bytes(b"stand-in")
    text = (ROOT / "configs" / f"{kind}.yaml").read_text()
    if kind == "voc12":
        root = work / "VOC2012"
        for sub in ("JPEGImages", "Annotations", "SegmentationClass", "ImageSets/Segmentation"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (work / "sbd").mkdir(exist_ok=True)
        text = text.replace("root: data/VOCdevkit/VOC2012", f"root: {root}")
        text = text.replace("sbd_root: data/benchmark_RELEASE/dataset", f"sbd_root: {work / 'sbd'}")
    else:
        root = work / "coco2014"
        for sub in ("train2014", "val2014", "annotations"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        text = text.replace("root: data/coco2014", f"root: {root}")
    text = text.replace("data/models/ovseg_vitL14_mpt.safetensors", str(ovseg))
    path = work / f"{kind}.yaml"
    path.write_text(text)
    return path


def no_slurm_probe(work: Path) -> str:
    """A folder holding an `scontrol` that fails at once; put it first on PATH.

    snakemake-executor-plugin-slurm 2.8 runs `scontrol show config` when it is imported,
    in every snakemake process. Where SLURM's client tools are installed but no controller
    runs (a machine after tests/test_slurm.py stopped its cluster), that call waits ~9 s.
    """
    folder = work / "no-slurm-probe"
    folder.mkdir(parents=True, exist_ok=True)
    stub = folder / "scontrol"
    stub.write_text("#!/bin/sh\nexit 1\n")
    stub.chmod(0o755)
    return str(folder)
