# Shared helpers: config validation, paths, shards, code digests.
import sys
from pathlib import Path

# Jobs import the qaclims next to this Snakefile: the code they run is the code digested.
sys.path.insert(0, workflow.basedir)
shell.prefix(
    "export PYTHONPATH={}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; ".format(
        repr(workflow.basedir)
    )
)

from qaclims.config import check_config
from qaclims.digest import code_digest
from qaclims.errors import InputError


def _config_files():
    """Config files in the order they were applied: the default, then --configfile ones."""
    cli = [str(f) for f in workflow.overwrite_configfiles]
    return [str(Path(workflow.basedir) / "config.yaml")] + cli


try:
    check_config(config, _config_files())
except InputError as err:
    raise WorkflowError(f"invalid config: {err}")


DATASET = config["dataset"]
RESULTS = f"results/{DATASET['name']}"
LOGS = f"logs/{DATASET['name']}"
BENCH = f"benchmarks/rules/{DATASET['name']}"
SHARDS = list(range(DATASET["shards"]))
IS_DEMO = DATASET["kind"] == "demo"
IS_COCO = DATASET["kind"] == "coco14"


def weights_input(weights):
    """{"weights": path} when a model's init weights are a file (a DAG input), else {}."""
    return {"weights": weights} if str(weights).endswith((".pt", ".pth")) else {}


def optional_flag(flag, value):
    """`flag value`, or nothing when the config value is null (the stage's default: None)."""
    return "" if value is None else f"{flag} {value}"


def torch_launch(gpus):
    """`python -m qaclims`, or torchrun with one process per GPU for a multi-GPU job."""
    if gpus > 1:
        return f"torchrun --standalone --nproc_per_node {gpus} -m qaclims"
    return "python -m qaclims"


def final_targets():
    """The deliverables: models, per-shard CAMs, IR labels and pseudo masks, every eval.

    Per-shard artifacts are listed so that a deleted shard is rebuilt (with what depends
    on it); VQA shards are not, so deleting them never triggers hours of VQA.
    """
    per_shard = ("cams/shard-{}.npz", "ir_labels/shard-{}", "pseudo_masks/shard-{}")
    return [
        f"{RESULTS}/text/features.parquet",
        f"{RESULTS}/models/ritc.pt",
        *[f"{RESULTS}/{pattern.format(s)}" for pattern in per_shard for s in SHARDS],
        f"{RESULTS}/eval/cam.json",
        f"{RESULTS}/eval/pseudo_masks.json",
        f"{RESULTS}/eval/summary.md",
    ]
