"""Pruning on imported networks: physical shrinking computes what masking computes, and `pyns prune`
runs a few steps on synthetic data and shrinks the network."""
from __future__ import annotations

import pytest
import torch

import pyns
from pyns.channels import channel_map
from pyns.neuralscale.prune.importance import gates_by_symbol
from pyns.neuralscale.prune.keep import derived_keep, top_positions
from pyns.neuralscale.prune.shrink import mask_network, shrink_network
from torch_models import model as make_model
from shrink_checks import randomise_bn


@pytest.mark.parametrize("spec", ["torchvision:resnet18", "torchvision:mobilenet_v2", "timm:efficientnet_b0",
                                  "torchvision:regnet_y_400mf", "torchvision:mobilenet_v3_small", "timm:rexnet_100",
                                  "timm:mixnet_s", "torchvision:resnext50_32x4d", "torchvision:densenet121"])
def test_shrunk_imported_network_equals_masked(spec, one_thread):
    arch = pyns.from_torch(make_model(spec), (3, 32, 32))
    generator = torch.Generator().manual_seed(3)
    full = arch.build(arch.uniform_widths(0.25), gates=True)
    randomise_bn(full, generator)
    gated = gates_by_symbol(full)  # the pruner removes units of gated widths only
    keep = {}
    from pyns import ir
    cmap = channel_map(full.ir, full.widths)
    for group in ir.tied_groups(full.ir, full.widths):
        if not all(s in gated for s in group):
            continue
        # a per-group width (`32 * s`, pyns.channels) keeps the same number of channels in every group
        blocks = cmap.class_blocks(tuple(group))
        width = full.widths[group[0]] * blocks
        score = torch.rand(width, generator=generator)
        chosen = top_positions(score, max(1, width // blocks // 2) * blocks, blocks)
        keep.update({s: chosen for s in group})
    assert keep
    # Widths that follow their layer's input (a folded stage's `6 * in` expansion) change with it: their
    # survivors are the largest of random scores, as for the shipped archs (tests/test_shrink.py).
    scores = {space: torch.rand(cmap.width(space, full.widths), generator=generator) for space in cmap.spaces}
    keep = derived_keep(full, keep, scores, cmap)
    small, _, report = shrink_network(full, keep)
    assert sum(p.numel() for p in small.parameters()) == arch.count(small.widths).params
    mask_network(full, keep)
    x = torch.randn(2, 3, 32, 32, generator=generator)
    full.eval()
    small.eval()
    with torch.no_grad():
        if report.exact:
            torch.testing.assert_close(small(x), full(x), rtol=1e-4, atol=1e-4)
    assert report.exact, report


def _short_prune(arch, tmp_path, *, samples: int, batch: int):
    """Two epochs of one prune step per minibatch (8 units each) from a quarter of the widths, on synthetic
    32x32 data; returns the result, the module's parameter count after every minibatch, and whether each
    equalled the cost engine's count at the state's widths."""
    from pyns.data import load_dataset
    from pyns.neuralscale.prune.run import prune
    from pyns.neuralscale.prune.schedule import PruneConfig

    data = load_dataset("synthetic", split="train", num_samples=samples, num_classes=10, seed=1, resolution=32)
    sizes, exact = [], []

    def check(state, model):
        n = sum(p.numel() for p in model.parameters())
        sizes.append(n)
        exact.append(n == arch.count(state.widths).params)

    config = PruneConfig(warmup_epochs=0, max_epochs=2, batch_size=batch, prune_every=1, units_per_step=8,
                         stop_at_min_width=False, augment=False)
    result = prune(arch, data, config, tmp_path / "run", widths=arch.uniform_widths(0.25), callback=check)
    return result, sizes, exact


def test_prune_shrinks_an_imported_se_network(tmp_path, one_thread):
    """A few prune steps on synthetic data: the module trained is always the network the widths describe,
    and it gets physically smaller; squeeze-excite widths have gates and are pruned too."""
    arch = pyns.from_torch(make_model("torchvision:mobilenet_v3_small"), (3, 32, 32))
    arch = pyns.loads(arch.to_text(), classes=10)
    result, sizes, exact = _short_prune(arch, tmp_path, samples=64, batch=32)
    assert len(result.rows) == 4 and all(exact)
    assert sizes[-1] < sizes[0]
    se_widths = [s for s in arch.searchable if s.endswith("_fc1")]
    start = arch.uniform_widths(0.25)
    assert se_widths and any(result.rows[-1]["widths"][s] < start[s] for s in arch.searchable)


def test_prune_cli_on_imported_arch(tmp_path, one_thread):
    from pyns.cli.main import main

    arch_file = tmp_path / "r18.arch"
    assert main(["import", "torchvision:resnet18", "--input", "3x32x32", "--out", str(arch_file)]) == 0
    text = arch_file.read_text()
    assert pyns.loads(text).count().params == sum(p.numel() for p in make_model("torchvision:resnet18").parameters())


def fft_model():
    """A factory for `pyns import tests.test_torch_import_prune:fft_model`-style specs."""
    import torch.nn as tnn

    class FFT(tnn.Module):
        def __init__(self):
            super().__init__()
            self.conv = tnn.Conv2d(3, 4, 3)
            self.fc = tnn.Linear(4, 2)

        def forward(self, x):
            y = torch.fft.rfft2(self.conv(x)).abs()
            return self.fc(y.mean((2, 3)))

    return FFT()


def test_import_cli_unsupported_op_exits_2(tmp_path, capsys, monkeypatch):
    from pyns.cli.main import main

    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    assert main(["import", "test_torch_import_prune:fft_model", "--input", "3x16x16"]) == 2
    err = capsys.readouterr().err
    assert "rfft2" in err and "torch.fft.rfft2(self.conv(x))" in err and "test_torch_import_prune.py" in err
    assert main(["import", "torchvision:resnet18", "--input", "3x16"]) == 2
    assert main(["import", "nosuchpackage.mod:f"]) == 2
    assert not list(tmp_path.iterdir())


def test_shrinking_through_a_channel_shuffle_is_reported_approximate(one_thread):
    """ShuffleNetV2: removing channels re-routes the later ones through the shuffle, so the shrunk network
    is not the masked one; the shrink must say so rather than claim an exact copy."""
    arch = pyns.from_torch(make_model("torchvision:shufflenet_v2_x0_5"), (3, 32, 32))
    full = arch.build(arch.uniform_widths(0.5), gates=True)
    symbol = next(s for s in arch.searchable if s.startswith("stage2_0_branch1"))
    small, _, report = shrink_network(full, {symbol: list(range(0, full.widths[symbol], 2))})
    assert not report.exact and any("shuffle" in name for name in report.approximate)
    assert sum(p.numel() for p in small.parameters()) == arch.count(small.widths).params


@pytest.mark.parametrize("spec", ["timm:rexnet_100", "timm:mixnet_s"])
def test_prune_shrinks_rexnet_and_mixnet(spec, tmp_path, one_thread):
    """A few prune steps on synthetic data: the partial residuals of ReXNet and the refined segments of
    MixNet's mixed convs shrink physically, and the module is always the network the widths describe."""
    arch = pyns.loads(pyns.from_torch(make_model(spec), (3, 32, 32)).to_text(), classes=10)
    result, sizes, exact = _short_prune(arch, tmp_path, samples=32, batch=16)
    start = arch.uniform_widths(0.25)
    assert all(exact) and sizes[-1] < sizes[0]
    assert any(result.rows[-1]["widths"][s] < start[s] for s in arch.searchable)


@pytest.mark.parametrize("spec", ["timm:rexnet_100", "timm:mixnet_s", "timm:cspresnet50"])
def test_li_l1_prune_ranks_widths_written_as_sums(spec, one_thread):
    """Li et al.'s L1 ranking on the original module: a width produced only inside a conv that writes several
    (ReXNet's `conv(a + e, 1)`, a CSP split conv, a MixNet part) is ranked by those filters at its offset."""
    from pyns.neuralscale.baselines import li_prune

    model = make_model(spec)
    arch = pyns.from_torch(model, (3, 32, 32))
    result = li_prune(model, arch, params="0.5x")
    assert sum(p.numel() for p in result.model.parameters()) == arch.count(result.widths).params
    assert arch.count(result.widths).params <= arch.count().params // 2
