"""Every command is scriptable and says what it means: strict JSON, --json where a result is reported, one
vocabulary, errors that name the flag the user typed, and no silently ignored options."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pyns.cli.main import main

pytestmark = pytest.mark.usefixtures("one_thread")


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def subparser(parser, *names):
    """The parser of `pyns NAME [SUBNAME]` (argparse keeps them in the subparsers action)."""
    for name in names:
        action = next(a for a in parser._actions if hasattr(a, "_name_parser_map"))
        parser = action._name_parser_map[name]
    return parser


def strict_loads(text: str):
    """json.loads that rejects NaN / Infinity, as jq and JavaScript do."""
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")
    return json.loads(text, parse_constant=refuse)


# ---- strict JSON -------------------------------------------------------------------------------------


def test_files_and_stdout_json_are_strict(tmp_path, capsys):
    from pyns.cli.common import print_json
    from pyns.runfiles import append_jsonl, atomic_write_json, read_jsonl

    record = {"rho": math.nan, "big": math.inf, "small": -math.inf, "ok": 0.5, "nested": [np.float64("nan")]}
    atomic_write_json(tmp_path / "a.json", record)
    assert strict_loads((tmp_path / "a.json").read_text()) == {"rho": None, "big": None, "small": None,
                                                                "ok": 0.5, "nested": [None]}
    append_jsonl(tmp_path / "b.jsonl", record)
    assert read_jsonl(tmp_path / "b.jsonl")[0]["rho"] is None
    print_json(record)
    assert strict_loads(capsys.readouterr().out)["big"] is None


def test_profile_with_undefined_r2_round_trips_through_strict_json(tmp_path):
    from pyns.scaling.profile import Profile, SymbolFit

    profile = Profile(metric="params", fits={"c1": SymbolFit(2.0, 0.5, math.nan, 6)}, tau_range=(1e3, 1e4),
                      points=6)
    profile.save(tmp_path / "p.json")
    data = strict_loads((tmp_path / "p.json").read_text())
    assert data["symbols"]["c1"]["r2"] is None
    assert math.isnan(Profile.load(tmp_path / "p.json").fits["c1"].r2)


# ---- flags named right -------------------------------------------------------------------------------


def test_count_names_the_flag_that_was_typed(capsys):
    code, _, err = run(capsys, "count", "resnet18", "--w", "1e6")
    assert code == 2 and "--w must be in (0, 100]" in err and "--ratio" not in err
    code, _, err = run(capsys, "count", "resnet18", "--ratio", "1e6")
    assert code == 2 and "--ratio must be in (0, 100]" in err


def test_scale_flops_error_speaks_of_flops(capsys):
    code, _, err = run(capsys, "scale", "vgg11", "--flops", "1")
    assert code == 2 and "--flops 1 is a budget of MACs <= 0.5 (FLOPs = 2 x MACs)" in err


@pytest.mark.parametrize("value", ["-0.5x", "-1M", "-.5x"])
def test_negative_budget_reaches_the_budget_check_not_argparse(capsys, value):
    code, _, err = run(capsys, "scale", "vgg11", "--params", value)
    assert code == 2 and "a budget must be positive" in err and "expected one argument" not in err


def test_root_with_a_built_in_data_set_is_reported(capsys, tmp_path):
    code, out, err = run(capsys, "train", "digits_cnn", "--data", "digits", "--root", tmp_path / "nowhere",
                         "--out", tmp_path / "t", "--epochs", "1", "--no-latency", "--quiet", "--threads", "1")
    assert code == 0, err
    assert f"--root {tmp_path / 'nowhere'} is ignored: the digits data set is built in" in err
    first = out.splitlines()[0]
    assert "seed 0" in first and "1 CPU thread" in first and "augmentation none (the digits default)" in first


def test_fit_on_a_descent_folder_points_at_its_iterations(capsys, tmp_path):
    run_dir = tmp_path / "descent"
    (run_dir / "iter-00").mkdir(parents=True)
    (run_dir / "iter-01").mkdir()
    (run_dir / "config.json").write_text(json.dumps({"kind": "pyns-descent"}))
    code, _, err = run(capsys, "fit", run_dir)
    assert code == 2 and "architecture-descent run" in err and str(run_dir / "iter-01") in err
    assert "config.json" not in err.split("(the descent")[0].replace(str(run_dir), "")


def test_train_interrupt_names_the_resume_flag(capsys, tmp_path, monkeypatch):
    import pyns.train.run as train_run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_run, "run_training", interrupted)
    code, _, err = run(capsys, "train", "digits_cnn", "--data", "digits", "--out", tmp_path / "t", "--epochs", "1",
                       "--quiet")
    assert code == 130
    assert "--resume" in err and "resume=True" not in err


# ---- --json and progress where work is long ----------------------------------------------------------

PRUNE = ["digits_cnn", "--data", "digits", "--warmup", "2", "--epochs", "12", "--every", "4", "--units", "3",
         "--batch-size", "64", "--skip-at-min-width", "--threads", "1", "--quiet"]


@pytest.mark.slow
def test_prune_and_fit_json_report_every_power_law(capsys, tmp_path):
    from pyns.neuralscale.prune.runfolder import read_trajectory

    run_dir = tmp_path / "prune"
    code, out, err = run(capsys, "prune", *PRUNE, "--out", run_dir, "--json")
    assert code == 0, err
    summary = strict_loads(out)
    assert summary["seed"] == 0 and summary["threads"] == 1 and summary["recorded"] >= 6
    assert summary["profile"] == str(run_dir / "profile.json")
    assert "seed 0, 1 CPU thread" in err  # the first line goes to stderr under --json

    code, out, err = run(capsys, "fit", run_dir, "--json")
    assert code == 0, err
    fit = strict_loads(out)
    rows = [r for r in read_trajectory(run_dir) if r["recording"]]
    tau = np.log([r["params"] for r in rows])
    for symbol, entry in fit["symbols"].items():
        phi = np.log([r["widths"][symbol] for r in rows])
        beta, intercept = np.polyfit(tau, phi, 1)  # Algorithm 2: least squares of ln phi on ln tau
        assert entry["beta"] == pytest.approx(beta, rel=1e-6, abs=1e-9)
        assert entry["alpha"] == pytest.approx(math.exp(intercept), rel=1e-6)
        assert entry["points"] == len(rows)
        residual = phi - (intercept + beta * tau)
        total = ((phi - phi.mean()) ** 2).sum()
        if total > 0:
            assert entry["r2"] == pytest.approx(1 - (residual ** 2).sum() / total, abs=1e-9)

    code, out, _ = run(capsys, "fit", run_dir)
    header, *lines = out.splitlines()
    assert header.split() == ["symbol", "alpha", "beta", "R^2", "points"]
    assert {line.split()[0] for line in lines[:len(fit["symbols"])]} == set(fit["symbols"])


def test_cell_progress_counts_done_running_left_and_eta():
    from pyns.sweep.progress import CellProgress

    lines: list[str] = []
    tracker = CellProgress(4, 0, lines.append, enabled=False)
    tracker.started()
    assert (tracker.done, tracker.running, tracker.left) == (0, 1, 3) and tracker.eta() == ""
    tracker.finished("cell a: done before", skipped=True)
    assert tracker.eta() == ""  # a skipped cell says nothing about how long training takes
    tracker.started(2)
    tracker.finished("cell b", skipped=False)
    assert (tracker.done, tracker.running, tracker.left) == (2, 1, 1)
    assert tracker.eta() != "" and lines == ["[1/4] cell a: done before", "[2/4] cell b"]


def test_sweep_prints_a_line_per_cell_and_quiet_silences_it(capsys, tmp_path):
    argv = ["sweep", "digits_cnn", "--data", "digits", "--width-ratios", "0.5", "--methods", "uniform",
            "--seeds", "1", "--epochs", "1", "--batch-size", "64", "--no-latency", "--out"]
    code, out, err = run(capsys, *argv, tmp_path / "a")
    assert code == 0, err
    assert "[1/1] uniform" in err or "[1/1]" in err
    record = json.loads(next((tmp_path / "a").glob("cells/*/result.json")).read_text())
    assert "latency" not in record and "latency_ms" not in record  # --no-latency reached the cells
    code, out, err = run(capsys, *argv, tmp_path / "b", "--quiet")
    assert code == 0 and "[1/1]" not in err


# ---- one vocabulary ----------------------------------------------------------------------------------


def test_tiny_sample_takes_the_sweep_executor_names(capsys, tmp_path):
    from pyns.cli.main import build_parser

    parser = build_parser()
    sample = parser.parse_args(["tiny", "sample", "digits_effnet", "--data", "digits", "--out", str(tmp_path)])
    sweep = parser.parse_args(["sweep", "digits_cnn", "--data", "digits", "--width-ratios", "1", "--out",
                               str(tmp_path)])
    assert sample.executor == sweep.executor == "serial"
    sample_help = subparser(parser, "tiny", "sample").format_help()
    for flag in ("--data-option", "--quiet", "--json", "serial"):
        assert flag in sample_help
    assert "--no-latency" in subparser(parser, "sweep").format_help()


@pytest.mark.slow
def test_tiny_sample_json_and_the_old_executor_name(capsys, tmp_path):
    code, out, err = run(capsys, "tiny", "sample", "digits_effnet", "--data", "digits", "--n", "2", "--epochs", "1",
                         "--batch-size", "64", "--range", "0.35:1.0", "--out", tmp_path / "s", "--executor", "local",
                         "--json", "--quiet", "--data-option", "test_fraction=0.3")
    assert code == 0, err
    assert "--executor local is now called serial" in err
    report = strict_loads(out)
    assert report["models"] == 2 and len(report["cells"]) == 2
    assert all(0 <= c["final_test_acc"] <= 1 for c in report["cells"])
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    assert config["data_options"] == {"test_fraction": 0.3}


def test_no_spec_citations_in_help(capsys):
    from pyns.cli.main import COMMANDS, build_parser

    parser = build_parser()
    texts = [parser.format_help()] + [subparser(parser, name).format_help() for name in COMMANDS]
    texts += [subparser(parser, "tiny", name).format_help() for name in ("solve", "sample", "fit")]
    assert not [t for t in texts if "SPEC" in t]  # "SPEC §5": a document users do not have
    code, out, _ = run(capsys, "tiny", "efficientnet_b0", "--macs", "0.25x")
    assert code == 0 and "SPEC" not in out
