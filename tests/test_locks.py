"""One process per run folder (issue 14, item 4), with real processes: a second `pyns train` or
`prune --resume` on a running folder exits 2 naming the holder's PID and writes nothing; a killed holder
leaves no stale lock; two sweeps or two tiny samplers on one folder train every cell exactly once."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pyns.runlock import LOCK_FILE, RunBusy, folder_is_empty, holds_lock, lock_folder

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYNS_DEBUG": ""}
# A worker: the real CLI, with pyns.train.loop.train wrapped to log (pid, run folder) for every training
# run it starts, so the test can count how often each cell was trained and by whom.
WORKER = textwrap.dedent("""
    import os, sys
    import pyns.train.loop as loop
    real = loop.train
    def logged(*args, out_dir, **kwargs):
        if os.environ.get("PYNS_TEST_TRAIN_LOG"):
            with open(os.environ["PYNS_TEST_TRAIN_LOG"], "a") as log:
                log.write(f"{os.getpid()} {out_dir}\\n")
        return real(*args, out_dir=out_dir, **kwargs)
    loop.train = logged
    from pyns.cli.main import main
    sys.exit(main(sys.argv[1:]))
""")


def pyns(*argv, log: Path | None = None, **kwargs) -> subprocess.Popen:
    env = dict(ENV)
    if log is not None:
        env["PYNS_TEST_TRAIN_LOG"] = str(log)
    return subprocess.Popen([sys.executable, "-c", WORKER, *map(str, argv)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def wait_for_holder(folder: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until `proc` has taken the lock of `folder` (its PID is in the lock file)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            if json.loads((folder / LOCK_FILE).read_text() or "{}").get("pid") == proc.pid:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"{proc.pid} never locked {folder}")


def kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()


# ---- the lock itself ---------------------------------------------------------------------------------


HOLDER = textwrap.dedent("""
    import sys
    from pyns.runlock import lock_folder
    lock = lock_folder(sys.argv[1])
    print("locked", flush=True)
    sys.stdin.read()
""")


def test_second_process_is_refused_with_the_holders_pid_and_a_killed_holder_leaves_no_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], env=ENV, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunBusy) as caught:
            lock_folder(tmp_path)
        assert caught.value.holder["pid"] == holder.pid and f"PID {holder.pid}" in str(caught.value)
        assert not holds_lock(tmp_path)
    finally:
        kill(holder)  # SIGKILL: no cleanup code runs, the kernel drops the lock
    with lock_folder(tmp_path) as lock:
        assert holds_lock(tmp_path) and json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
        with lock_folder(tmp_path):  # re-entrant within a process
            pass
        assert holds_lock(tmp_path)
    assert not holds_lock(tmp_path) and (tmp_path / LOCK_FILE).read_text() == ""
    assert folder_is_empty(tmp_path)  # the lock file alone does not make a folder "used"


def test_waiting_for_a_lock_returns_once_the_holder_dies(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], env=ENV, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    started = time.monotonic()
    import threading

    threading.Timer(1.0, lambda: os.kill(holder.pid, signal.SIGKILL)).start()
    with lock_folder(tmp_path, wait=True):
        assert time.monotonic() - started >= 0.9  # it really waited for the holder
    holder.communicate()


# ---- commands on one folder --------------------------------------------------------------------------

DIGITS = ["--data", "digits"]


@pytest.mark.slow
def test_second_train_into_a_running_folder_exits_2_and_changes_nothing(tmp_path):
    out = tmp_path / "run"
    first = pyns("train", "digits_cnn", *DIGITS, "--out", out, "--epochs", "200", "--no-latency", "--quiet")
    try:
        wait_for_holder(out, first)
        while not (out / "metrics.jsonl").exists():  # run.json is written, the first epoch is done
            assert first.poll() is None, first.communicate()
            time.sleep(0.05)
        run_json = (out / "run.json").read_text()
        second = pyns("train", "digits_cnn", *DIGITS, "--out", out, "--ratio", "0.5", "--epochs", "2",
                      "--no-latency", "--quiet", "--overwrite")
        _, err = second.communicate(timeout=300)
        assert second.returncode == 2, err
        assert f"PID {first.pid}" in err and str(out) in err and "Traceback" not in err
        assert (out / "run.json").read_text() == run_json  # the second run's widths were never written
        assert first.poll() is None  # the first run goes on
    finally:
        kill(first)


@pytest.mark.slow
def test_prune_resume_beside_a_running_prune_exits_2(tmp_path):
    out = tmp_path / "prune"
    first = pyns("prune", "digits_cnn", *DIGITS, "--out", out, "--warmup", "100", "--quiet", "--no-fit")
    try:
        wait_for_holder(out, first)
        second = pyns("prune", "digits_cnn", *DIGITS, "--out", out, "--warmup", "100", "--quiet", "--no-fit",
                      "--resume")
        _, err = second.communicate(timeout=300)
        assert second.returncode == 2 and f"PID {first.pid}" in err and "Traceback" not in err, err
    finally:
        kill(first)
    with lock_folder(out):  # SIGKILLed: nothing stale
        pass


def _trained(log: Path) -> dict[str, list[int]]:
    """run folder -> PIDs that started training in it."""
    runs: dict[str, list[int]] = {}
    for line in log.read_text().splitlines():
        pid, folder = line.split(" ", 1)
        runs.setdefault(str(Path(folder)), []).append(int(pid))
    return runs


@pytest.mark.slow
def test_two_sweeps_on_one_folder_share_the_cells_and_train_each_once(tmp_path):
    out, log = tmp_path / "sweep", tmp_path / "trained.log"
    argv = ["sweep", "digits_cnn", *DIGITS, "--out", out, "--width-ratios", "0.5,0.6,0.7", "--methods",
            "uniform", "--seeds", "2", "--epochs", "3", "--no-augment"]
    first = pyns(*argv, log=log)
    deadline = time.monotonic() + 120
    while not (log.exists() and log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)  # the second worker starts once the first is training its first cell
    second = pyns(*argv, log=log)
    outputs = [p.communicate(timeout=600) for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outputs
    runs = _trained(log)
    cells = sorted(p.name for p in (out / "cells").iterdir())
    assert len(cells) == 6 and sorted(Path(f).name for f in runs) == cells
    assert all(len(pids) == 1 for pids in runs.values()), runs  # no cell trained twice
    assert {pids[0] for pids in runs.values()} == {first.pid, second.pid}  # both did some of the work
    for cell in cells:  # each cell's log is one run of 3 epochs, not two interleaved
        epochs = [json.loads(line)["epoch"] for line in (out / "cells" / cell / "metrics.jsonl").read_text().splitlines()]
        assert epochs == [1, 2, 3]
    tables = [(out / "table.csv").read_text()]
    assert tables[0].count("\n") >= 4  # header + 3 budgets, written by whichever finished last


@pytest.mark.slow
def test_two_tiny_samplers_on_one_folder_train_each_cell_once(tmp_path):
    out, log = tmp_path / "tiny", tmp_path / "trained.log"
    argv = ["tiny", "sample", "digits_effnet", *DIGITS, "--out", out, "--n", "6", "--epochs", "1",
            "--batch-size", "64", "--range", "0.35:1.0"]
    first = pyns(*argv, log=log)
    deadline = time.monotonic() + 120
    while not (log.exists() and log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    second = pyns(*argv, log=log)
    outputs = [p.communicate(timeout=600) for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outputs
    runs = _trained(log)
    assert len(runs) == 6 and all(len(pids) == 1 for pids in runs.values()), runs
    assert {pids[0] for pids in runs.values()} == {first.pid, second.pid}
    assert len(list(out.glob("cells/*/result.json"))) == 6
