"""Session setup: no SLURM probe slows the snakemake processes of the tests but the SLURM one."""

from __future__ import annotations

import os

import pytest

from tests.stand_ins import no_slurm_probe

REAL_PATH = os.environ["PATH"]


@pytest.fixture(scope="session", autouse=True)
def _fast_snakemake_start(tmp_path_factory: pytest.TempPathFactory):
    """Every test's snakemake sees a failing `scontrol` first (tests.stand_ins.no_slurm_probe)."""
    os.environ["PATH"] = f"{no_slurm_probe(tmp_path_factory.mktemp('bin'))}{os.pathsep}{REAL_PATH}"
    yield
    os.environ["PATH"] = REAL_PATH


@pytest.fixture(scope="session")
def real_path() -> str:
    """PATH as the session found it, real `scontrol` included (the SLURM test)."""
    return REAL_PATH
