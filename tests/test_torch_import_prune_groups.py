"""Per-group widths of grouped convs (ResNeXt / RegNet `conv(32 * s, 3, groups = 32)`) are pruned: one
unit of `s` removes one channel from every group (the group count is fixed), each group its own least
important channel; the masked network masks exactly what the shrunk one removes."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import pyns
from pyns.channels import channel_map
from pyns.neuralscale.baselines import li_keep_sets
from pyns.neuralscale.prune.importance import gates_by_symbol
from pyns.neuralscale.prune.keep import normalize_keep, top_positions
from pyns.neuralscale.prune.shrink import mask_network, shrink_network
from pyns.neuralscale.prune.structure import PrunedNetwork
from torch_models import model as make_model
from shrink_checks import randomise_bn

# 4 groups of g = 3 channels after a 1x1 conv, a grouped 3x3 conv with 4 groups of h = 2 output channels.
GROUPED = """network grouped(classes = 5, resolution = 8, in_channels = 3)
width c = 4
width g = 3
width h = 2
body {
    conv(c, 3)
    bn
    relu
    conv(4 * g, 1)
    bn
    relu
    conv(4 * h, 3, groups = 4)
    bn
    relu
    gap
    flatten
    linear(classes)
}
"""


def test_per_group_width_is_a_blocked_symbol_space_with_gates():
    arch = pyns.loads(GROUPED)
    cmap = channel_map(arch.network, arch.defaults)
    assert cmap.spaces["g"].symbol == "g" and cmap.spaces["g"].blocks == 4
    assert cmap.spaces["h"].blocks == 4
    gates = gates_by_symbol(arch.build(gates=True))
    assert {s: [gate.num_channels for gate in v] for s, v in gates.items()} == {"c": [4], "g": [12], "h": [8]}
    net = PrunedNetwork(arch, arch.defaults)
    assert net.units(arch.defaults) == 4 + 3 + 2  # a unit of g is one channel of every group
    assert net.filters(arch.defaults) == 4 + 12 + 8


def test_one_unit_drops_each_groups_own_least_important_channel():
    """Hand-computed: per group of 3 channels of g, the smallest importance goes."""
    arch = pyns.loads(GROUPED)
    net = PrunedNetwork(arch, arch.defaults)
    k = next(i for i, c in enumerate(net.classes) if c == ("g",))
    importance = torch.tensor([5., 1., 3.,  0., 9., 8.,  7., 6., 2.,  4., 4.5, 0.5], dtype=torch.float64)
    # sorted per group: [1,3,5] [0,8,9] [2,6,7] [0.5,4,4.5] -> unit scores (3.5, 21, 25.5) / 4 groups
    torch.testing.assert_close(net.unit_scores(k, importance),
                               torch.tensor([0.875, 5.25, 6.375], dtype=torch.float64))
    assert net.survivors(k, importance, [0]) == [0, 2, 4, 5, 6, 7, 9, 10]  # drops 1, 3, 8, 11
    assert net.survivors(k, importance, [0, 1]) == [0, 4, 6, 10]
    assert top_positions(importance, 4, 4) == [0, 4, 6, 10]
    with pytest.raises(pyns.PynsError, match="equal groups"):
        top_positions(importance, 5, 4)


def test_grouped_shrink_keeps_each_filter_in_its_group_and_equals_masked():
    arch = pyns.loads(GROUPED)
    full = arch.build(gates=True).double()
    randomise_bn(full, torch.Generator().manual_seed(1))
    keep = {"g": [0, 2, 4, 5, 6, 7, 9, 10], "h": [1, 2, 4, 7]}  # 2 of 3 per group of g, 1 of 2 per group of h
    small, _, report = shrink_network(full, keep)
    assert report.exact, report
    assert small.widths["g"] == 2 and small.widths["h"] == 1
    grouped = [m for m in small.modules() if isinstance(m, nn.Conv2d) and m.groups == 4]
    old = [m for m in full.modules() if isinstance(m, nn.Conv2d) and m.groups == 4][0]
    assert grouped[0].weight.shape == (4, 2, 3, 3)
    # Kept filter 4 (group 2) reads group 2's surviving inputs 6, 7 -> local positions 0, 1 of that group;
    # kept filter 1 (group 0) reads 0, 2 -> local 0, 2.
    torch.testing.assert_close(grouped[0].weight[0], old.weight[1, [0, 2]])
    torch.testing.assert_close(grouped[0].weight[2], old.weight[4, [0, 1]])
    torch.testing.assert_close(grouped[0].weight[3], old.weight[7, [0, 1]])  # group 3: 9, 10 -> 0, 1
    assert sum(p.numel() for p in small.parameters()) == arch.count(small.widths).params
    mask_network(full, keep)
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    for train in (True, False):
        full.train(train)
        small.train(train)
        torch.testing.assert_close(small(x), full(x), rtol=1e-10, atol=1e-10)
    with pytest.raises(pyns.PynsError, match="same number of channels in every group"):
        normalize_keep(arch.build(gates=True), {"g": [0, 1, 3, 4, 6, 7, 9, 11][:7] + [8]})


def test_li_ranks_per_group_filters_by_l1():
    arch = pyns.loads(GROUPED)
    model = arch.build()
    with torch.no_grad():
        conv = [m for m in model.modules() if isinstance(m, nn.Conv2d)][1]  # the 1x1 making 4 * g
        conv.weight.copy_(torch.arange(12, dtype=torch.float32).flip(0).view(12, 1, 1, 1).expand_as(conv.weight))
    keep = li_keep_sets(model, {"c": 4, "g": 1, "h": 2})
    assert keep["g"] == [0, 3, 6, 9]  # norms fall with the index: each group keeps its first filter


def test_resnext_prunes_per_group_widths_and_shrunk_equals_masked(tmp_path, one_thread):
    """A prune run on ResNeXt50 removes units of the per-group widths; with the run's keep sets the
    shrunk network computes what the masked one does (float64, train and eval)."""
    from pyns.data import load_dataset
    from pyns.neuralscale.prune.run import prune
    from pyns.neuralscale.prune.schedule import PruneConfig

    arch = pyns.from_torch(make_model("torchvision:resnext50_32x4d"), (3, 32, 32))
    start = arch.uniform_widths(0.25)
    cmap = channel_map(arch.network, arch.defaults)
    per_group = [s for s in arch.searchable if s in cmap.spaces and cmap.spaces[s].blocks == 32]
    assert len(per_group) == 2 * 4  # per stage (folded into one repeat): the 1x1 and the grouped 3x3 widths
    start.update({s: 2 for s in per_group})  # two channels per group: one unit can go
    data = load_dataset("synthetic", split="train", num_samples=16, num_classes=10, seed=1, resolution=32)
    last, net = {}, PrunedNetwork(arch, start)
    # A third of the units per step: enough for the ranking to reach the per-group units, whose
    # per-filter mean importance competes with the single channels of the other widths.
    config = PruneConfig(warmup_epochs=0, max_epochs=1, batch_size=8, prune_every=1,
                         units_per_step=net.units(start) // 3,
                         stop_at_min_width=False, augment=False)
    result = prune(arch, data, config, tmp_path / "run", widths=start,
                   callback=lambda state, model: last.update(state=state, model=model))
    widths = result.widths
    assert any(widths[s] < start[s] for s in per_group), "no per-group width was pruned"
    model = last["model"]
    assert sum(p.numel() for p in model.parameters()) == result.params
    assert all(m.groups == 32 for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1)
    full = net.build(start).double()
    randomise_bn(full, torch.Generator().manual_seed(2))
    kept = last["state"].kept
    keep = {s: v for s, v in kept.items() if len(v) < net.width(s, start)}
    small, _, report = shrink_network(full, keep)
    assert report.exact, report
    mask_network(full, keep)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    for train in (True, False):
        full.train(train)
        small.train(train)
        torch.testing.assert_close(small(x), full(x), rtol=1e-9, atol=1e-9)


def test_masked_run_prunes_the_same_per_group_channels_as_the_shrinking_run(tmp_path):
    """Algorithm 1 on the grouped net in both modes: the same widths and kept channels at every step, and
    the same losses (the masked network computes what the shrunk one does, SGD steps included)."""
    from pyns.data import load_dataset
    from pyns.neuralscale.prune.run import prune
    from pyns.neuralscale.prune.schedule import PruneConfig

    arch = pyns.loads(GROUPED.replace("width g = 3", "width g = 5").replace("width h = 2", "width h = 4"))
    data = load_dataset("synthetic", split="train", num_samples=32, num_classes=5, seed=3, resolution=8)
    config = PruneConfig(warmup_epochs=0, max_epochs=3, batch_size=8, prune_every=2, units_per_step=2,
                         stop_at_min_width=False, augment=False)
    kept = {"shrink": [], "masked": []}
    runs = {}
    for mode in kept:
        runs[mode] = prune(arch, data, config, tmp_path / mode, mode=mode,
                           callback=lambda state, model, mode=mode: kept[mode].append(
                               {k: list(v) for k, v in state.kept.items()}))
    shrink, masked = runs["shrink"], runs["masked"]
    assert [r["widths"] for r in masked.rows] == [r["widths"] for r in shrink.rows]
    assert any(r["widths"]["g"] < 5 or r["widths"]["h"] < 4 for r in shrink.rows)
    assert kept["masked"] == kept["shrink"]
    for a, b in zip(masked.rows, shrink.rows):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    # every kept set of a per-group width holds the same number of channels in each of the 4 groups
    last = kept["shrink"][-1]
    for space, width in (("g", 5), ("h", 4)):
        assert len(set(torch.bincount(torch.tensor(last[space]) // width, minlength=4).tolist())) == 1


def test_per_group_width_at_its_floor_from_the_start_does_not_block_recording(tmp_path):
    """h = 1 channel per group (8 channels, 1 unit) is at its floor from the start: exempt from the
    "every width lost a unit" recording rule, counted in units, not channels."""
    from pyns.data import load_dataset
    from pyns.neuralscale.prune.run import prune
    from pyns.neuralscale.prune.schedule import PruneConfig

    arch = pyns.loads(GROUPED.replace("width h = 2", "width h = 1"))
    data = load_dataset("synthetic", split="train", num_samples=16, num_classes=5, seed=3, resolution=8)
    config = PruneConfig(warmup_epochs=0, max_epochs=4, batch_size=8, prune_every=1, units_per_step=1,
                         stop_at_min_width=False, augment=False)
    result = prune(arch, data, config, tmp_path / "run")
    assert all(r["widths"]["h"] == 1 for r in result.rows)
    assert any(r["recording"] for r in result.rows)
