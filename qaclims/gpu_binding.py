"""Bind a job to GPUs no other running job holds, then run its command.

`python -m qaclims.gpu_binding N -- CMD ...` takes N of the visible cards, sets
CUDA_VISIBLE_DEVICES for CMD (before anything initialises CUDA) and holds an exclusive
lock file per card until CMD exits. With `snakemake --resources gpu=2` two GPU jobs run at
once, and the locks make them pick different cards. Locks are `flock`s: a crashed job
releases its cards with its process. Under SLURM the scheduler has already chosen the
cards (CUDA_VISIBLE_DEVICES is set in the job), so that choice is kept as it is.
N = 0 hides every card (the job runs on the CPU). A job that needs N ≥ 1 cards and sees none
fails at once instead of running for days on the CPU; the job learns how many it was given
(QACLIMS_JOB_GPUS), so a stage whose CUDA is unusable fails too (qaclims/devices.py). With
QACLIMS_GPU_OPTIONAL=1 both run on the CPU instead (to try a cluster setup without cards).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

JOB_GPUS_ENV = "QACLIMS_JOB_GPUS"
GPU_OPTIONAL_ENV = "QACLIMS_GPU_OPTIONAL"


def gpu_optional(env: dict[str, str] | os._Environ) -> bool:
    return env.get(GPU_OPTIONAL_ENV) == "1"


def lock_dir() -> Path:
    default = Path("/tmp") / f"qaclims-gpu-locks-{os.getuid()}"
    return Path(os.environ.get("QACLIMS_GPU_LOCK_DIR", default))


def visible_devices(env: dict[str, str]) -> list[str]:
    """Cards this process may use: CUDA_VISIBLE_DEVICES if set, else what nvidia-smi lists."""
    if "CUDA_VISIBLE_DEVICES" in env:
        return [d for d in env["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    out = subprocess.run([smi, "-L"], capture_output=True, text=True, check=False).stdout
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def _try_lock(path: Path) -> IO | None:
    handle = open(path, "a")  # noqa: SIM115 - held open for the job's lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


@contextlib.contextmanager
def acquire(
    n: int, devices: list[str], directory: Path, timeout: float = 86400, poll: float = 2.0
) -> Iterator[list[str]]:
    """Hold locks on `n` of `devices` (waiting for free ones) and yield their ids."""
    if n > len(devices):
        raise RuntimeError(f"{n} GPUs requested but only {len(devices)} visible: {devices}")
    directory.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    held: dict[str, IO] = {}
    try:
        while True:
            for device in devices:
                if len(held) == n:
                    break
                if device not in held:
                    handle = _try_lock(directory / f"gpu-{device}.lock")
                    if handle is not None:
                        held[device] = handle
            if len(held) == n:
                yield sorted(held, key=devices.index)
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {n} free GPUs among {devices} after {timeout:.0f} s")
            time.sleep(poll)
    finally:
        for handle in held.values():
            handle.close()


def bound_env(n: int, env: dict[str, str], devices: list[str]) -> dict[str, str]:
    """The environment for a job given `devices` (or none at all when n == 0)."""
    return {**env, "CUDA_VISIBLE_DEVICES": ",".join(devices) if n else "", JOB_GPUS_ENV: str(n)}


def run(n: int, command: list[str]) -> int:
    """Run `command` bound to `n` free cards; return its exit code."""
    env = dict(os.environ)
    if n == 0:
        return subprocess.call(command, env=bound_env(0, env, []))
    if "SLURM_JOB_ID" in env and "CUDA_VISIBLE_DEVICES" in env:
        return subprocess.call(command, env={**env, JOB_GPUS_ENV: str(n)})
    devices = visible_devices(env)
    if not devices:
        if gpu_optional(env):
            print(f"gpu_binding: no GPU visible, {GPU_OPTIONAL_ENV}=1: the CPU", file=sys.stderr)
            return subprocess.call(command, env=env)
        print(
            f"gpu_binding: error: this job needs {n} GPU(s) (its stage's `gpu` config key) but "
            "sees none (no CUDA_VISIBLE_DEVICES, no nvidia-smi); set that key to 0 to run it "
            "on the CPU",
            file=sys.stderr,
        )
        return 2
    with acquire(n, devices, lock_dir()) as chosen:
        print(f"gpu_binding: CUDA_VISIBLE_DEVICES={','.join(chosen)}", file=sys.stderr)
        return subprocess.call(command, env=bound_env(n, env, chosen))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m qaclims.gpu_binding", description=__doc__)
    parser.add_argument("gpus", type=int, help="cards the job needs (0 = CPU only)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    sys.exit(run(args.gpus, command))


if __name__ == "__main__":
    main()
