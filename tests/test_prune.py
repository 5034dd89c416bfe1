"""The pruning loop (pyns.neuralscale.prune): ranking, schedule rules, the run folder, exact resume, the CLI.

Runs use scikit-learn's digits with digits_cnn started at small widths, so a whole run is a few dozen
minibatches on the CPU.
"""
from __future__ import annotations

import json

import pytest
import torch

from pyns import ir
from pyns.arch import load
from pyns.cli.main import main
from pyns.data.datasets import load_dataset
from pyns.errors import RunError
from pyns.neuralscale.prune.pruner import Pruner
from pyns.neuralscale.prune.importance import TaylorCollector, select_units
from pyns.neuralscale.prune.run import prune
from pyns.neuralscale.prune.runfolder import CHECKPOINT_FILE, TRAJECTORY_FILE
from pyns.neuralscale.prune.schedule import (
    STOP_EPOCH_LIMIT,
    STOP_FRACTION_REACHED,
    STOP_MIN_WIDTH,
    PruneConfig,
    lr_at,
    recording_started,
    target_units,
)
from pyns.runfiles import read_jsonl


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", split="train", resolution=8, channels=1)


@pytest.fixture(scope="module")
def arch():
    return load("digits_cnn")


def _rows_without_time(rows):
    return [{k: v for k, v in row.items() if k != "time_s"} for row in rows]


# ----------------------------------------------------------------------------------------------------
# Ranking
# ----------------------------------------------------------------------------------------------------


def test_global_ranking_takes_the_smallest_units_without_per_layer_normalisation():
    # Layer 0 is uniformly unimportant: a per-layer normalisation would take one unit from each layer.
    importances = [torch.tensor([0.3, 0.1, 0.2, 0.4]), torch.tensor([10.0, 20.0, 30.0])]
    selection = select_units(importances, 2)
    assert selection.removed == {0: [1, 2]} and not selection.blocked


def test_ranking_respects_the_minimum_width_and_reports_the_block():
    importances = [torch.tensor([5.0, 1.0, 3.0]), torch.tensor([0.5, 4.0]), torch.tensor([2.0])]
    # Ascending: g1[0]=0.5, g0[1]=1, g2[0]=2 (group of width 1: blocked), g0[2]=3.
    selection = select_units(importances, 3, min_width=1)
    assert selection.removed == {1: [0], 0: [1, 2]}
    assert selection.blocked
    # A minimum of 2 also protects group 1 (width 2) and stops group 0 after one unit.
    selection = select_units(importances, 3, min_width=2)
    assert selection.removed == {0: [1]} and selection.blocked


def test_equal_importances_break_by_group_then_position():
    importances = [torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0])]
    assert select_units(importances, 2).removed == {0: [1, 2]}
    assert select_units(importances, 3).removed == {0: [1, 2], 1: [0]}


def test_class_importance_rules_against_autograd():
    """ResNet18's stem, b1b and b2b meet in identity adds: one class of gates. Per-gate (the default):
    the channel's score is the sum over the class's gates of their squared dE/dz, averaged over
    minibatches; summed: the square of the sum of dE/dz over the gates (the first-order change of
    removing the channel at all its gates at once), averaged. The oracle takes dE/dz of every gate with
    autograd."""
    arch = load("resnet18")
    model = arch.build(arch.uniform_widths(1 / 16), gates=True, resolution=16)
    groups = [tuple(g) for g in ir.tied_groups(model.ir, model.widths)]
    tied = next(g for g in groups if "stem" in g)
    assert set(tied) == {"stem", "b1b", "b2b"}
    generator = torch.Generator().manual_seed(2)
    batches = [(torch.randn(6, 3, 16, 16, generator=generator), torch.randint(0, 10, (6,), generator=generator))
               for _ in range(3)]
    gates = [g for g in model.gates() if g.symbol in tied]
    expected = torch.zeros(4, dtype=torch.float64)
    per_gate_rule = torch.zeros(4, dtype=torch.float64)  # the previous rule: sum over gates of mean g^2
    for x, y in batches:
        for gate in gates:
            gate.z.requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, [gate.z for gate in gates])
        for gate in gates:
            gate.z.requires_grad_(False)
        summed = sum(g.to(torch.float64) for g in grads)
        expected += summed ** 2 / len(batches)
        per_gate_rule += sum(g.to(torch.float64) ** 2 for g in grads) / len(batches)
    summed = TaylorCollector(model, groups, "summed")
    per_gate = TaylorCollector(model, groups)
    assert per_gate.rule == "per-gate"
    for x, y in batches:
        torch.nn.functional.cross_entropy(model(x), y).backward()
        summed.end_minibatch()
        per_gate.end_minibatch()
    index = groups.index(tied)
    torch.testing.assert_close(summed.importance(index), expected, rtol=1e-4, atol=1e-12)
    torch.testing.assert_close(per_gate.importance(index), per_gate_rule, rtol=1e-4, atol=1e-12)
    assert not torch.allclose(expected, per_gate_rule, rtol=1e-2)  # the two rules differ on this net
    # A single-gate class: both rules are the paper's (dE/dz)^2.
    lone = groups.index(next(g for g in groups if len(g) == 1))
    torch.testing.assert_close(summed.importance(lone), per_gate.importance(lone), rtol=1e-6, atol=1e-15)
    summed.detach()
    per_gate.detach()
    assert all(g.taylor_sum is None and g.taylor_squares is None for g in model.gates())


# ----------------------------------------------------------------------------------------------------
# Schedule
# ----------------------------------------------------------------------------------------------------


def test_config_defaults_are_the_papers_and_bad_values_are_refused():
    c = PruneConfig()
    assert (c.warmup_epochs, c.warmup_lr, c.prune_lr, c.lr_decay, c.lr_decay_every) == (10, 0.1, 0.01, 1.5, 10)
    assert (c.momentum, c.weight_decay, c.batch_size) == (0.5, 5e-4, 256)
    assert (c.prune_every, c.units_per_step) == (None, None)  # derived per run: tests/test_prune_defaults.py
    assert (c.stop_fraction, c.min_width) == (0.95, 1)
    tiny = PruneConfig.for_dataset("tiny-imagenet")
    assert (tiny.batch_size, tiny.prune_every) == (100, 100)
    assert [lr_at(c, e) for e in (0, 9, 10, 19, 20, 35)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.01 / 1.5, 0.01 / 1.5 ** 2])
    with pytest.raises(RunError, match="stop_fraction"):
        PruneConfig(stop_fraction=1.0)
    with pytest.raises(RunError, match="unknown pruning option"):
        PruneConfig.from_dict({"warmup": 3})


def test_recording_and_target_rules():
    initial = {"a": 4, "b": 4, "fixed": 3}
    assert not recording_started(initial, {"a": 3, "b": 4, "fixed": 3}, ["a", "b"])
    assert recording_started(initial, {"a": 3, "b": 1, "fixed": 3}, ["a", "b"])
    # A width at its floor from the start can never lose a unit: it must not hold recording back.
    assert recording_started(initial, {"a": 3, "b": 4, "fixed": 3}, ["a", "b"], exempt={"b"})
    assert target_units(PruneConfig(), 100) == 95  # 0.95 * 100 must not round up to 96
    assert target_units(PruneConfig(stop_fraction=0.7), 16) == 12


def _scripted_importance(self, index):
    """At prune step k (1-based) class (k-1) mod 4 has importances 0.1, 0.2, ...; class g otherwise has
    100 + 10 g + position. Replaces the gate-measured importances so the rules can be checked by hand."""
    low = self.state.step % len(self.net.symbol_classes)
    width = len(self.state.kept[self.net.classes[index][0]])
    base = 0.1 * torch.arange(1, width + 1, dtype=torch.float64)
    return base if index == low else 100.0 + 10 * index + torch.arange(width, dtype=torch.float64)


@pytest.mark.parametrize("stop_at_min_width", [True, False])
def test_recording_starts_and_runs_stop_as_the_rules_say(tmp_path, digits, arch, monkeypatch,
                                                        stop_at_min_width):
    monkeypatch.setattr(Pruner, "_importance", _scripted_importance)
    # 24 filters (c1 and c4 are produced by two layers each: 2*4 + 4 + 4 + 2*4); 0.7 of them is 17.
    config = PruneConfig(warmup_epochs=0, batch_size=128, prune_every=1, units_per_step=2, augment=False,
                         stop_fraction=0.7, stop_at_min_width=stop_at_min_width)
    result = prune(arch, digits, config, tmp_path / "run", widths={"c1": 4, "c2": 4, "c3": 4, "c4": 4})
    widths = [tuple(row["widths"].values()) for row in result.rows]
    # Steps 1-4 take two units from c1, c2, c3, c4 in turn; only after step 4 has every width lost one.
    assert widths[:4] == [(2, 4, 4, 4), (2, 2, 4, 4), (2, 2, 2, 4), (2, 2, 2, 2)]
    assert [row["recording"] for row in result.rows[:4]] == [False, False, False, True]
    if stop_at_min_width:
        # Step 5: c1's second-lowest unit would leave it empty: the run stops without that step.
        assert len(result.rows) == 4 and result.stop_reason == STOP_MIN_WIDTH
    else:
        # Step 5 skips c1's blocked unit and takes c2's cheapest; step 6 removes the 17th filter
        # (filters left: 12, 9, 6; units left: 8, 6, 4).
        assert widths[4:] == [(1, 1, 2, 2), (1, 1, 1, 1)]
        assert [row["filters"] for row in result.rows[3:]] == [12, 9, 6]
        assert [row["prunable_units"] for row in result.rows[3:]] == [8, 6, 4]
        assert result.stop_reason == STOP_FRACTION_REACHED
    assert all(row["params"] == arch.count(row["widths"]).params for row in result.rows)


def test_epoch_limit_stops_before_pruning(tmp_path, digits, arch):
    config = PruneConfig(warmup_epochs=0, max_epochs=0, batch_size=256, augment=False)
    result = prune(arch, digits, config, tmp_path / "run", widths={"c1": 4, "c2": 4, "c3": 4, "c4": 4})
    assert result.rows == [] and result.stop_reason == STOP_EPOCH_LIMIT and not result.done


# ----------------------------------------------------------------------------------------------------
# A real run: costs, resume, masked mode
# ----------------------------------------------------------------------------------------------------

# 1438 training digits at batch 128: 12 minibatches per epoch; one warm-up epoch, then a prune step every
# 4 minibatches (16, 20, 24, ...) removing 2 of the 24 units until half of the 36 filters are gone (c1 and
# c4 are produced by two layers each: 2*6 + 6 + 6 + 2*6). Step 3 falls on the last minibatch of an
# epoch, the case where a resumed run must move on to the next epoch itself.
_RUN = {"warmup_epochs": 1, "batch_size": 128, "prune_every": 4, "units_per_step": 2, "stop_fraction": 0.5,
        "stop_at_min_width": False, "seed": 3, "checkpoint_interval_s": 0}
_START = {"c1": 6, "c2": 6, "c3": 6, "c4": 6}


class _Killed(Exception):
    pass


def _kill_at(minibatch: int):
    def callback(state, model):
        if state.minibatches == minibatch:
            raise _Killed
    return callback


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, digits, arch):
    """An uninterrupted run that also checks, at every prune step, that the cost engine's τ is the
    parameter count of the module actually being trained."""
    out = tmp_path_factory.mktemp("reference") / "run"
    seen = []

    def check(state, model):
        if state.since_prune == 0 and state.step > len(seen):
            assert model.widths == state.widths
            seen.append(sum(p.numel() for p in model.parameters()))

    result = prune(arch, digits, PruneConfig(**_RUN), out, widths=_START, callback=check)
    return result, seen


def test_tau_is_the_shrunk_modules_parameter_count_at_every_step(reference_run):
    result, module_params = reference_run
    steps = len(result.rows)
    assert result.stop_reason == STOP_FRACTION_REACHED and steps >= 5
    assert [row["minibatch"] for row in result.rows] == [16 + 4 * k for k in range(steps)]
    assert [row["epoch"] for row in result.rows] == [(15 + 4 * k) // 12 for k in range(steps)]
    assert [row["params"] for row in result.rows] == module_params
    assert module_params == sorted(module_params, reverse=True) and len(set(module_params)) == steps
    # Filters, by hand: c1 (stem conv, block 1's second conv) and c4 (block 2's conv, its projection)
    # have two producing layers each. The run stops at the first row with 18 of the 36 removed.
    filters = [2 * w["c1"] + w["c2"] + w["c3"] + 2 * w["c4"] for w in (row["widths"] for row in result.rows)]
    assert [row["filters"] for row in result.rows] == filters
    assert filters[-1] <= 18 < min(filters[:-1])
    assert [row["prunable_units"] for row in result.rows] == [24 - 2 * (k + 1) for k in range(steps)]
    on_disk = read_jsonl(result.run_dir / TRAJECTORY_FILE)
    assert on_disk == result.rows
    for name in ("config.json", "arch.arch", "versions.json", "summary.json", CHECKPOINT_FILE):
        assert (result.run_dir / name).exists(), name
    assert json.loads((result.run_dir / "config.json").read_text())["prune"]["seed"] == 3


def test_resume_after_kills_gives_the_same_trajectory(tmp_path, digits, arch, reference_run):
    reference, _ = reference_run
    out = tmp_path / "run"
    config = PruneConfig(**_RUN)
    # Killed (a crash, not a Ctrl-C) in the warm-up: the resumed run starts over from the first checkpoint.
    with pytest.raises(_Killed):
        prune(arch, digits, config, out, widths=_START, callback=_kill_at(5))
    # Killed two minibatches after step 3's checkpoint, which was taken at the end of epoch 1.
    with pytest.raises(_Killed):
        prune(arch, digits, config, out, widths=_START, resume=True, callback=_kill_at(26))
    rows = read_jsonl(out / TRAJECTORY_FILE)
    assert [row["epoch"] for row in rows] == [1, 1, 1]
    with open(out / TRAJECTORY_FILE, "a") as handle:
        # A row appended after the last checkpoint, then a line torn by the kill: both must go.
        handle.write(json.dumps({**rows[-1], "step": 4}) + "\n" + '{"step": 5, "torn')
    resumed = prune(arch, digits, config, out, widths=_START, resume=True)

    assert _rows_without_time(resumed.rows) == _rows_without_time(reference.rows)
    assert _rows_without_time(read_jsonl(out / TRAJECTORY_FILE)) == _rows_without_time(reference.rows)
    final = torch.load(out / CHECKPOINT_FILE, weights_only=True)["model"]
    expected = torch.load(reference.run_dir / CHECKPOINT_FILE, weights_only=True)["model"]
    assert final.keys() == expected.keys()
    assert all(torch.equal(final[k], expected[k]) for k in final)


def test_masked_run_follows_the_same_trajectory(tmp_path, digits, arch, reference_run):
    reference, _ = reference_run
    masked = prune(arch, digits, PruneConfig(**_RUN), tmp_path / "masked", widths=_START, mode="masked")
    assert [r["widths"] for r in masked.rows] == [r["widths"] for r in reference.rows]
    assert [r["params"] for r in masked.rows] == [r["params"] for r in reference.rows]
    for a, b in zip(masked.rows, reference.rows):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def test_tied_widths_shrink_together_in_a_real_run(tmp_path):
    """ResNet18's stem, b1b, b2b (identity adds) lose the same units at every step, and τ stays the
    parameter count of the module being trained."""
    arch = load("resnet18")
    data = load_dataset("synthetic", split="train", num_samples=64, num_classes=10, seed=1)
    seen = []

    def check(state, model):
        seen.append(sum(p.numel() for p in model.parameters()) == arch.count(state.widths).params)

    config = PruneConfig(warmup_epochs=0, max_epochs=2, batch_size=32, prune_every=1, units_per_step=6,
                         stop_at_min_width=False, augment=False)
    result = prune(arch, data, config, tmp_path / "run", widths=arch.uniform_widths(1 / 16), callback=check)
    assert len(result.rows) == 4 and all(seen)
    for row in result.rows:
        w = row["widths"]
        assert w["stem"] == w["b1b"] == w["b2b"] and w["b3b"] == w["b4b"]
    assert result.rows[-1]["prunable_units"] == result.rows[0]["prunable_units"] - 18


def test_run_folder_rules(tmp_path, digits, arch, reference_run):
    reference, _ = reference_run
    with pytest.raises(RunError, match="not empty: pass --resume"):
        prune(arch, digits, PruneConfig(**_RUN), reference.run_dir, widths=_START)
    with pytest.raises(RunError, match="prune.units_per_step: was 2, now 3"):
        prune(arch, digits, PruneConfig(**{**_RUN, "units_per_step": 3}), reference.run_dir, widths=_START,
              resume=True)
    # Resuming a finished run changes nothing and returns its trajectory.
    again = prune(arch, digits, PruneConfig(**_RUN), reference.run_dir, widths=_START, resume=True)
    assert again.rows == reference.rows and again.done


# ----------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------

# 32 units, 2 removed per minibatch, skipping widths at 1: 14 steps until every width is 1.
_CLI_RUN = ["digits_cnn", "--data", "digits", "--warmup", "0", "--every", "1", "--units", "2", "--batch-size",
            "256", "--widths", "c1=8,c2=8,c3=8,c4=8", "--skip-at-min-width", "--no-augment", "--device", "cpu",
            "--quiet"]


def test_cli_prune_plot_and_fit(tmp_path, capsys):
    from pyns.scaling.profile import Profile

    out = tmp_path / "run"
    assert main(["prune", *_CLI_RUN, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"trajectory: {out / TRAJECTORY_FILE}" in printed
    assert "every width is at min_width" in printed
    rows = read_jsonl(out / TRAJECTORY_FILE)
    assert len(rows) == 14 and rows[-1]["widths"] == {"c1": 1, "c2": 1, "c3": 1, "c4": 1}
    recorded = [row for row in rows if row["recording"]]
    assert f"profile: {out / 'profile.json'}" in printed
    profile = Profile.load(out / "profile.json")
    assert set(profile.fits) == {"c1", "c2", "c3", "c4"} and profile.points == len(recorded) >= 6
    assert profile.tau_range == (min(r["params"] for r in recorded), max(r["params"] for r in recorded))
    (out / "profile.json").unlink()
    assert main(["fit", str(out)]) == 0
    assert f"profile: {out / 'profile.json'}" in capsys.readouterr().out
    assert Profile.load(out / "profile.json").fits == profile.fits

    assert main(["plot", str(out)]) == 0
    assert f"figure: {out / 'figure2.png'}" in capsys.readouterr().out
    assert (out / "figure2.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Resuming with nothing stated takes the saved settings; stating a different one is refused.
    assert main(["prune", "digits_cnn", "--data", "digits", "--out", str(out), "--resume", "--no-fit",
                 "--quiet"]) == 0
    capsys.readouterr()
    assert main(["prune", "digits_cnn", "--data", "digits", "--out", str(out), "--resume", "--units", "5",
                 "--quiet"]) == 2
    assert "prune.units_per_step: was 2, now 5" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--data", "mnist"], "unknown data set 'mnist'"),
    (["--set", "classes=5"], "5 outputs but the data set has 10 classes"),
    (["--every", "0"], "prune_every must be >= 1"),
])
def test_cli_errors(tmp_path, capsys, extra, message):
    argv = ["prune", "digits_cnn", "--data", "digits", "--out", str(tmp_path / "run"), "--quiet"]
    argv = argv[:2] + [a for a in argv[2:4] if "--data" not in extra] + argv[4:] + extra
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("pyns: error:") and message in err


def test_cli_refuses_a_non_empty_folder(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["prune", "digits_cnn", "--data", "digits", "--out", str(out), "--quiet"]) == 2
    assert "not empty: pass --resume to continue the run in it, or choose another folder" in capsys.readouterr().err
    assert main(["plot", str(out)]) == 2
    assert "holds no run pyns can plot" in capsys.readouterr().err
    assert main(["fit", str(out)]) == 2
    assert "is not a pyns pruning run" in capsys.readouterr().err


def test_per_group_minimum_widths_block_their_own_group_only():
    """A symbol's declared `[min = N]` floors its group; other groups still prune down to 1."""
    importances = [torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.05, 0.4])]
    selection = select_units(importances, 4, [2, 1])
    assert selection.removed == {0: [0], 1: [0]} and selection.blocked  # group 0 stops at 2 units
    assert select_units(importances, 4, 1).removed == {0: [0, 1], 1: [0]}


# ----------------------------------------------------------------------------------------------------
# Issue 11: recording, pinned shortcuts, derived widths in a run; checkpoints
# ----------------------------------------------------------------------------------------------------


def test_a_width_at_its_floor_from_the_start_does_not_hold_recording_back(tmp_path, digits):
    """c2 starts at its declared minimum: it can never lose a unit, so recording starts once the other
    widths have each lost one (it used to wait for c2 forever, and the run recorded nothing), and its
    units are not ranked at all (a blocked unit would otherwise stop the run at once)."""
    from pyns.arch import loads
    from pyns.resources import archs_dir

    text = (archs_dir() / "digits_cnn.arch").read_text().replace("c2 = 32", "c2 = 32 [min = 4]")
    arch = loads(text)
    config = PruneConfig(warmup_epochs=0, batch_size=128, prune_every=2, units_per_step=2, augment=False,
                         stop_fraction=0.6, seed=1)
    result = prune(arch, digits, config, tmp_path / "run", widths={"c1": 6, "c2": 4, "c3": 6, "c4": 6})
    assert all(row["widths"]["c2"] == 4 for row in result.rows)
    assert result.recorded
    for row in result.rows:
        w = row["widths"]
        assert row["recording"] == all(w[s] < 6 for s in ("c1", "c3", "c4"))  # widths only shrink


def test_a_run_that_records_nothing_is_an_error_that_says_why(tmp_path, digits, arch, monkeypatch):
    monkeypatch.setattr(Pruner, "_importance", _scripted_importance)
    # 3 of the 24 filters: step 1 takes two c1 units (4 filters) and ends the run before c2..c4 lost any.
    config = PruneConfig(warmup_epochs=0, batch_size=128, prune_every=1, units_per_step=2, augment=False,
                         stop_fraction=0.1)
    with pytest.raises(RunError, match=r"stopped \(stop_fraction reached\) after 1 prune step\(s\) without "
                                       r"recording a row.*c2, c3, c4 never lost one"):
        prune(arch, digits, config, tmp_path / "run", widths={"c1": 4, "c2": 4, "c3": 4, "c4": 4})
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["recorded_rows"] == 0


def test_a_projection_stays_when_widths_become_equal_mid_run(tmp_path, monkeypatch):
    """ResNet18 started with stem 8 != b1b 4: block 1 projects. Pruning the stem down to 4 and below
    keeps the projection (the masked reference's architecture): the stem stays its own class, b1b and
    b2b lose nothing, τ is the trained module's parameter count and the unit count stays true."""
    arch = load("resnet18")

    def stem_lowest(self, index):
        width = len(self.state.kept[self.net.classes[index][0]])
        low = "stem" in self.net.classes[index]
        return (0.0 if low else 100.0 + index) + 0.1 * torch.arange(width, dtype=torch.float64)

    monkeypatch.setattr(Pruner, "_importance", stem_lowest)
    data = load_dataset("synthetic", split="train", num_samples=64, num_classes=10, seed=1)
    start = {**arch.uniform_widths(1 / 16), "stem": 8}
    seen = []

    def check(state, model):
        has_projection = any("shortcut" in name for name, _ in model.named_modules() if name.startswith("layers.2."))
        seen.append((has_projection, sum(p.numel() for p in model.parameters())))

    config = PruneConfig(warmup_epochs=0, max_epochs=2, batch_size=32, prune_every=1, units_per_step=2,
                         stop_at_min_width=False, augment=False)
    result = prune(arch, data, config, tmp_path / "run", widths=start, callback=check)
    assert [row["widths"]["stem"] for row in result.rows] == [6, 4, 2, 1]
    assert all(row["widths"]["b1b"] == row["widths"]["b2b"] == 4 for row in result.rows)
    assert all(has for has, _ in seen)
    assert [row["params"] for row in result.rows] == [n for _, n in seen]
    # At stem = 4 the unpinned network would add the identity instead: fewer parameters than trained.
    assert arch.count(result.rows[1]["widths"]).params < result.rows[1]["params"]
    # Units: stem 8 + {b1b, b2b} 4 + b1a 4 + b2a 4 + 3 x 8 + 3 x 16 + 3 x 32 = 188 at the start, two fewer
    # per step (step 4 takes the stem's last-but-one unit and the next lowest elsewhere). Had the stem
    # merged with b1b and b2b, the stem's units would have counted once for all three.
    assert [row["prunable_units"] for row in result.rows] == [186, 184, 182, 180]


def test_checkpoints_follow_the_time_interval(tmp_path, digits, arch, monkeypatch, reference_run):
    reference, _ = reference_run
    saved = []
    original = Pruner.checkpoint

    def counting(self):
        saved.append(self.state.minibatches)
        original(self)

    monkeypatch.setattr(Pruner, "checkpoint", counting)
    prune(arch, digits, PruneConfig(**{**_RUN, "checkpoint_interval_s": 3600}), tmp_path / "slow", widths=_START)
    assert saved == [0, reference.rows[-1]["minibatch"]]  # only the start and the end
    saved.clear()
    prune(arch, digits, PruneConfig(**_RUN), tmp_path / "every", widths=_START)  # interval 0
    # The start, the warm-up's end, every prune step, the end.
    assert saved == [0, 12] + [row["minibatch"] for row in reference.rows]


def test_ctrl_c_checkpoints_mid_interval_and_resume_is_exact(tmp_path, digits, arch, reference_run):
    """A Ctrl-C two minibatches after a prune step: the loop finishes the minibatch, checkpoints (with the
    half-collected importance sums) and stops; the resumed run's trajectory is the uninterrupted one."""
    import os
    import signal

    reference, _ = reference_run
    out = tmp_path / "run"
    config = PruneConfig(**{**_RUN, "checkpoint_interval_s": 3600})

    def interrupt(state, model):
        if state.minibatches == 22:
            os.kill(os.getpid(), signal.SIGINT)

    # The handler the run must put back: Python's default, or SIG_IGN where the test process was started
    # in the background by a non-interactive shell (which ignores SIGINT for it).
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        prune(arch, digits, config, out, widths=_START, callback=interrupt)
    saved = torch.load(out / CHECKPOINT_FILE, weights_only=True)
    assert saved["state"]["minibatches"] == 22 and saved["state"]["since_prune"] == 2
    assert saved["collector"]["batches"] == 2
    assert signal.getsignal(signal.SIGINT) is before
    resumed = prune(arch, digits, config, out, widths=_START, resume=True)
    assert _rows_without_time(resumed.rows) == _rows_without_time(reference.rows)


def test_masked_run_with_derived_widths_removes_the_same_channels(tmp_path):
    """digits_effnet's expansions and SE widths follow the block widths: in both modes they keep their
    own most important channels, and the masked run masks exactly what the shrinking run removes."""
    arch = load("digits_effnet")
    data = load_dataset("digits", split="train", resolution=16, channels=1)
    config = PruneConfig(warmup_epochs=0, max_epochs=1, batch_size=128, prune_every=3, units_per_step=12,
                         stop_at_min_width=False, augment=False, seed=2)
    kept = {}

    def record(mode):
        def callback(state, model):
            if state.since_prune == 0:
                kept.setdefault(mode, []).append({k: list(v) for k, v in state.kept.items()})
        return callback

    shrunk = prune(arch, data, config, tmp_path / "shrink", callback=record("shrink"))
    masked = prune(arch, data, config, tmp_path / "masked", mode="masked", callback=record("masked"))
    assert len(shrunk.rows) == len(masked.rows) >= 3
    assert [r["widths"] for r in masked.rows] == [r["widths"] for r in shrunk.rows]
    assert kept["masked"] == kept["shrink"]
    from pyns.channels import channel_map

    cmap = channel_map(arch.network, arch.defaults)
    shrunk_derived = [k for k, v in kept["shrink"][-1].items()
                      if cmap.spaces[k].symbol is None and len(v) < cmap.width(k, arch.defaults)]
    assert shrunk_derived  # some expansion / SE width followed its block width down ...
    # ... and kept its own most important channels, not simply the first ones.
    assert any(kept["shrink"][-1][k] != list(range(len(kept["shrink"][-1][k]))) for k in shrunk_derived)
    for a, b in zip(masked.rows, shrunk.rows):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
