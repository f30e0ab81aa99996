"""`python -m qaclims <stage> ...`: one subcommand per stage module.

Stage modules are imported only when their subcommand runs, so `--help` is fast and
needs no GPU, and the code digest of one stage never depends on the others.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys

STAGES: dict[str, str] = {
    "demo_data": "qaclims.datasets.demo",
    "manifest": "qaclims.manifest",
    "demo_models": "qaclims.demo_models",
    "qape": "qaclims.qape",
    "corpus": "qaclims.corpus",
    "corpus_report": "qaclims.corpus_report",
    "text_features": "qaclims.text_features",
    "cams": "qaclims.cams",
    "eval_cam": "qaclims.eval_cam",
    "cam_compare": "qaclims.cam_compare",
    "crf": "qaclims.crf",
    "train_cam": "qaclims.train_cam",
    "ritc": "qaclims.ritc",
    "train_irn": "qaclims.train_irn",
    "pseudo_masks": "qaclims.pseudo_masks",
    "eval_masks": "qaclims.eval_masks",
    "train_seg": "qaclims.train_seg",
    "eval_seg": "qaclims.eval_seg",
    "export_voc": "qaclims.export_voc",
    "class_iou": "qaclims.class_iou",
    "summary": "qaclims.summary",
    "training_curves": "qaclims.training_curves",
    "convert": "qaclims.convert",
}

log = logging.getLogger("qaclims")


def build_parser(stage: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qaclims", description=__doc__)
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, module_name in STAGES.items():
        if stage is not None and name != stage:
            sub.add_parser(name)
            continue
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    stage = argv[0] if argv and argv[0] in STAGES else None
    args = build_parser(stage).parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from qaclims.errors import InputError

    # SIGTERM (Snakemake cancelling a job, SLURM's scancel) unwinds like an exception, so
    # the atomic writers remove their temporary files instead of leaving them behind.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        args._module.main(args)
    except InputError as err:
        log.error("%s", err)
        print(f"qaclims {args.stage}: error: {err}", file=sys.stderr)
        sys.exit(2)
