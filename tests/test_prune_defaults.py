"""Pruning defaults that work at every network size (issue 16): units per step and Q derived from the
network and the data set, a run that cannot record enough points warned before it trains, floors that keep
derived layers buildable, and default runs on digits that give fitted (not fallback) profiles."""
from __future__ import annotations

import json
import math
import warnings

import pytest

import pyns
from pyns.arch import load, loads
from pyns.cli.main import main
from pyns.data.datasets import load_dataset
from pyns.errors import PynsError
from pyns.neuralscale.descent import DescentConfig, descent
from pyns.neuralscale.profile import MIN_POINTS, fit_power_law
from pyns.neuralscale.prune import PruneConfig, prune
from pyns.neuralscale.prune.defaults import ScheduleWarning, plan_schedule, prunable_units
from pyns.neuralscale.prune.floors import unit_floors
from pyns.scaling.profile import ScalingWarning

pytestmark = pytest.mark.usefixtures("one_thread")

DIGITS_TRAIN = 1438  # scikit-learn's 1,797 digits minus the 20% test split
CIFAR_TRAIN = 50_000


@pytest.fixture(scope="module")
def digits8():
    return load_dataset("digits", split="train", resolution=8, channels=1)


# ---- the derived values -------------------------------------------------------------------------------


@pytest.mark.parametrize("name, samples, units, every", [
    ("digits_cnn", DIGITS_TRAIN, 1, 6),  # 128 units: 1% is 1.28; 1,438 / 256 -> 6 minibatches per epoch
    ("digits_effnet", DIGITS_TRAIN, 1, 6),  # 112 units
    ("vgg11", CIFAR_TRAIN, 10, 50),  # 2,752 units: the paper's own setting, unchanged
    ("resnet18", CIFAR_TRAIN, 10, 50),  # 2,880 units
    ("mobilenetv2", CIFAR_TRAIN, 10, 50),  # 2,024 units
])
def test_defaults_follow_the_network_and_the_data(name, samples, units, every):
    arch = load(name)
    plan = plan_schedule(arch, PruneConfig(), arch.defaults, samples)
    groups, total = prunable_units(arch, arch.defaults)
    assert plan.total_units == total
    assert plan.config.units_per_step == units == min(10, max(1, math.floor(total / 100)))
    assert plan.config.prune_every == every == min(50, math.ceil(samples / 256))
    assert set(plan.derived) == {"units_per_step", "prune_every"}
    # ~95 steps or more to the 95% stop, so >= 30 can be recorded even when recording starts half-way
    assert plan.max_steps >= 95 and plan.max_points >= 2 * 30 and not plan.warnings


def test_vgg11_units_are_the_papers_2752():
    arch = load("vgg11")
    assert prunable_units(arch, arch.defaults)[1] == 64 + 128 + 256 * 2 + 512 * 4


def test_an_imported_network_is_treated_by_its_structure_not_its_name():
    """The same layers under another name get the same settings; a 500-unit network gets 5 per step."""
    vgg = load("vgg11")
    renamed = loads(vgg.source.text.replace("network vgg11", "network my_import"), filename="imported.arch")
    assert renamed.name != vgg.name
    a = plan_schedule(vgg, PruneConfig(), vgg.defaults, CIFAR_TRAIN)
    b = plan_schedule(renamed, PruneConfig(), renamed.defaults, CIFAR_TRAIN)
    assert (a.config, a.total_units) == (b.config, b.total_units)
    mid = loads("network mid(classes = 10, resolution = 8, in_channels = 1)\n"
                "width a = 200, b = 300\n"
                "body {\n conv(a, 3)\n bn\n relu\n conv(b, 3)\n bn\n relu\n gap\n flatten\n linear(classes)\n}\n")
    plan = plan_schedule(mid, PruneConfig(), mid.defaults, DIGITS_TRAIN)
    assert plan.total_units == 500 and plan.config.units_per_step == 5


def test_explicit_settings_are_kept():
    arch = load("digits_cnn")
    plan = plan_schedule(arch, PruneConfig(units_per_step=3, prune_every=4), arch.defaults, DIGITS_TRAIN)
    assert (plan.config.units_per_step, plan.config.prune_every, plan.derived) == (3, 4, {})
    # 122 units to the 95% stop at 3 per step; recording needs every one of the 4 groups to lose one first
    assert plan.max_steps == math.ceil(122 / 3) and plan.max_points == plan.max_steps - 2 + 1


def test_bad_settings_are_still_refused():
    with pytest.raises(PynsError, match="units_per_step must be >= 1"):
        PruneConfig(units_per_step=0)
    with pytest.raises(PynsError, match="prune_every must be >= 1"):
        PruneConfig(prune_every=0)


# ---- warned before it starts --------------------------------------------------------------------------


def test_the_papers_settings_on_digits_are_warned_about(digits8):
    """10 units every 50 minibatches on digits_cnn: 13 steps, 5 recorded in practice (issue 16)."""
    arch = load("digits_cnn")
    plan = plan_schedule(arch, PruneConfig(units_per_step=10, prune_every=50), arch.defaults, len(digits8))
    assert plan.max_steps == 13 and len(plan.warnings) == 1 and "may record fewer than the 6" in plan.warnings[0]
    certain = plan_schedule(arch, PruneConfig(units_per_step=30), arch.defaults, len(digits8))
    assert certain.max_points == 5 < MIN_POINTS and "will record at most 5" in certain.warnings[0]
    capped = plan_schedule(arch, PruneConfig(max_epochs=3), arch.defaults, len(digits8))
    assert capped.max_steps == 3 and capped.max_points == 0 and "--epochs" in capped.warnings[0]


def test_a_run_that_cannot_fit_warns_before_the_first_minibatch(tmp_path, digits8):
    arch = load("digits_cnn")
    seen: list[int] = []

    class Stop(Exception):
        pass

    def callback(state, model):
        seen.append(sum(issubclass(w.category, ScheduleWarning) for w in caught))
        raise Stop

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(Stop):
            prune(arch, digits8, PruneConfig(units_per_step=30, warmup_epochs=1), tmp_path / "run",
                  callback=callback)
    assert seen == [1]  # issued before the first training step
    assert issubclass(ScheduleWarning, ScalingWarning)


def test_cli_prints_the_effective_values_and_records_them(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["prune", "digits_cnn", "--data", "digits", "--out", str(out), "--warmup", "0", "--epochs", "0",
                 "--quiet", "--no-fit"]) == 0
    captured = capsys.readouterr()
    first = captured.out.splitlines()[0]
    assert first.startswith("schedule: 1 unit(s) per prune step (1% of the 128 prunable units")
    assert "Q = 6 minibatches of 256 per step (one epoch" in first
    assert "at most 0 prune steps" in captured.out
    assert "pyns: warning: this pruning run will record at most 0" in captured.err
    saved = json.loads((out / "config.json").read_text())
    assert (saved["prune"]["units_per_step"], saved["prune"]["prune_every"]) == (1, 6)
    assert set(saved["schedule"]["derived"]) == {"units_per_step", "prune_every"}
    # Resuming re-derives the same values (not a settings mismatch) and keeps saying where they came from.
    assert main(["prune", "digits_cnn", "--data", "digits", "--out", str(out), "--resume", "--epochs", "0",
                 "--quiet", "--no-fit"]) == 0
    assert set(json.loads((out / "config.json").read_text())["schedule"]["derived"]) == {"units_per_step",
                                                                                       "prune_every"}


# ---- floors -------------------------------------------------------------------------------------------


def test_floors_stop_where_a_derived_layer_would_reach_zero():
    """digits_effnet's squeeze-excite has round(0.25 * c) channels: 0 below c = 3 (round(0.5) = 0)."""
    arch = load("digits_effnet")
    groups, _ = prunable_units(arch, arch.defaults)
    floors = unit_floors(arch.network, groups, arch.defaults, [1] * len(groups))
    at_floor = dict(arch.defaults)
    for group, floor in zip(groups, floors):
        at_floor.update({s: floor for s in group})
    arch.build(at_floor)  # builds
    raised = [i for i, f in enumerate(floors) if f > 1]
    assert raised
    for i in raised:
        below = dict(at_floor, **{s: floors[i] - 1 for s in groups[i]})
        with pytest.raises(PynsError, match="every layer needs >= 1"):
            arch.build(below)
    plain = load("digits_cnn")
    g, _ = prunable_units(plain, plain.defaults)
    assert unit_floors(plain.network, g, plain.defaults, [1] * len(g)) == [1] * len(g)


# ---- end to end: default runs give fitted profiles ----------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ["digits_cnn", "digits_effnet"])
def test_default_prune_on_digits_gives_a_fitted_profile(tmp_path, name):
    """Every setting at its default. (With a 2-epoch warm-up digits_effnet records only 13 points: its
    squeeze-excite floors are reached early and the paper's stop rule ends the run; 10 epochs give 41.)"""
    arch = load(name)
    data = load_dataset("digits", split="train", resolution=arch.resolution, channels=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScalingWarning)  # no schedule warning, no fallback
        result = prune(arch, data, PruneConfig(), tmp_path / "run")
        profile = fit_power_law(result.rows, arch=arch)
    assert result.schedule.config.units_per_step == 1
    assert len(result.recorded) >= 30, (len(result.recorded), result.stop_reason)
    assert profile.fallback is None and profile.points == len(result.recorded)


@pytest.mark.slow
def test_readme_python_descent_example_gives_a_non_uniform_profile(tmp_path, monkeypatch):
    """The README's `descent(pyns.load("digits_cnn"), digits, DescentConfig(iterations=2), "runs/digits")`."""
    monkeypatch.chdir(tmp_path)
    digits = load_dataset("digits", split="train", resolution=8, channels=1)
    run = descent(pyns.load("digits_cnn"), digits, DescentConfig(iterations=2), "runs/digits")
    # Recording starts once every width has lost a unit (~half-way), so the target τ (the start network's)
    # lies above the fitted range and iteration 1's solve honestly warns that it extrapolates; nothing
    # else (no schedule warning, no fallback) may be reported.
    assert all("extrapolates the profile" in note for note in run.warnings), run.warnings
    assert run.profile.fallback is None and all(it.warnings == [] or it.iteration > 0 for it in run.iterations)
    betas = [fit.beta for fit in run.profile.fits.values()]
    # Uniform scaling is one β for every width; the widths here grow at clearly different rates.
    assert max(betas) - min(betas) > 0.1, betas
    assert run.iterations[1].start_widths != pyns.load("digits_cnn").defaults  # iteration 1 moved
