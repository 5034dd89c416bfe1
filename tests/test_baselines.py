"""Baselines: uniform meets the budget, MorphNet takes the 50%-of-filters point, Li keeps the largest-L1 filters."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import pyns.arch as pa
from pyns.neuralscale.baselines import (
    l1_filter_norms,
    li_finetune_recipe,
    li_keep_sets,
    li_prune,
    morphnet_baseline,
    morphnet_point,
    read_trajectory_source,
    uniform_baseline,
)
from pyns.errors import BudgetError, RunError
from pyns.scaling.solve import solve_budget
from pyns.train.recipe import TrainRecipe

# Two widths `a` and `b` joined by an identity add (a == b, stride 1), so they form one tied group;
# `m` is free. Small enough to set every weight by hand.
TIED_ARCH = """
network tied(classes = 3, resolution = 6, in_channels = 1)
width a = 6, b = 6, m = 4
body {
    conv(a, 3)
    bn
    relu
    residual(shortcut = conv_bn) {
        conv(m, 3)
        bn
        relu
        conv(b, 3)
        bn
    }
    relu
    gap
    flatten
    linear(classes)
}
"""


@pytest.fixture(scope="module")
def digits():
    return pa.load("digits_cnn")


# ---- uniform ---------------------------------------------------------------------------------------


def _brute_force_uniform(arch, budget: int) -> int:
    """The largest params of int(default * m) over a fine grid of multipliers m, within the budget."""
    best = 0
    defaults = arch.defaults
    for m in np.arange(0.01, 3.0, 0.0005):
        widths = {s: max(1, int(defaults[s] * m)) for s in arch.searchable}
        params = arch.count(widths).params
        if params <= budget:
            best = max(best, params)
    return best


@pytest.mark.parametrize("budget", [2_500, 9_000, 29_434, 40_000])
def test_uniform_meets_the_budget_with_the_largest_multiplier(digits, budget):
    result = uniform_baseline(digits, params=budget)
    assert result.params <= budget
    assert result.params == digits.count(result.widths).params
    assert result.params == _brute_force_uniform(digits, budget)


def test_uniform_at_a_ratio_budget_is_that_ratio(digits):
    for ratio in (0.25, 0.5, 2.0):
        budget = digits.count(digits.uniform_widths(ratio)).params
        assert uniform_baseline(digits, params=budget).widths == digits.uniform_widths(ratio)


# ---- MorphNet ----------------------------------------------------------------------------------------

# Filters of digits_cnn: c1 and c4 are produced by two layers each (the stem and block 1's second conv;
# block 2's conv and its projection), so a configuration has 2 c1 + c2 + c3 + 2 c4 filters: 192 at the
# defaults, half of it 96.
_ROWS = [
    {"step": 1, "epoch": 10, "params": 0, "macs": 0, "widths": {"c1": 14, "c2": 28, "c3": 30, "c4": 40}},  # 166
    {"step": 2, "epoch": 10, "params": 0, "macs": 0, "widths": {"c1": 12, "c2": 20, "c3": 26, "c4": 30}},  # 130
    {"step": 3, "epoch": 11, "params": 0, "macs": 0, "widths": {"c1": 10, "c2": 14, "c3": 20, "c4": 22}},  # 98
    {"step": 4, "epoch": 11, "params": 0, "macs": 0, "widths": {"c1": 9, "c2": 10, "c3": 18, "c4": 19}},  # 84
    {"step": 5, "epoch": 12, "params": 0, "macs": 0, "widths": {"c1": 8, "c2": 6, "c3": 12, "c4": 10}},  # 54
]


def test_morphnet_takes_the_first_row_at_or_below_half_the_filters(digits):
    point = morphnet_point(digits, _ROWS)
    # 98 > 96 = half of 192; 84 is the first row at or below it (not the closest one, 98). Counting one
    # unit per channel instead (128 at the start: 112, 88, ...) would have picked step 2.
    assert point.step == 4
    assert point.filters == 84 and point.total_filters == 192
    assert point.widths == {"c1": 9, "c2": 10, "c3": 18, "c4": 19}


def test_morphnet_uses_the_rows_filter_counts_and_start_widths(digits):
    rows = [dict(r, filters=u) for r, u in zip(_ROWS, (180, 150, 96, 50, 30))]
    assert morphnet_point(digits, rows).step == 3  # the pruner's own count says 96 = exactly half
    # Old rows carry `units` (channels of tied groups), not filters: ignored, the widths decide.
    assert morphnet_point(digits, [dict(r, units=1) for r in _ROWS]).step == 4
    start = {"c1": 12, "c2": 24, "c3": 24, "c4": 36}  # 144 filters: half is 72
    assert morphnet_point(digits, _ROWS, start_widths=start).step == 5


def test_morphnet_scales_that_configuration_uniformly_to_the_budget(digits, tmp_path):
    budget = 12_000
    result, point = morphnet_baseline(digits, _ROWS, params=budget)
    assert result.params <= budget
    # Uniform scaling of the 50% configuration (the family solution, before the fill uses what its step
    # leaves): one multiplier m with width = int(c * m) for every width.
    lows = [result.family.widths[s] / point.widths[s] for s in digits.searchable]
    highs = [(result.family.widths[s] + 1) / point.widths[s] for s in digits.searchable]
    assert max(lows) < min(highs)
    expected = solve_budget(digits, params=budget, method="from-config", config=point.widths)
    assert result.widths == expected.widths
    # The same from a descent-like folder: iter-00/trajectory.jsonl plus the prune run's config.json.
    folder = tmp_path / "descent" / "iter-00"
    folder.mkdir(parents=True)
    (folder / "trajectory.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _ROWS))
    (folder / "config.json").write_text(json.dumps({"start_widths": digits.defaults}))
    rows, start = read_trajectory_source(tmp_path / "descent")
    assert start == digits.defaults and [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    from_file, _ = morphnet_baseline(digits, tmp_path / "descent", params=budget)
    assert from_file.widths == result.widths


def test_morphnet_refuses_a_trajectory_that_stops_early(digits):
    with pytest.raises(RunError, match="never reaches 50%"):
        morphnet_point(digits, _ROWS[:3])


# ---- Li et al. ---------------------------------------------------------------------------------------


def _fill_filters(conv: torch.nn.Module, per_filter: list[float]) -> None:
    """Every weight of output filter j becomes per_filter[j]: its L1 norm is that times the filter size."""
    with torch.no_grad():
        for j, value in enumerate(per_filter):
            conv.weight[j].fill_(value)


def test_li_ranks_tied_widths_by_their_summed_l1_norms_and_keeps_the_largest():
    arch = pa.loads(TIED_ARCH)
    torch.manual_seed(0)
    model = arch.build()
    conv_a, conv_m, conv_b = model.layers[0], model.layers[4].body[0], model.layers[4].body[4]
    # Filter sizes: conv_a 1*3*3 = 9, conv_b 4*3*3 = 36, conv_m 6*3*3 = 54.
    a_values = [0.9, 0.1, 0.5, 0.3, 0.8, 0.2]   # L1: 8.1 0.9 4.5 2.7 7.2 1.8
    b_values = [-0.01, 0.2, 0.05, 0.11, -0.02, 0.03]  # L1: 0.36 7.2 1.8 3.96 0.72 1.08
    m_values = [0.4, -0.1, 0.3, 0.2]  # L1: 21.6 5.4 16.2 10.8
    _fill_filters(conv_a, a_values)
    _fill_filters(conv_b, b_values)
    _fill_filters(conv_m, m_values)
    summed = [9 * abs(x) + 36 * abs(y) for x, y in zip(a_values, b_values)]  # 8.46 8.1 6.3 6.66 7.92 2.88
    norms = l1_filter_norms(model)
    assert torch.allclose(norms["a"], torch.tensor([9 * abs(v) for v in a_values]), rtol=1e-6)
    assert torch.allclose(norms["b"], torch.tensor([36 * abs(v) for v in b_values]), rtol=1e-6)
    assert torch.allclose(norms["m"], torch.tensor([54 * abs(v) for v in m_values]), rtol=1e-6)

    keep = li_keep_sets(model, {"a": 3, "b": 3, "m": 2})
    # Remove the 3 smallest summed norms of the tied pair: independently of how the library sorts.
    lowest = sorted(range(6), key=lambda j: summed[j])[:3]
    expected = sorted(set(range(6)) - set(lowest))
    assert keep["a"] == keep["b"] == expected
    # Neither width alone would choose these: the tie is what decides.
    assert expected != sorted(sorted(range(6), key=lambda j: -a_values[j])[:3])
    assert expected != sorted(sorted(range(6), key=lambda j: -abs(b_values[j]))[:3])
    assert keep["m"] == [0, 2]


def test_li_refuses_unequal_targets_for_tied_widths():
    arch = pa.loads(TIED_ARCH)
    model = arch.build()
    with pytest.raises(BudgetError, match="identity add"):
        li_keep_sets(model, {"a": 3, "b": 4, "m": 2})


def test_li_prune_meets_the_budget_and_keeps_the_chosen_filters_weights(digits):
    torch.manual_seed(1)
    model = digits.build()
    budget = 9_000
    result = li_prune(model, digits, params=budget)
    params = sum(p.numel() for p in result.model.parameters())
    assert params == digits.count(result.widths).params <= budget
    # The number kept per width: the trained configuration scaled uniformly (from-config) to the budget.
    assert result.widths == solve_budget(digits, params=budget, method="from-config",
                                         config=digits.defaults).widths
    # Which filters: the largest L1 norms, by an independent computation on the stem conv (c1's
    # producers: the stem 1->16 conv and the first block's 32->16 conv, told apart by their shapes).
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    c1_producers = [c for c in convs if c.out_channels == 16]
    assert len(c1_producers) == 2
    summed = sum(c.weight.detach().abs().sum(dim=(1, 2, 3)) for c in c1_producers)
    k = result.widths["c1"]
    expected = sorted(torch.argsort(summed, descending=True)[:k].tolist())
    assert result.keep["c1"] == expected
    stem_before = next(c for c in c1_producers if c.in_channels == 1)
    stem_after = next(m for m in result.model.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels == 1)
    assert torch.equal(stem_after.weight, stem_before.weight[expected])
    # The trained model is left as it was.
    assert sum(p.numel() for p in model.parameters()) == digits.count().params


def test_li_ranks_a_derived_width_by_its_own_l1_norms():
    """MobileNetV2: when a block output loses filters, the next block's expansion `6 * in` loses 6 per
    filter, and keeps the expansion filters with the largest L1 norms (its 1x1 conv plus its depthwise
    conv), not the first ones."""
    arch = pa.load("mobilenetv2")
    torch.manual_seed(3)
    model = arch.build(arch.uniform_widths(1 / 4))
    budget = arch.count(arch.uniform_widths(1 / 4)).params * 6 // 10
    result = li_prune(model, arch, params=budget)
    assert sum(p.numel() for p in result.model.parameters()) == arch.count(result.widths).params <= budget
    keep = li_keep_sets(model, result.widths)
    space = "inverted3.conv1"  # block 3 expands 6 x s2a
    assert len(keep[space]) == 6 * result.widths["s2a"] < 6 * model.widths["s2a"]
    expand, depthwise = [m for m in model.modules() if getattr(m, "pyns_layer", None) is not None
                         and m.pyns_layer.name in ("inverted3.conv1", "inverted3.conv2")]
    norms = expand.weight.detach().abs().sum(dim=(1, 2, 3)) + depthwise.weight.detach().abs().sum(dim=(1, 2, 3))
    expected = sorted(torch.argsort(norms, descending=True)[:len(keep[space])].tolist())
    assert keep[space] == expected and expected != list(range(len(expected)))
    after = next(m for m in result.model.modules()
                 if getattr(m, "pyns_layer", None) is not None and m.pyns_layer.name == "inverted3.conv1")
    assert torch.equal(after.weight, expand.weight.detach()[expected][:, keep["s2a"]])


def test_li_refuses_a_budget_at_or_above_the_trained_network(digits):
    model = digits.build()
    with pytest.raises(BudgetError, match="cannot make it larger"):
        li_prune(model, digits, params=digits.count().params * 2)


def test_li_finetune_recipe_is_the_papers():
    base = TrainRecipe(momentum=0.5, weight_decay=5e-4, batch_size=128)
    cifar = li_finetune_recipe(base, "cifar10")
    assert (cifar.epochs, cifar.lr, cifar.milestones) == (40, 0.001, ())
    assert (cifar.momentum, cifar.weight_decay, cifar.batch_size) == (0.5, 5e-4, 128)
    assert li_finetune_recipe(base, "tinyimagenet").epochs == 20
    assert li_finetune_recipe(base, "cifar10", epochs=3, lr=0.01).epochs == 3
    assert math.isclose(cifar.lr_at(39), 0.001)
