"""A few real prune steps on every model of the importer's coverage list (issue 9): the run shrinks the
network physically, the module it trains always has the params and MACs the cost engine counts (params =
sum(p.numel()), MACs = FlopCounterMode / 2 on the module itself), and where the shrink reports itself exact
the shrunk network computes what the masked one computes (float64, eval, keep sets from the real run).

Models are imported at the small resolutions of tests/test_torch_import.py (32 where the family allows it)
and pruned from a quarter of their widths, with a few minibatches of synthetic data: the run's ranking,
shrinking and bookkeeping are the real ones, only the training is short.
"""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import pyns
from pyns.data import load_dataset
from pyns.neuralscale.prune.run import prune
from pyns.neuralscale.prune.schedule import PruneConfig
from pyns.neuralscale.prune.shrink import ApproximateShrinkWarning, mask_network, shrink_network
from pyns.neuralscale.prune.structure import PrunedNetwork
from test_torch_import import MODELS
from torch_models import model as make_model
from shrink_checks import randomise_bn

# Where removing a channel is not the function of masking it, the shrink says so (ShrinkReport.approximate)
# and the run passes the report on; these are the only families where it may (README "Pruning an imported
# network"), and only at layers of the kind given (channel shuffles; LayerNorms over the channels).
APPROXIMATE = {
    "torchvision:shufflenet_v2_x0_5": "shuffle", "torchvision:shufflenet_v2_x1_0": "shuffle",
    "torchvision:convnext_tiny": "layernorm", "timm:convnext_atto": "layernorm", "timm:convnext_nano": "layernorm",
}
# Pruning starts from this fraction of every width: a quarter keeps each run to a second or two on one core.
RATIO = 0.25


def _macs(module: nn.Module, x: torch.Tensor) -> tuple[int, torch.Tensor]:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        y = module(x)
    return counter.get_total_flops() // 2, y


@pytest.mark.parametrize("spec,res", MODELS)
def test_prune_steps_shrink_every_imported_model(spec, res, tmp_path, one_thread):
    res = min(res, 32) if spec.split(":")[1].startswith(("vgg", "convnext")) else res
    arch = pyns.from_torch(make_model(spec), (3, res, res))
    start = arch.uniform_widths(RATIO)
    net = PrunedNetwork(arch, start)
    units = net.units(start)
    data = load_dataset("synthetic", split="train", num_samples=16, num_classes=10, seed=1, resolution=res)
    seen = []

    def check(state, model):
        params = sum(p.numel() for p in model.parameters())
        seen.append((state.step, params, net.count(state.widths)[0], dict(state.widths),
                     {k: list(v) for k, v in state.kept.items()}, model))

    # Two prune steps of ~3% of the units each (at least one unit): the ranking, the shrink and the
    # bookkeeping run twice, on a network that has already been shrunk once.
    config = PruneConfig(warmup_epochs=0, max_epochs=1, batch_size=8, prune_every=1,
                         units_per_step=max(1, units // 32), stop_at_min_width=False, augment=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = prune(arch, data, config, tmp_path / "run", widths=start, callback=check)
    assert result.steps == 2 and seen[-1][0] == 2
    assert all(params == counted for _, params, counted, *_ in seen), "the trained module is not the counted one"
    step, params, counted, widths, kept, model = seen[-1]
    assert any(widths[s] < start[s] for s in arch.searchable), "no width was pruned"
    assert params < net.count(start)[0]
    assert (params, result.params) == (counted, counted)

    x = torch.randn(2, 3, res, res)
    model.eval()
    macs, y = _macs(model, x[:1])
    assert macs == net.count(widths)[1] == result.macs
    assert y.dim() == 2 and y.shape[0] == 1 and torch.isfinite(y).all()

    # Masked == shrunk, with the keep sets the run chose (start indices of every changed channel space).
    full = net.build(start).double()
    randomise_bn(full, torch.Generator().manual_seed(0))
    keep = {space: index for space, index in kept.items() if len(index) < net.width(space, start)}
    small, _, report = shrink_network(full, keep)
    assert sum(p.numel() for p in small.parameters()) == net.count(widths)[0]
    mask_network(full, keep)
    full.eval()
    small.eval()
    approximate_rows = [row for row in result.rows if row.get("approximate_layers")]
    if not report.exact:
        # Only where removing is not masking, and only at layers of that kind; the run told the user
        # (the rows it returns, and a warning naming the layers and the reason).
        assert spec in APPROXIMATE, report
        assert all(APPROXIMATE[spec] in name for name in report.approximate) and not report.dropped, report
        assert approximate_rows and any(report.approximate[0] in str(w.message) for w in caught)
        return
    assert not approximate_rows
    with torch.no_grad():
        x = x.double()
        torch.testing.assert_close(small(x), full(x), rtol=1e-9, atol=1e-9)


def test_layernorm_approximation_reaches_the_user(tmp_path, one_thread):
    """ConvNeXt's LayerNorm normalises over the channels, so the shrunk network cannot be the masked one
    once a LayerNorm's channels go: the run says which layers and why (a warning, and every row of the
    returned trajectory), and the shrink's report says the same."""
    arch = pyns.from_torch(make_model("timm:convnext_atto"), (3, 32, 32))
    start = arch.uniform_widths(RATIO)
    net = PrunedNetwork(arch, start)
    data = load_dataset("synthetic", split="train", num_samples=16, num_classes=10, seed=1, resolution=32)
    # Half the units in one step: the residual stream (read by the LayerNorms) loses channels for sure.
    config = PruneConfig(warmup_epochs=0, max_epochs=1, batch_size=16, prune_every=1,
                         units_per_step=net.units(start) // 2, stop_at_min_width=False, augment=False)
    with pytest.warns(ApproximateShrinkWarning, match="LayerNorm normalises over the channels") as caught:
        result = prune(arch, data, config, tmp_path / "run", widths=start)
    layers = result.rows[0]["approximate_layers"]
    assert layers and all(name.startswith("layernorm") for name in layers)
    assert any(layers[0] in str(w.message) for w in caught if w.category is ApproximateShrinkWarning)
