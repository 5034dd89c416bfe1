"""Architecture descent (Algorithm 4) and the end-to-end NeuralScale loop on scikit-learn's digits."""
import csv
import json

import pytest

from pyns.arch import load
from pyns.cli.main import main
from pyns.data.datasets import load_dataset
from pyns.neuralscale.descent import DescentConfig, configuration_change, descent, read_summary
from pyns.errors import RunError
from pyns.neuralscale.prune.schedule import PruneConfig
from pyns.scaling.profile import Profile, ScalingWarning
from pyns.scaling.solve import solve_budget

# Short Algorithm 1 on digits: enough prune steps that every width loses a unit and >= 6 rows record.
FAST = dict(warmup_epochs=2, max_epochs=12, prune_every=4, units_per_step=3, batch_size=64,
            stop_at_min_width=False)
FAST_FLAGS = ["--warmup", "2", "--epochs", "12", "--every", "4", "--units", "3", "--batch-size", "64",
              "--skip-at-min-width", "--quiet"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", split="train", resolution=8, channels=1)


def test_configuration_change_by_hand():
    assert configuration_change({"a": 10, "b": 30}, {"a": 12, "b": 27}) == pytest.approx(5 / 40)


def test_each_iteration_starts_from_the_previous_profile_at_the_target(tmp_path, digits):
    arch = load("digits_cnn")
    result = descent(arch, digits, DescentConfig(iterations=2, prune=PruneConfig(**FAST)), tmp_path / "run")
    first, second = result.iterations
    assert first.start_widths == arch.defaults  # iteration 0: the architecture's own proportions
    profile0 = Profile.load(tmp_path / "run" / "iter-00" / "profile.json")
    assert not profile0.fallback  # enough recorded points to fit real power laws
    expected = solve_budget(arch, params=arch.count().params, method="profile", profile=profile0)
    assert second.start_widths == expected.widths  # generated from iteration 0's laws, at the target size
    assert second.params <= arch.count().params
    assert second.params == arch.count(second.start_widths).params
    assert second.change == pytest.approx(configuration_change(first.start_widths, second.start_widths))
    # the run folder's final profile is the last iteration's
    assert json.loads((tmp_path / "run" / "profile.json").read_text()) == json.loads(
        (tmp_path / "run" / "iter-01" / "profile.json").read_text())
    assert [row["iteration"] for row in read_summary(tmp_path / "run")] == [0, 1]


def test_until_change_stops_once_the_configuration_stops_moving(tmp_path, digits):
    arch = load("digits_cnn")
    config = DescentConfig(iterations=5, until_change=0.999, prune=PruneConfig(**FAST))
    result = descent(arch, digits, config, tmp_path / "run")
    assert result.stopped_early and len(result.iterations) == 1  # every change is below 99.9%


def test_resume_after_an_interrupted_iteration_matches_an_uninterrupted_descent(tmp_path, digits):
    arch = load("digits_cnn")
    config = DescentConfig(iterations=2, prune=PruneConfig(**FAST))
    straight = descent(arch, digits, config, tmp_path / "straight")

    import pyns.neuralscale.descent as module

    real_prune = module.prune
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # kill iteration 1 a few minibatches in, after its first checkpoint
            def stop(state, model):
                if state.step >= 3:
                    raise KeyboardInterrupt
            kwargs["callback"] = stop
        return real_prune(*args, **kwargs)

    module.prune = interrupted
    try:
        with pytest.raises(KeyboardInterrupt):
            descent(arch, digits, config, tmp_path / "killed")
    finally:
        module.prune = real_prune
    with pytest.raises(RunError, match="--resume"):
        descent(arch, digits, config, tmp_path / "killed")
    resumed = descent(arch, digits, config, tmp_path / "killed", resume=True)
    assert [it.start_widths for it in resumed.iterations] == [it.start_widths for it in straight.iterations]
    a = (tmp_path / "straight" / "iter-01" / "trajectory.jsonl").read_text().splitlines()
    b = (tmp_path / "killed" / "iter-01" / "trajectory.jsonl").read_text().splitlines()
    strip = lambda rows: [{k: v for k, v in json.loads(r).items() if k != "time_s"} for r in rows]
    assert strip(a) == strip(b)


def test_descent_then_sweep_end_to_end_on_digits(tmp_path, capsys):
    """The issue's acceptance run: descent for 2 iterations, then uniform vs neuralscale at two budgets."""
    run_dir, sweep_dir = tmp_path / "descent", tmp_path / "sweep"
    assert main(["descent", "digits_cnn", "--data", "digits", "--out", str(run_dir), "--iterations", "2",
                 *FAST_FLAGS]) == 0
    assert "profile:" in capsys.readouterr().out
    assert main(["plot", str(run_dir)]) == 0
    assert (run_dir / "descent_widths.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["sweep", "digits_cnn", "--data", "digits", "--out", str(sweep_dir), "--width-ratios",
                 "0.5,0.75", "--methods", "uniform,neuralscale", "--seeds", "1", "--descent", str(run_dir),
                 "--epochs", "2", "--batch-size", "64", "--quiet"]) == 0
    arch = load("digits_cnn")
    with open(sweep_dir / "table.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["method"], float(r["ratio"])) for r in rows} == {
        (m, r) for m in ("uniform", "neuralscale") for r in (0.5, 0.75)}
    for result_file in sorted((sweep_dir / "cells").glob("*/result.json")):
        result = json.loads(result_file.read_text())
        widths = result["widths"]
        model = arch.build(widths)
        assert result["params"] == sum(p.numel() for p in model.parameters())
        budget = arch.count(arch.uniform_widths(result["ratio"])).params
        assert result["params"] <= budget  # every method meets the ratio's budget
    assert (sweep_dir / "table.md").read_text().count("|") > 10


# Too coarse to fit: 30 units per step on digits_cnn's 128 record at most 5 points, so every profile falls
# back to uniform (issue 15: the returned result must say so, and the API must warn as the CLI prints).
COARSE = dict(warmup_epochs=0, max_epochs=3, prune_every=4, units_per_step=30, batch_size=64,
              stop_at_min_width=False, augment=False)


def test_descent_result_carries_its_warnings_and_the_api_emits_them(tmp_path, digits):
    arch = load("digits_cnn")
    logged: list[str] = []
    with pytest.warns(ScalingWarning) as emitted:
        result = descent(arch, digits, DescentConfig(iterations=2, prune=PruneConfig(**COARSE)), tmp_path / "run",
                         log=logged.append)
    assert result.profile.fallback == "uniform"
    texts = result.warnings
    assert any(t.startswith("iteration 0: this pruning run will record at most") for t in texts)  # before it
    assert any(t.startswith("iteration 0: only") and "falls back to uniform" in t for t in texts)
    assert any(t.startswith("iteration 1: the profile has too few points") for t in texts)  # uniform start
    assert set(texts) <= {str(w.message) for w in emitted}  # each one also a Python warning
    assert {f"pyns: warning: {t}" for t in texts} <= set(logged)  # and a log line (what the CLI prints)
    assert result.iterations[1].warnings and result.iterations[1].warnings == [
        t.split(": ", 1)[1] for t in texts if t.startswith("iteration 1:")]
    # resumed: the finished iterations' warnings come back from summary.jsonl
    with pytest.warns(ScalingWarning):
        again = descent(arch, digits, DescentConfig(iterations=2, prune=PruneConfig(**COARSE)), tmp_path / "run",
                        resume=True)
    assert again.warnings == texts


def test_descent_cli_prints_every_warning_once(tmp_path, capsys):
    argv = ["descent", "digits_cnn", "--data", "digits", "--out", str(tmp_path / "run"), "--iterations", "2",
            "--warmup", "0", "--epochs", "3", "--every", "4", "--units", "30", "--batch-size", "64",
            "--skip-at-min-width", "--no-augment", "--quiet"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("pyns: warning: iteration")]
    assert any("falls back to uniform" in line for line in lines)
    assert len(lines) == len(set(lines))  # the log's copy only, not Python's warning as well
    assert "uniform fallback" in captured.out and "warning(s), printed above" in captured.out
