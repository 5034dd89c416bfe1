"""Sweeps: cells train, tables parse, every params value is the built module's, budgets hold, reruns skip."""
from __future__ import annotations

import csv
import importlib.util
import json
import math

import pytest
import torch

import pyns.arch as pa
from pyns.cli.main import main
from pyns.errors import PynsError, RunError
from pyns.sweep.run import run_sweep
from pyns.sweep.plan import SweepConfig, parse_ratios, plan_cells
from pyns.sweep.report import aggregate, read_table_csv
from pyns.train.recipe import TrainRecipe
from pyns.train.run import ArchSpec, DataSpec

RATIOS = (0.5, 1.0)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    return pa.load("digits_cnn")


def _profile(tmp_path, arch) -> str:
    """A hand-written NeuralScale profile for digits_cnn: unequal growth per width."""
    symbols = {s: {"alpha": a, "beta": 0.5} for s, a in zip(arch.searchable, (0.05, 0.3, 0.1, 0.4))}
    path = tmp_path / "profile.json"
    path.write_text(json.dumps({"format": "pyns.profile", "version": 1, "metric": "params", "points": 8,
                                "tau_range": [2e3, 3e4], "symbols": symbols}))
    return str(path)


def _sweep_argv(out, profile) -> list[str]:
    return ["sweep", "digits_cnn", "--data", "digits", "--width-ratios", ",".join(str(r) for r in RATIOS),
            "--methods", "uniform,neuralscale", "--seeds", "1", "--epochs", "1", "--batch-size", "64",
            "--profile", profile, "--out", str(out), "--quiet"]


def _markdown_rows(text: str) -> list[list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header, separator, *body = lines
    assert set(separator.replace("|", "").replace(":", "").replace("-", "")) == set()
    width = len(header.strip("|").split("|"))
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in body]
    assert all(len(row) == width for row in rows)
    return rows


def test_sweep_trains_every_cell_tables_them_and_skips_them_on_a_rerun(tmp_path, capsys, digits):
    out = tmp_path / "sweep"
    argv = _sweep_argv(out, _profile(tmp_path, digits))
    assert main(argv) == 0
    capsys.readouterr()

    # table.csv, read with the csv module (not pyns's reader).
    with open(out / "table.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [(float(r["ratio"]), r["method"]) for r in table] == [
        (0.5, "uniform"), (0.5, "neuralscale"), (1.0, "uniform"), (1.0, "neuralscale")]
    cells = sorted((out / "cells").iterdir())
    assert [c.name for c in cells] == ["neuralscale_r0.5_seed0", "neuralscale_r1_seed0", "uniform_r0.5_seed0",
                                       "uniform_r1_seed0"]
    for row in table:
        ratio = float(row["ratio"])
        budget = digits.count(digits.uniform_widths(ratio)).params  # the paper's budget, computed here
        assert int(row["budget"]) == budget
        result = json.loads((out / "cells" / f"{row['method']}_r{ratio:g}_seed0" / "result.json").read_text())
        module = digits.build(result["widths"])
        numel = sum(p.numel() for p in module.parameters())
        assert int(row["params"]) == result["params"] == numel <= budget
        assert float(row["best_acc_mean"]) == result["best_test_acc"]
        assert float(row["final_acc_mean"]) == result["final_test_acc"]
        assert float(row["latency_ms_mean"]) == result["latency_ms"]
        assert row["best_acc_std"] == "" and row["seeds"] == "1"  # one seed: no standard deviation
    uniform = json.loads((out / "cells" / "uniform_r0.5_seed0" / "result.json").read_text())
    neural = json.loads((out / "cells" / "neuralscale_r0.5_seed0" / "result.json").read_text())
    assert uniform["widths"] == digits.uniform_widths(0.5) and neural["widths"] != uniform["widths"]

    md_rows = _markdown_rows((out / "table.md").read_text())
    assert [(float(r[0]), r[1]) for r in md_rows] == [(float(r["ratio"]), r["method"]) for r in table]
    for md, row in zip(md_rows, table):
        assert md[2].split(" ")[0] == f"{int(row['params']):,}"
        assert md[5] == f"{100 * float(row['best_acc_mean']):.2f}"
    assert read_table_csv(out / "table.csv")[0]["params"] == int(table[0]["params"])
    for figure in ("fig4_accuracy_vs_params.png", "fig5_accuracy_vs_latency.png"):
        assert (out / figure).read_bytes()[:8] == PNG_SIGNATURE

    # A rerun trains nothing: no cell file is rewritten.
    stamps = {p: p.stat().st_mtime_ns for c in cells for p in (c / "result.json", c / "checkpoint.pt")}
    assert main(argv) == 0
    assert "0 cell(s) trained, 4 already complete" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    # A cell that lost its result (killed after its last epoch) resumes from its checkpoint, no retraining.
    lost = out / "cells" / "uniform_r1_seed0"
    (lost / "result.json").unlink()
    assert main(argv) == 0
    assert "1 cell(s) trained, 3 already complete" in capsys.readouterr().out
    again = json.loads((lost / "result.json").read_text())
    assert (lost / "checkpoint.pt").stat().st_mtime_ns == stamps[lost / "checkpoint.pt"]
    assert again["final_test_acc"] == float(table[2]["final_acc_mean"])

    # Other recipe settings in the same folder are refused with one message.
    assert main([*argv, "--lr", "0.05"]) == 2
    assert "different settings" in capsys.readouterr().err


def test_plan_gives_li_a_trained_full_network_and_only_smaller_budgets(digits):
    config = SweepConfig(ArchSpec("digits_cnn"), DataSpec("digits"), TrainRecipe(epochs=1), [0.5, 1.0, 2.0],
                         ["uniform", "li"], [0, 1])
    cells, notes = plan_cells(digits, config)
    names = [c.name for c in cells]
    assert names[:2] == ["full_r1_seed0", "full_r1_seed1"]  # trained before any li cell needs them
    assert [n for n in names if n.startswith("li")] == ["li_r0.5_seed0", "li_r0.5_seed1"]
    assert sum(n.startswith("uniform") for n in names) == 6
    assert len(notes) == 2 and all("nothing to prune" in n for n in notes)
    li = next(c for c in cells if c.method == "li")
    assert li.source == "full_r1_seed0" and li.cost["params"] <= li.budget


def test_plan_refuses_methods_without_their_inputs(digits):
    config = SweepConfig(ArchSpec("digits_cnn"), DataSpec("digits"), TrainRecipe(epochs=1), [0.5],
                         ["neuralscale"], [0])
    with pytest.raises(PynsError, match="needs a profile"):
        plan_cells(digits, config)
    config.methods = ["morphnet"]
    with pytest.raises(PynsError, match="needs a pruning trajectory"):
        plan_cells(digits, config)


def test_width_ratios_parse_like_the_paper():
    assert parse_ratios("0.25:2:0.25") == [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]
    assert parse_ratios("0.25,0.75,2") == [0.25, 0.75, 2.0]
    for bad in ("0:1:0.5", "1:2", "a,b", "0.5,0.5", "-1"):
        with pytest.raises(PynsError):
            parse_ratios(bad)


def test_aggregate_reports_mean_and_sample_std_over_seeds():
    records = [{"ratio": 0.5, "method": "uniform", "budget": {"metric": "params", "value": 100}, "params": 90,
                "macs": 900, "best_test_acc": best, "final_test_acc": final, "latency_ms": ms}
               for best, final, ms in ((0.90, 0.89, 1.0), (0.92, 0.90, 2.0), (0.94, 0.94, 3.0))]
    (row,) = aggregate(records)
    assert row["seeds"] == 3 and row["params"] == 90
    assert math.isclose(row["best_acc_mean"], 0.92) and math.isclose(row["best_acc_std"], 0.02)
    assert math.isclose(row["final_acc_mean"], 0.91)
    assert math.isclose(row["final_acc_std"], math.sqrt(((0.02) ** 2 + (0.01) ** 2 + (0.03) ** 2) / 2))
    assert math.isclose(row["latency_ms_mean"], 2.0) and math.isclose(row["latency_ms_std"], 1.0)


@pytest.mark.skipif(importlib.util.find_spec("ray") is not None, reason="Ray is installed")
def test_ray_executor_without_ray_says_how_to_install_it(tmp_path):
    config = SweepConfig(ArchSpec("digits_cnn"), DataSpec("digits"), TrainRecipe(epochs=1), [0.5], ["uniform"], [0])
    with pytest.raises(PynsError, match="pip install ray"):
        run_sweep(config, tmp_path / "sweep", executor="ray")
    assert not (tmp_path / "sweep").exists()  # refused before anything was planned or trained


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray is not installed (optional)")
def test_ray_executor_runs_the_cells_as_tasks(tmp_path, digits, monkeypatch):
    import ray

    # Ray workers start in the driver's folder and put it on sys.path: from the repository root they would
    # import the source tree (no compiled core) instead of the installed package.
    monkeypatch.chdir(tmp_path)

    config = SweepConfig(ArchSpec("digits_cnn"), DataSpec("digits"), TrainRecipe(epochs=1, batch_size=64), [0.5],
                         ["uniform"], [0, 1])
    try:
        result = run_sweep(config, tmp_path / "sweep", executor="ray", say=lambda line: None)
    finally:
        ray.shutdown()
    assert result.ran == 2 and len(result.rows) == 1 and result.rows[0]["seeds"] == 2
    budget = digits.count(digits.uniform_widths(0.5)).params
    assert all(r["params"] == budget for r in result.records)
    with pytest.raises(RunError):
        # Same folder, other settings: refused like the serial path.
        run_sweep(SweepConfig(ArchSpec("digits_cnn"), DataSpec("digits"), TrainRecipe(epochs=2), [0.5],
                              ["uniform"], [0]), tmp_path / "sweep", executor="ray", say=lambda line: None)


def test_li_cells_prune_the_trained_full_network_and_fine_tune_it(tmp_path, digits):
    config = SweepConfig(ArchSpec("digits_cnn"), DataSpec("digits"), TrainRecipe(epochs=1, batch_size=64), [0.5],
                         ["li"], [0], li_epochs=1)
    result = run_sweep(config, tmp_path / "sweep", say=lambda line: None)
    assert [(r["method"], r["skipped"]) for r in result.records] == [("full", False), ("li", False)]
    li = result.records[1]
    budget = digits.count(digits.uniform_widths(0.5)).params
    assert li["params"] <= budget and li["budget"]["value"] == budget
    assert li["params"] == sum(p.numel() for p in digits.build(li["widths"]).parameters())
    assert (li["recipe"]["epochs"], li["recipe"]["lr"], list(li["recipe"]["milestones"])) == (1, 0.001, [])
    # The kept c1 filters are the largest by L1 norm in the full network's final weights: its two
    # producers are the 1->16 stem conv and the 32->16 conv of the first block.
    from pyns.train.checkpoint import load_checkpoint

    state = load_checkpoint(tmp_path / "sweep" / "cells" / "full_r1_seed0" / "checkpoint.pt")["model"]
    producers = [w for w in state.values() if w.dim() == 4 and w.shape[0] == 16]
    assert len(producers) == 2
    summed = sum(w.abs().sum(dim=(1, 2, 3)) for w in producers)
    expected = sorted(torch.argsort(summed, descending=True)[: li["widths"]["c1"]].tolist())
    assert li["li"]["keep"]["c1"] == expected


def _fallback_profile(tmp_path) -> str:
    """What `pyns fit` writes for a run with 5 recorded points: no fits, fallback uniform."""
    path = tmp_path / "fallback.json"
    path.write_text(json.dumps({"format": "pyns.profile", "version": 1, "metric": "params", "points": 5,
                                "tau_range": [2e3, 3e4], "fallback": "uniform", "symbols": {}}))
    return str(path)


def test_a_fallback_profile_gives_no_neuralscale_cell_unless_allowed(tmp_path, digits):
    from pyns.errors import ProfileError
    from pyns.sweep.plan import FALLBACK_NOTE, sweep_warnings

    config = SweepConfig(ArchSpec("digits_cnn"), DataSpec("digits"), TrainRecipe(epochs=1), [0.5],
                         ["uniform", "neuralscale"], [0], profile=_fallback_profile(tmp_path))
    with pytest.raises(ProfileError, match="falls back to uniform scaling .* neuralscale label") as err:
        plan_cells(digits, config)
    assert "--allow-fallback" in str(err.value)
    config.allow_fallback = True
    cells, _ = plan_cells(digits, config)
    neural = next(c for c in cells if c.method == "neuralscale")
    assert neural.widths == digits.uniform_widths(0.5)  # what the cell really is
    assert neural.how["warnings"] == [neural.how["fallback"]] == [FALLBACK_NOTE.format(points=5)]
    assert sweep_warnings(cells) == {("neuralscale", 0.5): neural.how["warnings"]}


def test_extrapolation_warnings_are_kept_per_cell(tmp_path, digits):
    from pyns.sweep.plan import sweep_warnings

    symbols = {s: {"alpha": a, "beta": 0.5} for s, a in zip(digits.searchable, (0.05, 0.3, 0.1, 0.4))}
    path = tmp_path / "narrow.json"  # fitted on τ in [10, 20]: every sweep budget (~10^4) extrapolates
    path.write_text(json.dumps({"format": "pyns.profile", "version": 1, "metric": "params", "points": 8,
                                "tau_range": [10, 20], "symbols": symbols}))
    config = SweepConfig(ArchSpec("digits_cnn"), DataSpec("digits"), TrainRecipe(epochs=1), [0.5, 1.0],
                         ["neuralscale"], [0], profile=str(path))
    cells, _ = plan_cells(digits, config)
    found = sweep_warnings(cells)
    assert set(found) == {("neuralscale", 0.5), ("neuralscale", 1.0)}
    assert all("extrapolates the profile" in texts[0] for texts in found.values())


def test_table_footnotes_every_warning(tmp_path):
    from pyns.sweep.report import write_table

    record = {"ratio": 0.5, "method": "neuralscale", "budget": {"metric": "params", "value": 100}, "params": 90,
              "macs": 900, "best_test_acc": 0.9, "final_test_acc": 0.8, "latency_ms": None}
    rows = aggregate([record, {**record, "method": "uniform"}], ["uniform", "neuralscale"], [0.5],
                     warnings={("neuralscale", 0.5): ["first note", "second note"]})
    md, path = write_table(rows, tmp_path)
    text = md.read_text()
    body = _markdown_rows(text)
    assert [(r[1], r[-1]) for r in body] == [("uniform", ""), ("neuralscale", "[1] [2]")]
    assert "[1] first note" in text and "[2] second note" in text
    back = read_table_csv(path)
    assert [r["warnings"] for r in back] == [[], ["first note", "second note"]]


def test_cli_allow_fallback_prints_the_warning_even_when_quiet(tmp_path, capsys, digits):
    out = tmp_path / "sweep"
    argv = ["sweep", "digits_cnn", "--data", "digits", "--width-ratios", "0.5", "--methods", "neuralscale",
            "--seeds", "1", "--epochs", "1", "--batch-size", "64", "--profile", _fallback_profile(tmp_path),
            "--out", str(out), "--quiet"]
    assert main(argv) == 2
    assert "--allow-fallback" in capsys.readouterr().err and not (out / "cells").exists()
    assert main([*argv, "--allow-fallback"]) == 0
    captured = capsys.readouterr()
    assert "pyns: warning: neuralscale at ratio 0.5: uniform fallback" in captured.err
    table = (out / "table.md").read_text()
    assert "| neuralscale |" in table and "| [1] |" in table and "[1] uniform fallback" in table
