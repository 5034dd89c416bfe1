"""`pyns tiny sample` is reproducible cell by cell on the CPU (issue 14, item 7).

The cause was an unseeded model build: a cell's initial weights came from whatever state torch's global
generator was in, and torch seeds that generator randomly at start-up. So the first cell of every process
differed between runs, and every other cell depended on which cell ran before it. The tests train the
same cell after different global states, and a sampling run killed and rerun against an uninterrupted one.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pyns.arch import load
from pyns.tinynet.cost import with_policy
from pyns.tinynet.sample import SampleJob, plan_cells, run_cell, short_recipe

ARCH = "digits_effnet"
RANGE = (0.35, 0.9)  # small sampled networks (resolution <= 14): a cell trains in seconds on one thread


def _metrics(folder: Path) -> list[dict]:
    """The per-epoch log without wall times (the only field allowed to differ)."""
    rows = [json.loads(line) for line in (folder / "train" / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "time"} for row in rows]


def test_a_cell_trains_the_same_whatever_ran_before_it(tmp_path, one_thread):
    arch = with_policy(load(ARCH), "tinynet")
    cells, _ = plan_cells(arch, 2, RANGE, (0.03, 1.05), seed=0)
    cell = cells[1]
    recipe = short_recipe(1, batch_size=64, seed=0)
    import dataclasses

    results = []
    for attempt, state in enumerate((1, 12345)):
        job = SampleJob(run_dir=str(tmp_path / f"run{attempt}"), arch_text=arch.source.text,
                        arch_filename=arch.source.filename, variant=None, policy="tinynet", params={},
                        data="digits", root=None, recipe=dataclasses.asdict(recipe))
        torch.manual_seed(state)  # another process, or another cell trained before this one
        torch.rand(state % 97)
        results.append(run_cell(job, cell))
        results[-1] = (results[-1], _metrics(Path(job.run_dir) / "cells" / cell.name))
    (first, first_log), (second, second_log) = results
    assert first_log == second_log  # bit-identical losses and accuracies
    assert (first.final_test_acc, first.best_test_acc) == (second.final_test_acc, second.best_test_acc)


SAMPLE = ["tiny", "sample", ARCH, "--data", "digits", "--n", "3", "--epochs", "2", "--batch-size", "64",
          "--range", f"{RANGE[0]}:{RANGE[1]}"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _sample(out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pyns", *SAMPLE, "--out", str(out)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_killed_and_rerun_sample_equals_an_uninterrupted_one(tmp_path):
    reference = _sample(tmp_path / "reference")
    killed = _sample(tmp_path / "killed")
    # SIGKILL once the first cell is finished and the second has started: the rerun then trains the
    # second and third cells first in a fresh process (a random global generator state).
    deadline = time.monotonic() + 600
    first = tmp_path / "killed" / "cells" / "00000" / "result.json"
    second = tmp_path / "killed" / "cells" / "00001" / "train"
    while not (first.exists() and second.exists()) and time.monotonic() < deadline:
        assert killed.poll() is None, killed.communicate()
        time.sleep(0.05)
    os.kill(killed.pid, signal.SIGKILL)
    killed.communicate()
    assert not (tmp_path / "killed" / "cells" / "00002" / "result.json").exists()
    rerun = _sample(tmp_path / "killed")
    for proc in (reference, rerun):
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err
    for name in ("00000", "00001", "00002"):
        assert _metrics(tmp_path / "killed" / "cells" / name) == _metrics(tmp_path / "reference" / "cells" / name)
        done = [json.loads((tmp_path / run / "cells" / name / "result.json").read_text()) for run in
                ("reference", "killed")]
        assert [{k: v for k, v in d.items() if k != "seconds"} for d in done][0] == \
            [{k: v for k, v in d.items() if k != "seconds"} for d in done][1]
