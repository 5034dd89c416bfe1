"""Pruning a pretrained network: the start network of `prune(..., weights=...)` and `pyns prune --weights` is
the given model (its outputs, not only its shapes), pruning then shrinks it, and Li et al.'s L1 ranking
reads the real weights. Real torchvision/timm definitions with random-but-fixed weights (no download)."""
from __future__ import annotations

import json
import sys

import pytest
import torch
from torch import nn

import pyns
from torch_models import model as make_model
from torch_models import torchvision

FACTORY = '''
import torch
from pyns.torch_import.zoo import import_torchvision


def resnet18_10():
    torch.manual_seed(7)
    return import_torchvision().models.resnet18(num_classes=10)
'''


def _resnet18(seed: int = 7) -> nn.Module:
    """resnet18 with 10 classes, fixed random weights and non-trivial BN statistics."""
    tv = torchvision()
    torch.manual_seed(seed)
    model = tv.models.resnet18(num_classes=10)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
    return model.eval()


def _data(n: int = 64):
    from pyns.data import load_dataset
    return load_dataset("synthetic", split="train", num_samples=n, num_classes=10, seed=1, resolution=32)


def _config(**kw):
    from pyns.neuralscale.prune.schedule import PruneConfig
    base = dict(warmup_epochs=0, max_epochs=0, batch_size=32, prune_every=1, units_per_step=16,
                stop_at_min_width=False, augment=False)
    return PruneConfig(**{**base, **kw})


def _start_network(arch, run_dir) -> nn.Module:
    """The network a run with max_epochs=0 saved: its start, before any training or pruning."""
    from pyns.neuralscale.prune.run import load_prune_checkpoint
    net = arch.build(gates=True)
    net.load_state_dict(load_prune_checkpoint(run_dir / "checkpoint.pt")["model"])
    return net.eval()


def _same_outputs(net: nn.Module, model: nn.Module) -> None:
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), model.eval()(x), rtol=1e-5, atol=1e-5)


def test_prune_starts_from_the_module_and_shrinks(tmp_path, one_thread):
    from pyns.neuralscale.prune.run import prune

    model = _resnet18()
    arch = pyns.from_torch(model, (3, 32, 32))
    run = tmp_path / "run"
    result = prune(arch, _data(), _config(), run, weights=model)
    assert result.steps == 0
    _same_outputs(_start_network(arch, run), model)
    saved = json.loads((run / "config.json").read_text())
    assert saved["weights"] == {"module": "torchvision.models.resnet.ResNet"}

    # Resume with more epochs: prune steps follow from the same start and shrink physically.
    sizes = []
    result = prune(arch, _data(), _config(max_epochs=1), run, weights=model, resume=True,
                   callback=lambda state, net: sizes.append(sum(p.numel() for p in net.parameters())))
    assert result.steps == 2
    full = sum(p.numel() for p in model.parameters())
    assert sizes[-1] == arch.count(result.widths).params < full
    # ... and exactly as a run that was never interrupted.
    straight = prune(arch, _data(), _config(max_epochs=1), tmp_path / "straight", weights=model)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time_s"} for r in rows]  # noqa: E731
    assert strip(straight.rows) == strip(result.rows)


def test_weights_need_the_default_widths(tmp_path, one_thread):
    from pyns.errors import RunError
    from pyns.neuralscale.prune.run import prune

    model = _resnet18()
    arch = pyns.from_torch(model, (3, 32, 32))
    with pytest.raises(RunError, match="default widths.*conv1=32"):
        prune(arch, _data(), _config(), tmp_path / "run", weights=model, widths={"conv1": 32})


def test_cli_prune_from_a_state_dict_file(tmp_path, one_thread, capsys):
    from pyns.cli.main import main

    model = _resnet18()
    arch_file, weights = tmp_path / "r18.arch", tmp_path / "r18.pt"
    arch_file.write_text(pyns.from_torch(model, (3, 32, 32)).to_text())
    torch.save(model.state_dict(), weights)
    run = tmp_path / "run"
    args = ["prune", str(arch_file), "--data", "synthetic", "--data-option", "num_samples=64", "--data-option",
            "num_classes=10", "--out", str(run), "--weights", str(weights), "--warmup", "0", "--epochs", "0",
            "--batch-size", "32", "--every", "1", "--units", "16", "--no-fit", "--quiet"]
    assert main(args) == 0, capsys.readouterr().err
    _same_outputs(_start_network(pyns.load(arch_file), run), model)
    import hashlib
    info = json.loads((run / "config.json").read_text())["weights"]
    assert info["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest() and info["kind"] == "state_dict"

    # A mismatched state_dict: one message naming the tensor and both shapes, exit 2, nothing trained.
    bad = dict(model.state_dict())
    bad["layer2.0.conv1.weight"] = torch.zeros(64, 64, 3, 3)
    torch.save(bad, weights)
    capsys.readouterr()
    at = args.index("--out") + 1
    assert main(args[:at] + [str(tmp_path / "run2")] + args[at + 1:]) == 2
    err = capsys.readouterr().err
    assert "layer2.0.conv1.weight" in err and "(64, 64, 3, 3)" in err and "(128, 64, 3, 3)" in err
    assert not (tmp_path / "run2" / "checkpoint.pt").exists()


def test_cli_prune_from_a_factory_spec(tmp_path, one_thread, capsys, monkeypatch):
    from pyns.cli.main import main

    (tmp_path / "myfactory.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("myfactory", None)
    arch_file = tmp_path / "r18.arch"
    assert main(["import", "myfactory:resnet18_10", "--input", "3x32x32", "--out", str(arch_file)]) == 0
    run = tmp_path / "run"
    assert main(["prune", str(arch_file), "--data", "synthetic", "--data-option", "num_samples=64",
                 "--data-option", "num_classes=10", "--out", str(run), "--weights", "myfactory:resnet18_10",
                 "--warmup", "0", "--epochs", "0", "--batch-size", "32", "--no-fit", "--quiet"]) == 0, capsys.readouterr().err
    import myfactory
    _same_outputs(_start_network(pyns.load(arch_file), run), myfactory.resnet18_10().eval())
    assert json.loads((run / "config.json").read_text())["weights"]["spec"] == "myfactory:resnet18_10"


def test_pyns_train_checkpoint_names_are_accepted(tmp_path, one_thread):
    """A state_dict named as the pyns network names its tensors (what `pyns train` saves) also loads."""
    from pyns.neuralscale.prune.run import prune

    model = _resnet18()
    arch = pyns.loads(pyns.from_torch(model, (3, 32, 32)).to_text())
    plain = arch.build(weights=model)
    path = tmp_path / "pyns.pt"
    torch.save(plain.state_dict(), path)
    prune(arch, _data(), _config(), tmp_path / "run", weights=path)
    _same_outputs(_start_network(arch, tmp_path / "run"), model)


def test_li_l1_on_imported_pretrained_weights(one_thread):
    """li_prune on the original module keeps, per width, the filters of largest L1 norm of its real
    weights, checked by hand: widths the folded repeats share between two convs (their norms are summed),
    a stage's first block (layer2.0, stride 2 and a projection) included."""
    from pyns.neuralscale.baselines import li_keep_sets, li_prune

    model = _resnet18()
    arch = pyns.from_torch(model, (3, 32, 32))
    full = arch.count().params
    result = li_prune(model, arch, params=int(full * 0.5))
    assert result.model is not model and sum(p.numel() for p in result.model.parameters()) <= full * 0.5
    # The same selection as ranking the pyns network that holds those weights.
    built = arch.build(weights=model)
    assert result.keep == li_keep_sets(built, result.widths)

    def by_hand(convs, k):
        norm = sum(c.weight.detach().abs().sum(dim=(1, 2, 3)) for c in convs)
        return sorted(torch.sort(norm, descending=True, stable=True).indices[:k].tolist())

    k = result.widths["layer2_0_conv1"]  # repeat(2) over layer2.0 and layer2.1
    assert k < 128 and result.keep["layer2_0_conv1"] == by_hand([model.layer2[0].conv1, model.layer2[1].conv1], k)
    k = result.widths["layer1_0_conv1"]  # repeat(2) over layer1.0 and layer1.1: one width for both
    assert k < 64 and result.keep["layer1_0_conv1"] == by_hand([model.layer1[0].conv1, model.layer1[1].conv1], k)


def test_descent_from_weights_on_an_imported_arch(tmp_path, one_thread, capsys):
    """`pyns descent --weights`: iteration 0 starts from the file (recorded with its hash), the next from a
    fresh init at the widths the fitted profile gives."""
    from pyns.cli.main import main

    model = _resnet18()
    arch_file, weights = tmp_path / "r18.arch", tmp_path / "r18.safetensors"
    arch_file.write_text(pyns.from_torch(model, (3, 32, 32)).to_text())
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    run = tmp_path / "descent"
    assert main(["descent", str(arch_file), "--data", "synthetic", "--data-option", "num_samples=64",
                 "--data-option", "num_classes=10", "--out", str(run), "--weights", str(weights),
                 "--iterations", "2", "--warmup", "0", "--epochs", "1", "--batch-size", "32", "--every", "1",
                 "--units", "16", "--quiet"]) == 0, capsys.readouterr().err
    first = json.loads((run / "iter-00" / "config.json").read_text())
    second = json.loads((run / "iter-01" / "config.json").read_text())
    assert first["weights"]["kind"] == "safetensors" and "weights" not in second
    rows = [json.loads(line) for line in (run / "iter-00" / "trajectory.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and rows[-1]["params"] < sum(p.numel() for p in model.parameters())


def test_tiny_and_scale_on_an_imported_arch(tmp_path, one_thread, capsys):
    """TinyNet's depth multipliers act on the stages the importer folded into repeats; scale meets a
    params budget; both resolved files count to what was reported and build to that many parameters."""
    from pyns.cli.main import main

    arch_file = tmp_path / "b0.arch"
    text = pyns.from_torch(make_model("torchvision:efficientnet_b0"), (3, 64, 64)).to_text()
    arch_file.write_text(text)
    assert "repeat(" in text
    out = tmp_path / "tiny.arch"
    capsys.readouterr()
    assert main(["tiny", str(arch_file), "--macs", "0.1x", "--json", "--out", str(out)]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["stages"] and any(s["repeats"] < s["base"] for s in res["stages"])
    full = pyns.load(arch_file).count()
    small = pyns.load(out)
    assert small.count().macs == res["macs"] <= 0.1 * full.macs
    assert sum(p.numel() for p in small.build().parameters()) == small.count().params == res["params"]

    scaled = tmp_path / "scaled.arch"
    assert main(["scale", str(arch_file), "--params", "0.5x", "--out", str(scaled)]) == 0
    half = pyns.load(scaled)
    assert sum(p.numel() for p in half.build().parameters()) == half.count().params <= 0.5 * full.params


@pytest.mark.parametrize("spec", ["torchvision:mobilenet_v3_small", "timm:convnext_atto"])
def test_a_state_dict_maps_through_the_layer_map_in_the_text(spec, one_thread):
    """Squeeze-excite pairs and layer-scale parameters go through the `# pyns-torch-layers:` lines too: an
    Arch read back from text takes the bare state_dict and reproduces the model."""
    model = make_model(spec)
    with torch.no_grad():  # layer scales start at 1e-6: make them matter
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.uniform_(0.5, 1.5)
    arch = pyns.loads(pyns.from_torch(model, (3, 32, 32)).to_text())
    assert arch.torch_layers is None
    _same_outputs(arch.build(weights=model.state_dict()), model)
    extra = {**model.state_dict(), "head.extra.weight": torch.zeros(3)}
    with pytest.raises(pyns.errors.PynsError, match="head.extra.weight"):
        arch.build(weights=extra)


def test_export_an_imported_arch_with_the_original_models_state_dict(tmp_path, one_thread, capsys):
    # `pyns export FILE.arch --weights` takes the state_dict of the torch model the file was imported from
    # (named as that model names its tensors), and the bundle computes what that model computes.
    from pyns.cli.main import main

    model = _resnet18()
    arch_file, weights, bundle = tmp_path / "r18.arch", tmp_path / "r18.pt", tmp_path / "r18.pyns"
    arch_file.write_text(pyns.from_torch(model, (3, 32, 32)).to_text())
    torch.save(model.state_dict(), weights)
    assert main(["export", str(arch_file), "--weights", str(weights), "--out", str(bundle)]) == 0, \
        capsys.readouterr().err
    _same_outputs(pyns.load_model(bundle), model)
    # One tensor of the wrong shape: exit 2 with a message naming it, and no bundle written over the old one.
    state = model.state_dict()
    state["layer2.0.conv1.weight"] = torch.zeros(64, 64, 3, 3)
    torch.save(state, weights)
    before = bundle.read_bytes()
    assert main(["export", str(arch_file), "--weights", str(weights), "--out", str(bundle)]) == 2
    assert "layer2.0.conv1" in capsys.readouterr().err and bundle.read_bytes() == before
