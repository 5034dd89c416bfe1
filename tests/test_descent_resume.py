"""An interrupted `pyns descent` resumes to exactly the uninterrupted result (issue 14, item 3).

Each interrupted run is a real process that SIGKILLs itself at one point: in the warm-up of an iteration
before its first checkpoint (the case that used to fail forever with "iter-00 is not empty"), in the
middle of a prune step, and between two iterations. `--resume` must then finish with the same summary,
trajectories and final profile as a run that was never interrupted (one torch thread: bit-reproducible).
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

DESCENT = ["descent", "digits_cnn", "--data", "digits", "--iterations", "2", "--warmup", "1", "--epochs", "4",
           "--every", "2", "--units", "8", "--batch-size", "128", "--quiet"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

# Runs the real CLI, killing itself with SIGKILL (no clean-up code runs) when the chosen point is reached.
KILLER = textwrap.dedent("""
    import os, signal, sys
    point, iteration, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    import pyns.neuralscale.descent as descent
    from pyns.neuralscale.prune.pruner import Pruner
    seen = {"iteration": -1, "train": 0, "prune": 0, "checkpoint": 0}

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    real_prune = descent.prune
    def each_iteration(*args, **kwargs):
        seen.update(iteration=seen["iteration"] + 1, train=0, prune=0, checkpoint=0)
        return real_prune(*args, **kwargs)
    descent.prune = each_iteration

    real_step = Pruner._train_step
    def train_step(self, x, y, *rest):
        seen["train"] += 1
        if point == "warmup" and seen["iteration"] == iteration and seen["train"] == count:
            die()
        return real_step(self, x, y, *rest)
    Pruner._train_step = train_step

    real_checkpoint = Pruner.checkpoint
    def checkpoint(self, *args, **kwargs):
        seen["checkpoint"] += 1
        if point == "start" and seen["iteration"] == iteration and seen["checkpoint"] == 1:
            die()  # the iteration folder is prepared, its first checkpoint not yet written
        return real_checkpoint(self, *args, **kwargs)
    Pruner.checkpoint = checkpoint

    real_prune_step = Pruner._prune_step
    def prune_step(self):
        seen["prune"] += 1
        if point == "pruning" and seen["iteration"] == iteration and seen["prune"] == count:
            die()  # units ranked, nothing removed or logged yet
        return real_prune_step(self)
    Pruner._prune_step = prune_step

    real_append = descent.append_jsonl
    def append(path, record):
        real_append(path, record)
        if point == "between" and record.get("iteration") == iteration:
            die()  # the iteration's summary row is written; the next iteration has not started
    descent.append_jsonl = append

    from pyns.cli.main import main
    sys.exit(main(sys.argv[4:]))
""")

# (name, point, iteration, count, what the killed folder must look like)
# A pruning run writes a checkpoint as it starts, so only the "start" points leave a started iteration
# without one (the case that could not resume before); the warm-up points resume from that checkpoint.
POINTS = [
    ("start of iteration 0", "start", 0, 0,
     lambda out: (out / "iter-00").is_dir() and not (out / "iter-00" / "checkpoint.pt").exists()),
    ("start of iteration 1", "start", 1, 0,
     lambda out: (out / "iter-01").is_dir() and not (out / "iter-01" / "checkpoint.pt").exists()),
    ("warm-up of iteration 0", "warmup", 0, 3, lambda out: (out / "iter-00" / "checkpoint.pt").exists()),
    ("warm-up of iteration 1", "warmup", 1, 3, lambda out: (out / "iter-01" / "checkpoint.pt").exists()),
    ("pruning in iteration 0", "pruning", 0, 3, lambda out: (out / "iter-00" / "checkpoint.pt").exists()),
    ("between iterations", "between", 0, 0, lambda out: not (out / "iter-01").exists()),
]


def _start(argv, *, killer=None) -> subprocess.Popen:
    prefix = ["-c", KILLER, *map(str, killer)] if killer else ["-m", "pyns"]
    return subprocess.Popen([sys.executable, *prefix, *map(str, argv)], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _result(out: Path) -> dict:
    """Everything a descent computes, without wall times and folder names."""
    summary = [json.loads(line) for line in (out / "summary.jsonl").read_text().splitlines()]
    for row in summary:
        row.pop("profile_path")
    trajectories = {}
    for folder in sorted(out.glob("iter-*")):
        rows = [json.loads(line) for line in (folder / "trajectory.jsonl").read_text().splitlines()]
        trajectories[folder.name] = [{k: v for k, v in row.items() if k != "time_s"} for row in rows]
    profile = json.loads((out / "profile.json").read_text())
    profile.pop("trajectory", None)
    return {"summary": summary, "trajectories": trajectories, "profile": profile}


@pytest.mark.slow
def test_descent_killed_anywhere_resumes_to_the_uninterrupted_result(tmp_path):
    reference = _start([*DESCENT, "--out", tmp_path / "reference"])
    killed = {name: _start([*DESCENT, "--out", tmp_path / str(i)], killer=(point, iteration, count))
              for i, (name, point, iteration, count, _) in enumerate(POINTS)}
    for i, (name, *_, looks_right) in enumerate(POINTS):
        proc = killed[name]
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == -9, f"{name}: the run was not killed ({proc.returncode}): {err}"
        assert looks_right(tmp_path / str(i)), name
    resumed = {name: _start([*DESCENT, "--out", tmp_path / str(i), "--resume"])
               for i, (name, *_) in enumerate(POINTS)}
    _, err = reference.communicate(timeout=900)
    assert reference.returncode == 0, err
    expected = _result(tmp_path / "reference")
    assert len(expected["summary"]) == 2 and sum(r["recording"] for r in expected["trajectories"]["iter-00"]) > 0
    for i, (name, *_) in enumerate(POINTS):
        proc = resumed[name]
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, f"{name}: --resume failed: {err}"
        assert _result(tmp_path / str(i)) == expected, name
