"""Command start-up benchmark (not a test): the quick commands against the same work through the Python API.

    python benchmarks/bench_startup.py [--reps 9]

Each command runs as a fresh process (what a user waits for). The runs are interleaved — one of each per
round — so that load from other processes on a shared machine hits every command alike; the figures are
medians over the rounds, and each CLI command is also given as a ratio to its API equivalent (goal: every
quick command under 0.35 s and within 1.5x of `python -c "import pyns; pyns.load('vgg11').count()"`).
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time

PY = sys.executable
PYNS = shutil.which("pyns") or ""
API_COUNT = [PY, "-c", "import pyns; pyns.load('vgg11').count()"]
API_SCALE = [PY, "-c", "import pyns; pyns.load('vgg11').scale(params='0.58M')"]
CASES = [  # (label, command, what it is compared with)
    ("python -c 'import pyns; pyns.load(\"vgg11\").count()'", API_COUNT, None),
    ("python -c '... .scale(params=\"0.58M\")'", API_SCALE, None),
    ("python -c pass (interpreter alone)", [PY, "-c", "pass"], None),
    ("pyns count vgg11", [PYNS, "count", "vgg11"], API_COUNT),
    ("pyns scale vgg11 --params 0.58M", [PYNS, "scale", "vgg11", "--params", "0.58M"], API_SCALE),
    ("pyns --help", [PYNS, "--help"], API_COUNT),
    ("pyns tiny --help", [PYNS, "tiny", "--help"], API_COUNT),
]


def wall(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child): CPU time is what load from other processes barely moves."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return seconds, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=9, help="interleaved rounds (median taken)")
    args = parser.parse_args()
    if not PYNS:
        sys.exit("the `pyns` command is not on PATH; install pyns first")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    times: dict[str, list[float]] = {label: [] for label, _, _ in CASES}
    cpu: dict[str, list[float]] = {label: [] for label, _, _ in CASES}
    for label, cmd, _ in CASES:  # one warm-up each: the first run pays for the OS file cache
        wall(cmd)
    for _ in range(args.reps):
        for label, cmd, _ in CASES:
            seconds, cpu_seconds = wall(cmd)
            times[label].append(seconds)
            cpu[label].append(cpu_seconds)
    medians = {label: statistics.median(v) for label, v in times.items()}
    cpu_medians = {label: statistics.median(v) for label, v in cpu.items()}
    base = {tuple(cmd): label for label, cmd, _ in CASES}
    print(f"medians over {args.reps} interleaved rounds ({PY}; load average {os.getloadavg()[0]:.1f})")
    print(f"{'command':<54} {'wall':>7} {'vs API':>7} {'CPU':>7} {'vs API':>7}")
    for label, cmd, ref in CASES:
        wall_ratio = f"{medians[label] / medians[base[tuple(ref)]]:.2f}x" if ref else ""
        cpu_ratio = f"{cpu_medians[label] / cpu_medians[base[tuple(ref)]]:.2f}x" if ref else ""
        print(f"{label:<54} {medians[label]:>6.3f}s {wall_ratio:>7} {cpu_medians[label]:>6.3f}s {cpu_ratio:>7}")


if __name__ == "__main__":
    main()
