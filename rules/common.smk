# Shared helpers: config validation, paths, shards, sources, each rule's settings and flags.
import copy
import os
import re
import sys
from pathlib import Path

# Jobs import the qaclims next to this Snakefile: the code they run is the code digested.
sys.path.insert(0, workflow.basedir)
shell.prefix(
    "export PYTHONPATH={}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; ".format(
        repr(workflow.basedir)
    )
)

from qaclims import fingerprint
from qaclims.config import check_config, merge, typed_overrides
from qaclims.digest import code_digest, library_versions
from qaclims.errors import InputError
from qaclims.provenance import Source, canonical, rule_flags, rule_settings


def _config_files():
    """Config files in the order they were applied: the default, then --configfile ones."""
    cli = [str(f) for f in workflow.overwrite_configfiles]
    return [str(Path(workflow.basedir) / "config.yaml")] + cli


# Model digests and parsed code survive between runs here (by path, size, mtime); jobs
# read it too. A config validated once is not validated again (its canonical JSON).
DIGESTS = fingerprint.DigestCache(Path(".snakemake/qaclims/digests.json").resolve())
os.environ[fingerprint.CACHE_ENV] = str(DIGESTS.path)

# --config 'crf={fg_threshold: 0.35}' arrives as strings below the top level: type them.
merge(config, typed_overrides(dict(workflow.config_settings.config)))
try:
    files = _config_files()
    raw = [Path(f).read_text() for f in files]
    stamp = [canonical({"config": config, "files": raw})]
    DIGESTS.memo("valid config", stamp, lambda: check_config(config, files) or True)
except (InputError, OSError, ValueError) as err:
    raise WorkflowError(f"invalid config: {err}")


DATASET = config["dataset"]
MEM = config["mem_mb"]  # each rule's scheduler memory (MB); resources, not settings
RESULTS = f"results/{DATASET['name']}"
LOGS = f"logs/{DATASET['name']}"
BENCH = f"benchmarks/rules/{DATASET['name']}"
SHARDS = list(range(DATASET["shards"]))
IS_DEMO = DATASET["kind"] == "demo"
IS_COCO = DATASET["kind"] == "coco14"


def built(path):
    """Whether a configured path is an artifact of this workflow (under results/<name>/)."""
    return os.path.normpath(str(path)).startswith(RESULTS + os.sep)


def source(key, value, identify, *, workflow_builds=False):
    """A Source for config `key`: built here (a DAG input), None, or identified by content."""
    if value is None:
        return Source(None, {"none": True})
    if workflow_builds or built(value):
        return Source(str(value), {"built": os.path.normpath(str(value))}, [str(value)])
    try:
        identity = identify(str(value))
    except InputError as err:
        raise WorkflowError(f"config key '{key}': {err}")
    DIGESTS.save()
    return Source(str(value), identity)


def backbone_source(key, depth, weights):
    return source(
        key, weights, lambda w: fingerprint.backbone_identity(depth, w, DIGESTS)
    )


def section(name, drop=()):
    """Config section `name` without its resource keys (threads, gpu) and `drop`."""
    return {k: v for k, v in config[name].items() if k not in ("threads", "gpu", *drop)}


def stage(module, values, *, sources=None, speed=None, threads_flag=None):
    """The params of a job that runs `module`. `settings` is compared, `flags` is not.

    `values` are the config values that shape the artifacts, by flag name; `sources` the
    models/datasets read; `speed` knobs and `threads_flag` (gets the job's threads) only
    reach the command line. See qaclims/provenance.py.
    """
    sources = sources or {}
    settings = rule_settings(
        code=code_digest(module, memo=DIGESTS),
        libraries=library_versions(module, memo=DIGESTS),
        values=values,
        sources=sources,
    )

    def flags(wildcards, threads):
        knobs = dict(speed or {})
        if threads_flag:
            knobs[threads_flag] = threads
        return rule_flags(values, sources, knobs)

    DIGESTS.save()
    return {"settings": settings, "flags": flags}


def by_wildcard(name, stages):
    """Params whose jobs differ by wildcard `name`: each value of it gets `stages[value]`.

    Each value's `stage(...)` is made once, here; the settings function takes only the
    wildcards, so Snakemake still compares it (it skips params derived from input, output,
    threads or resources), and every job carries exactly its own settings.
    """
    return {
        "settings": lambda wildcards: stages[wildcards[name]]["settings"],
        "flags": lambda wildcards, threads: stages[wildcards[name]]["flags"](
            wildcards, threads
        ),
    }


def one_of(values):
    """A wildcard constraint matching exactly `values` (the empty string included)."""
    return "|".join(map(re.escape, values))


def ritc_values(changes=None):
    """RITC's settings by flag name: its section with `changes` merged in (an ablation's),
    the CAMNet depth, the CLIP and prompt."""
    values = copy.deepcopy(section("ritc", ("workers",)))
    merge(values, changes or {})
    weights = values.pop("loss_weights")
    return {
        **values,
        "loss_weights": [weights[k] for k in ("frc", "brc", "reg")],
        "split": DATASET["train_split"],
        "depth": config["cam"]["depth"],
        "clip_architecture": config["models"]["clip"]["architecture"],
        "prompt": config["text"]["prompt"],
    }


def ritc_stage(variant):
    """The params of RITC training with `variant`'s changes."""
    return stage(
        "qaclims.ritc",
        ritc_values(RITC_VARIANTS[variant]),
        sources={
            "clip_pretrained": CLIP_WEIGHTS,
            "clip_config": CLIP_CONFIG,
            "ovseg": OVSEG,
            "baseline": BASELINE,
        },
        speed={
            "workers": config["ritc"]["workers"],
            "checkpoint_dir": f"{RESULTS}/checkpoints/ritc{variant}",
        },
    )


def built_source(path):
    """A network file this workflow builds: an input, identified by its path."""
    return source("cams.model", path, None, workflow_builds=True)


def cam_rows(tags):
    """(row name, CAM evaluation report) of each tag, for the summary tables."""
    return [(CAM_NETS[t][0], f"{RESULTS}/eval/cam{t}.json") for t in tags]


def cams_stage(network):
    """The params of CAM inference with `network` (a Source: a file built here is an input,
    a released baseline is identified by content; either way the flags carry --model).
    """
    return stage(
        "qaclims.cams",
        {
            "split": DATASET["train_split"],
            "shards": DATASET["shards"],
            "depth": config["cam"]["depth"],
            **section("cam_infer", ("batch_images",)),
        },
        sources={"model": network},
        speed={"batch_images": config["cam_infer"]["batch_images"]},
        threads_flag="workers",
    )


def demo_vlm_values():
    """Training settings of the demo VLMs, and how the pipeline asks, encodes and sees."""
    qape, ritc = config["qape"], config["ritc"]
    training = {
        k: v for k, v in config["demo_vlms"].items() if k not in ("trained", "threads")
    }
    return {
        **training,
        "image_size": config["demo"]["image_size"],
        "cooccurrence": config["demo"]["cooccurrence"],
        "prompt": config["text"]["prompt"],
        "fg_questions": qape["fg_questions"],
        "bg_questions": qape["bg_questions"],
        "enc_token": qape["enc_token"],
        "max_question_tokens": qape["max_question_tokens"],
        "num_beams": qape["num_beams"],
        "max_length": qape["max_length"],
        "min_length": qape["min_length"],
        "clip_input_norm": ritc["clip_input_norm"],
        "mask_prompt_depth": (
            ritc["mask_prompt_depth"] if ritc["clip_mode"] == "mask_adapted" else 0
        ),
    }


def torch_launch(gpus):
    """`python -m qaclims`, or torchrun with one process per GPU for a multi-GPU job."""
    if gpus > 1:
        return f"torchrun --standalone --nproc_per_node {gpus} -m qaclims"
    return "python -m qaclims"


def seg_eval_values():
    """The final model's network and test-time protocol, by flag name (eval_seg, export).

    CRF parameters are settings only while the CRF is on.
    """
    protocol = config["seg_eval"]
    crf = protocol["crf"]
    return {
        "depth": config["seg"]["depth"],
        "arch": config["seg"]["arch"],
        "scales": protocol["scales"],
        "flip": protocol["flip"],
        "fusion": protocol["fusion"],
        "precision": protocol["precision"],
        "crf": crf["enabled"],
        **(
            {f"crf_{k}": v for k, v in crf.items() if k != "enabled"}
            if crf["enabled"]
            else {}
        ),
    }


def trained_stages():
    """The training stages the default target runs, by the name of their history table."""
    return [
        *([] if config["cam"]["released"] else ["cam_baseline"]),
        "ritc",
        "irn",
        *(["seg"] if config["seg"]["enabled"] else []),
    ]


def final_targets():
    """The deliverables: every model, per-shard CAMs, IR labels, pseudo masks, every eval.

    Per-shard artifacts are listed so that a deleted shard is rebuilt (with what depends
    on it); VQA shards are not (their answers live on in the answer store anyway). Models
    the workflow builds for itself (the demo's VQA and CLIP) are deliverables too. The
    baseline's CAMs and their scores are the summary's first row; the RITC ablations are
    not deliverables (target `ablation`).
    """
    built_models = [*VQA_MODEL.inputs, *CLIP_WEIGHTS.inputs, *CLIP_CONFIG.inputs]
    per_shard = (
        "cams/shard-{}.npz",
        "cams_baseline/shard-{}.npz",
        "ir_labels/shard-{}",
        "pseudo_masks/shard-{}",
    )
    seg = ["models/seg.pt", "eval/seg.json"] if config["seg"]["enabled"] else []
    whole = [
        "text/features.parquet",
        "eval/corpus_report.md",
        "eval/corpus_report.json",
        *([] if config["cam"]["released"] else ["models/cam_baseline.pt"]),
        "models/ritc.pt",
        "models/irn.pt",
        *seg,
        "eval/cam.json",
        "eval/cam_baseline.json",
        "eval/cam_compare",
        "eval/pseudo_masks.json",
        "eval/summary.md",
        "eval/summary.json",
        *(f"eval/training_curves/{name}.png" for name in trained_stages()),
        *(
            f"eval/{what}{suffix}"
            for what in ["pseudo_masks", *(["seg"] if config["seg"]["enabled"] else [])]
            for suffix in ("_per_class.html", "_iou.png")
        ),
    ]
    return (
        built_models
        + [f"{RESULTS}/{p}" for p in whole]
        + [f"{RESULTS}/{pattern.format(s)}" for pattern in per_shard for s in SHARDS]
    )
