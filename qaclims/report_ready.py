"""`make report`'s first step: are the results of this config there to report on?

`snakemake --report` builds no artifact: on a config whose workflow has not run it fails deep
in the DAG (or on a model file this machine lacks). This check reads the config files as the
workflow merges them (config.yaml, then `--configfile`), finds `results/<dataset.name>/` and
its final summary, and when either is missing prints one line naming it and exits 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from qaclims.config import merge

DEFAULT_CONFIG = "config.yaml"
# Written by the last rule of the default target, after every evaluation it tabulates.
FINAL = "eval/summary.md"


def missing_results(configfile: Path, workdir: Path) -> str | None:
    """What is missing for a report of `configfile` under `workdir`, or None when ready."""
    config: dict = {}
    for path in dict.fromkeys([workdir / DEFAULT_CONFIG, Path(configfile)]):
        if not path.is_file():
            return f"config file {path} not found"
        try:
            merge(config, yaml.safe_load(path.read_text()) or {})
        except (yaml.YAMLError, AttributeError, TypeError) as err:
            return f"config file {path} is not a YAML mapping ({err})"
    name = (config.get("dataset") or {}).get("name")
    if not name:
        return f"no dataset.name in {configfile}"
    results = Path("results") / str(name)
    run = f"run `snakemake --configfile {configfile}` first"
    if not (workdir / results).is_dir():
        return f"no results folder {results}/ for {configfile}; {run}"
    if not (workdir / results / FINAL).is_file():
        return f"{results / FINAL} missing: the workflow for {configfile} has not finished; {run}"
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m qaclims.report_ready", description=__doc__)
    p.add_argument("--configfile", type=Path, default=Path(DEFAULT_CONFIG))
    p.add_argument("--workdir", type=Path, default=Path("."), help="the workflow's folder")
    args = p.parse_args(argv)
    problem = missing_results(args.configfile, args.workdir)
    if problem is None:
        return 0
    print(f"make report: {problem}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
