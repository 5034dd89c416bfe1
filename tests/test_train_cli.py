"""`pyns train`: result.json agrees with the built module and an independent evaluation; bad input exits 2."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

import pyns.arch as pa
from pyns.cli.main import build_parser, main
from pyns.data.datasets import load_dataset
from pyns.runfiles import read_jsonl
from pyns.scaling.solve import solve_budget
from pyns.train.loop import CHECKPOINT_FILE
from pyns.train.checkpoint import load_checkpoint

# Small and fast: digits at batch 64 is 23 steps per epoch.
FAST = ["--data", "digits", "--batch-size", "64", "--quiet"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _independent_accuracy(model: torch.nn.Module, test_set) -> float:
    """Accuracy over the whole test split in one batch, normalised by hand (no pyns loader)."""
    mean = torch.tensor(test_set.mean).reshape(1, -1, 1, 1)
    std = torch.tensor(test_set.std).reshape(1, -1, 1, 1)
    x = (test_set.images.float() / 255.0 - mean) / std
    model.eval()
    with torch.no_grad():
        predictions = model(x).argmax(dim=1)
    return (predictions == test_set.labels).sum().item() / len(test_set)


def test_train_writes_a_result_that_matches_the_module_and_an_independent_evaluation(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, _ = _run(capsys, "train", "digits_cnn", "--ratio", "0.5", "--epochs", "2", "--out", str(out),
                           *FAST)
    assert code == 0
    result = json.loads((out / "result.json").read_text())
    arch = pa.load("digits_cnn")
    assert result["widths"] == arch.uniform_widths(0.5)
    model = arch.build(result["widths"])
    assert result["params"] == sum(p.numel() for p in model.parameters()) == arch.count(result["widths"]).params
    assert result["macs"] == arch.count(result["widths"]).macs

    model.load_state_dict(load_checkpoint(out / CHECKPOINT_FILE)["model"])
    test_set = load_dataset("digits", split="test", resolution=8, channels=1)
    assert result["final_test_acc"] == pytest.approx(_independent_accuracy(model, test_set), abs=1e-12)
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert result["best_test_acc"] == max(m["test_acc"] for m in metrics)
    assert "as the paper reports" in result["best_test_acc_note"]

    latency = result["latency"]
    assert (latency["batch_size"], latency["warmup"], latency["iters"]) == (100, 20, 80)
    assert latency["images_per_s"] == pytest.approx(100 / (latency["ms_per_batch"] / 1e3))
    assert result["complete"] is True and result["recipe"]["epochs"] == 2 and result["recipe"]["lr"] == 0.1
    # The printed summary labels which accuracy is which.
    assert f"final test accuracy: {100 * result['final_test_acc']:.2f}%" in stdout
    assert "best test accuracy (max over epochs, as the paper reports)" in stdout
    assert f"params {result['params']:,}" in stdout

    # --resume without width options continues the same network to more epochs.
    code, _, _ = _run(capsys, "train", "digits_cnn", "--epochs", "3", "--resume", "--out", str(out), "--no-latency",
                      *FAST)
    assert code == 0
    resumed = json.loads((out / "result.json").read_text())
    assert resumed["widths"] == result["widths"] and resumed["epochs"] == 3
    assert [m["epoch"] for m in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3]


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["train", "digits_cnn", "--data", "digits", "--out", "x", *argv])


def test_width_options_pick_the_right_widths(tmp_path):
    from pyns.cli.train import choose_widths

    arch = pa.load("digits_cnn")
    assert choose_widths(arch, _args())[0] == arch.defaults
    assert choose_widths(arch, _args("--widths", "c1=8,c4=20"))[0] == {**arch.defaults, "c1": 8, "c4": 20}
    widths, how = choose_widths(arch, _args("--params", "9000"))
    assert how["method"] == "uniform" and arch.count(widths).params <= 9000
    assert widths == solve_budget(arch, params=9000, method="uniform").widths
    profile = {"format": "pyns.profile", "version": 1, "metric": "params", "points": 8, "tau_range": [2e3, 3e4],
               "symbols": {s: {"alpha": a, "beta": 0.5} for s, a in zip(arch.searchable, (0.05, 0.3, 0.1, 0.4))}}
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile))
    widths, how = choose_widths(arch, _args("--profile", str(path), "--params", "9000"))
    assert how["method"] == "neuralscale" and arch.count(widths).params <= 9000
    assert widths == solve_budget(arch, params=9000, method="profile", profile=str(path)).widths
    assert widths != solve_budget(arch, params=9000, method="uniform").widths  # the profile did matter


@pytest.mark.parametrize("argv, message", [
    (["--data", "cifar10", "--root", "/nonexistent"], "/nonexistent"),
    (["--data", "digits", "--widths", "c1=8", "--ratio", "0.5"], "--widths and --ratio"),
    (["--data", "digits", "--ratio", "0.5", "--params", "9000"], "--ratio and --params/--macs"),
    (["--data", "digits", "--params", "10"], "no network meets params <= 10"),
    (["--data", "digits", "--profile", "p.json"], "--profile needs a budget"),
    (["--data", "digits", "--widths", "c9=3"], "no width symbol `c9`"),
    (["--data", "digits", "--milestones", "a,b"], "--milestones"),
])
def test_bad_input_exits_2_with_one_message(tmp_path, capsys, argv, message):
    code, stdout, stderr = _run(capsys, "train", "digits_cnn", "--out", str(tmp_path / "run"), "--epochs", "1",
                                *argv)
    assert code == 2
    assert stdout == ""
    assert stderr.startswith("pyns: error: ") and stderr.count("pyns: error:") == 1
    assert "Traceback" not in stderr
    assert message in stderr
    assert not (tmp_path / "run" / CHECKPOINT_FILE).exists()


def test_a_finished_run_is_not_overwritten_without_asking(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / CHECKPOINT_FILE).write_bytes(b"not really")
    code, _, stderr = _run(capsys, "train", "digits_cnn", "--out", str(out), "--epochs", "1", *FAST)
    assert code == 2 and "already holds a training run" in stderr
    assert (out / CHECKPOINT_FILE).read_bytes() == b"not really"
    assert not Path(out / "run.json").exists()


def test_torchrun_two_processes_train_one_model_and_only_rank_0_reports(tmp_path):
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "pyns", "train", "digits_cnn", "--ratio", "0.5", "--epochs", "1", "--device", "cpu",
               "--no-latency", "--out", str(out), *FAST]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("final test accuracy:") == 1  # rank 1 trained too, but stayed silent
    assert json.loads((out / "train_config.json").read_text())["world_size"] == 2
    result = json.loads((out / "result.json").read_text())
    arch = pa.load("digits_cnn")
    model = arch.build(result["widths"])
    model.load_state_dict(load_checkpoint(out / CHECKPOINT_FILE)["model"])
    test_set = load_dataset("digits", split="test", resolution=8, channels=1)
    # The two ranks' test shards were counted together: the whole test set, once.
    assert result["final_test_acc"] == pytest.approx(_independent_accuracy(model, test_set), abs=1e-12)
