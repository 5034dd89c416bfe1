"""`pyns export` and `pyns.load_model` (issue 12): bundles, torch.export, ONNX, run folders, bad input."""
import json
import pickle
import subprocess
import sys
import zipfile

import pytest
import torch

import pyns
from pyns.cli.main import main
from pyns.errors import ExportError
from pyns.export.arch_text import concrete_arch
from pyns.export.bundle import FORMAT_VERSION, load_model, open_bundle, write_bundle
from pyns.resources import shipped_archs

# Scaled-down sizes that keep every shipped arch fast on two cores: ImageNet nets at 64x64 with 10
# classes, widths at a quarter (VGG-ImageNet's 4096-wide classifier at an eighth).
SMALL = {"efficientnet_b0": 64, "mobilenet_v2_imagenet": 64, "resnet18_imagenet": 64, "resnet50": 64,
         "vgg11_bn_imagenet": 64}
FAST = ("digits_cnn", "resnet18")  # torch.export / ONNX of the others are marked slow (5-30 s each)


def _small(name):
    arch = pyns.load(name, **({"classes": 10} if name in SMALL else {}))
    widths = arch.uniform_widths(0.125 if name == "vgg11_bn_imagenet" else 0.25)
    return arch, widths, SMALL.get(name)


def _randomised(model):
    """Weights whose every tensor matters: BN statistics and affine terms away from their init values."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
                m.num_batches_tracked.fill_(11)
    return model.eval()


def _built(name):
    arch, widths, resolution = _small(name)
    torch.manual_seed(0)
    model = _randomised(arch.build(widths, resolution=resolution, init="default"))
    concrete = concrete_arch(arch, widths, resolution=resolution)
    network = concrete.arch.ir()
    return arch, model, concrete, (network.in_channels, network.resolution, network.resolution)


def _inputs(shape, batch=3):
    return torch.randn((batch, *shape), generator=torch.Generator().manual_seed(5))


def _arch_param(name):
    return pytest.param(name, marks=() if name in FAST else pytest.mark.slow)


def test_every_shipped_arch_is_covered():
    assert len(shipped_archs()) >= 10 and set(FAST) <= set(shipped_archs())


@pytest.mark.parametrize("name", shipped_archs())
def test_bundle_round_trip_gives_identical_state_and_outputs(name, tmp_path, one_thread):
    arch, model, concrete, shape = _built(name)
    path = tmp_path / f"{name}.pyns"
    manifest = write_bundle(path, concrete, model)
    loaded = load_model(path)
    assert not loaded.training
    original, again = model.state_dict(), loaded.state_dict()
    assert list(again) == list(original)
    for key in original:
        assert again[key].dtype == original[key].dtype and torch.equal(again[key], original[key]), key
    x = _inputs(shape)
    with torch.no_grad():
        expected, got = model(x), loaded(x)
    assert float(expected.abs().max()) > 1e-2  # outputs large enough for the comparison to mean something
    assert torch.equal(got, expected)
    cost = arch.count(model.widths, resolution=concrete.arch.resolution)
    assert manifest["params"] == cost.params == sum(p.numel() for p in loaded.parameters())
    assert manifest["macs"] == cost.macs
    assert loaded.manifest["format_version"] == FORMAT_VERSION


@pytest.mark.parametrize("name", [_arch_param(n) for n in shipped_archs()])
def test_torch_export_program_computes_what_the_module_does(name, tmp_path, one_thread):
    from pyns.export.torch_export import export_torch

    _, model, _, shape = _built(name)
    path = tmp_path / f"{name}.pt2"
    report = export_torch(model, shape, path)
    assert report.verified and report.max_abs_diff <= 1e-5
    program = torch.export.load(str(path)).module()  # plain torch: no pyns in the loading path
    for batch in (1, 4):  # 4 was never seen at export time: the batch dimension is dynamic
        x = _inputs(shape, batch)
        with torch.no_grad():
            assert torch.allclose(program(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", [_arch_param(n) for n in shipped_archs()])
def test_onnx_model_computes_what_the_module_does(name, tmp_path, one_thread):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    from pyns.export.onnx_export import OPSET, export_onnx

    _, model, _, shape = _built(name)
    path = tmp_path / f"{name}.onnx"
    report = export_onnx(model, shape, path)
    assert report.verified and report.opset == OPSET
    proto = onnx.load(str(path))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [OPSET]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == list(shape)  # symbolic batch
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        x = _inputs(shape, batch)
        with torch.no_grad():
            expected = model(x)
        got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_depth_multiplier_is_baked_into_the_repeat_counts(tmp_path, one_thread):
    arch = pyns.load("resnet50", classes=10)
    widths = arch.uniform_widths(0.25)
    concrete = concrete_arch(arch, widths, depth=0.5, resolution=32)
    assert concrete.depth_mult == 1.0  # literal repeat counts: the text alone is the network
    expected = arch.count(widths, depth=0.5, resolution=32)
    again = pyns.loads(concrete.text).count()
    assert (again.params, again.macs) == (expected.params, expected.macs)
    assert again.params != arch.count(widths, resolution=32).params  # depth did change the network
    model = arch.build(widths, depth=0.5, resolution=32).eval()
    write_bundle(tmp_path / "r.pyns", concrete, model)
    loaded = load_model(tmp_path / "r.pyns")
    x = _inputs((3, 32, 32), 2)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_loading_unpickles_nothing(tmp_path, monkeypatch, one_thread):
    _, model, concrete, shape = _built("digits_cnn")
    write_bundle(tmp_path / "d.pyns", concrete, model)

    def refuse(*args, **kwargs):
        raise AssertionError("load_model unpickled something")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    loaded = pyns.load_model(tmp_path / "d.pyns")
    with torch.no_grad():
        assert torch.equal(loaded(_inputs(shape)), model(_inputs(shape)))


def test_importing_pyns_does_not_import_torch():
    code = "import sys, pyns; pyns.load_model; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# ----------------------------------------------------------------------------------------------------
# Bad bundles: never a half-loaded model
# ----------------------------------------------------------------------------------------------------


@pytest.fixture
def bundle(tmp_path, one_thread):
    """digits_cnn at its default widths (29,434 params, c1 = 16)."""
    arch = pyns.load("digits_cnn")
    torch.manual_seed(0)
    model = _randomised(arch.build(init="default"))
    concrete = concrete_arch(arch, arch.defaults)
    path = tmp_path / "d.pyns"
    write_bundle(path, concrete, model)
    return path


def _members(path):
    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in z.namelist()}


def _rewrite(path, members):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)


def _error(path):
    with pytest.raises(ExportError) as err:
        load_model(path)
    return str(err.value)


def test_truncated_bundle_is_an_error(bundle):
    data = bundle.read_bytes()
    for cut in (len(data) // 2, len(data) - 10, 100):
        bundle.write_bytes(data[:cut])
        assert "truncated or damaged" in _error(bundle)


def test_flipped_byte_in_the_weights_is_an_error(bundle):
    data = bytearray(bundle.read_bytes())
    at = len(data) // 2  # the weights member is by far the largest, so the middle lies in its tensor data
    data[at] ^= 0xFF
    bundle.write_bytes(bytes(data))
    assert "damaged" in _error(bundle)


def test_tampered_manifest_counts_are_an_error(bundle):
    members = _members(bundle)
    manifest = json.loads(members["manifest.json"])
    manifest["params"] += 1
    members["manifest.json"] = json.dumps(manifest).encode()
    _rewrite(bundle, members)
    message = _error(bundle)
    assert "counts 29,434 params" in message and "manifest says 29,435" in message


def test_edited_architecture_text_is_an_error_even_with_its_hash_updated(bundle):
    import hashlib

    members = _members(bundle)
    text = members["arch.arch"].decode().replace("width c1 = 16", "width c1 = 24")
    members["arch.arch"] = text.encode()
    manifest = json.loads(members["manifest.json"])
    assert "sha256" in manifest["arch"]
    _rewrite(bundle, members)
    assert "does not match the sha256" in _error(bundle)
    manifest["arch"]["sha256"] = hashlib.sha256(text.encode()).hexdigest()
    members["manifest.json"] = json.dumps(manifest).encode()
    _rewrite(bundle, members)
    assert "the manifest says 29,434" in _error(bundle)  # recounted: the edit changed the network


def test_weights_of_another_shape_name_the_tensor(bundle):
    import hashlib

    from safetensors.torch import load as load_st
    from safetensors.torch import save as save_st

    members = _members(bundle)
    state = load_st(members["weights.safetensors"])
    state["layers.0.weight"] = torch.zeros(8, 1, 3, 3)
    members["weights.safetensors"] = save_st(state)
    manifest = json.loads(members["manifest.json"])
    manifest["weights"]["sha256"] = hashlib.sha256(members["weights.safetensors"]).hexdigest()
    members["manifest.json"] = json.dumps(manifest).encode()
    _rewrite(bundle, members)
    message = _error(bundle)
    assert "`layers.0.weight`" in message and "8x1x3x3" in message and "16x1x3x3" in message


def test_newer_format_version_is_a_clear_error(bundle):
    members = _members(bundle)
    manifest = json.loads(members["manifest.json"])
    manifest["format_version"] = FORMAT_VERSION + 1
    members["manifest.json"] = json.dumps(manifest).encode()
    _rewrite(bundle, members)
    with pytest.raises(ExportError) as err:
        open_bundle(bundle)
    assert f"format version {FORMAT_VERSION + 1}" in str(err.value) and "upgrade pyns" in str(err.value)


def test_not_a_bundle(tmp_path):
    (tmp_path / "x.pyns").write_bytes(b"PK\x03\x04 not really a zip")
    assert "truncated or damaged" in _error(tmp_path / "x.pyns")
    with zipfile.ZipFile(tmp_path / "y.pyns", "w") as z:
        z.writestr("manifest.json", "{}")
    assert "lacks arch.arch, weights.safetensors" in _error(tmp_path / "y.pyns")
    assert "there is no bundle" in _error(tmp_path / "missing.pyns")


def test_an_unzipped_bundle_folder_loads_the_same(bundle, tmp_path):
    folder = tmp_path / "unzipped"
    with zipfile.ZipFile(bundle) as z:
        z.extractall(folder)
    a, b = load_model(bundle), load_model(folder)
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())


# ----------------------------------------------------------------------------------------------------
# Sources: an .arch with weights, a train run folder, a prune run folder
# ----------------------------------------------------------------------------------------------------


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_arch_with_a_plain_state_dict(tmp_path, capsys, one_thread):
    arch = pyns.load("digits_cnn")
    model = _randomised(arch.build())
    torch.save(model.state_dict(), tmp_path / "w.pt")
    code, out, _ = _cli(capsys, "export", "digits_cnn", "--weights", tmp_path / "w.pt", "--out", tmp_path / "b.pyns")
    assert code == 0 and "wrote bundle" in out
    loaded = load_model(tmp_path / "b.pyns")
    assert loaded.manifest["weights"]["kind"] == "trained"
    x = _inputs((1, 8, 8))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_mismatched_checkpoint_says_which_tensor_differs_and_writes_nothing(tmp_path, capsys, one_thread):
    other = pyns.load("digits_cnn").build({"c1": 8})
    torch.save(other.state_dict(), tmp_path / "w.pt")
    code, out, err = _cli(capsys, "export", "digits_cnn", "--weights", tmp_path / "w.pt", "--out",
                          tmp_path / "b.pyns")
    assert code == 2 and out == ""
    assert err.count("pyns: error:") == 1 and "`layers.0.weight`" in err
    assert "shape 8x1x3x3 in the weights but the arch needs 16x1x3x3" in err
    assert not (tmp_path / "b.pyns").exists()


def test_a_pickled_module_is_refused_not_unpickled(tmp_path, capsys, one_thread):
    torch.save(pyns.load("digits_cnn").build(), tmp_path / "module.pt")  # the whole module: needs pickle
    code, _, err = _cli(capsys, "export", "digits_cnn", "--weights", tmp_path / "module.pt", "--out",
                        tmp_path / "b.pyns")
    assert code == 2 and "without unpickling" in err and "state_dict" in err


@pytest.mark.slow
def test_train_run_export_reproduces_the_reported_accuracy(tmp_path, capsys, one_thread):
    from pyns.train.loop import evaluate, make_loaders
    from pyns.train.recipe import TrainRecipe
    from pyns.train.run import ArchSpec, DataSpec

    run = tmp_path / "run"
    code, _, _ = _cli(capsys, "train", "digits_cnn", "--data", "digits", "--out", run, "--epochs", "3",
                      "--milestones", "none", "--no-latency", "--quiet")
    assert code == 0
    result = json.loads((run / "result.json").read_text())
    arch, train_set, test_set = ArchSpec("digits_cnn").load_for(DataSpec("digits"))
    for flag, key in (("best", "best_test_acc"), ("final", "final_test_acc")):
        path = tmp_path / f"{flag}.pyns"
        code, out, _ = _cli(capsys, "export", run, "--checkpoint", flag, "--out", path)
        assert code == 0
        model = load_model(path)
        manifest = model.manifest
        assert manifest["source"]["checkpoint"] == flag and manifest["accuracy"]["checkpoint"] == flag
        assert manifest["accuracy"]["test_acc"] == result[key]
        recipe = TrainRecipe(**{k: tuple(v) if isinstance(v, list) else v for k, v in manifest["recipe"].items()})
        _, test_loader = make_loaders(train_set, test_set, recipe, device="cpu", augment=None)
        accuracy, _ = evaluate(model, test_loader)
        assert accuracy == result[key]  # exactly: same weights, same data, eval mode
        assert f"{100 * result[key]:.2f}%" in out
    code, out, _ = _cli(capsys, "export", tmp_path / "best.pyns", "--info")
    assert code == 0 and "`pyns train` run" in out and "best checkpoint" in out
    code, out, _ = _cli(capsys, "count", tmp_path / "best.pyns", "--json")
    counted = json.loads(out)
    assert counted["bundle"]["accuracy"]["test_acc"] == result["best_test_acc"]
    assert counted["params"] == result["params"] == counted["bundle"]["params"]


@pytest.fixture(scope="module")
def digits_train():
    from pyns.data.datasets import load_dataset

    return load_dataset("digits", split="train", resolution=8, channels=1)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["shrink", "masked"])
def test_prune_run_export_is_the_shrunk_network_with_its_weights(mode, tmp_path, capsys, digits_train, one_thread):
    from pyns.neuralscale.prune import PruneConfig, prune
    from pyns.neuralscale.prune.run import load_prune_checkpoint

    arch = pyns.load("digits_cnn")
    start = {"c1": 6, "c2": 6, "c3": 6, "c4": 6}
    config = PruneConfig(warmup_epochs=1, batch_size=128, prune_every=4, units_per_step=2, stop_fraction=0.5,
                         stop_at_min_width=False, augment=False, seed=3)
    run = tmp_path / "run"
    result = prune(arch, digits_train, config, run, widths=start, mode=mode)
    assert result.steps > 1
    code, out, _ = _cli(capsys, "export", run, "--out", tmp_path / "p.pyns")
    assert code == 0
    loaded = load_model(tmp_path / "p.pyns")
    assert loaded.widths == result.widths and loaded.manifest["source"]["step"] == result.steps
    # The reference: the checkpoint's own gated network (masked: full size with zeroed gates).
    payload = load_prune_checkpoint(run / "checkpoint.pt")
    gated = arch.build(start if mode == "masked" else result.widths, gates=True)
    gated.load_state_dict(payload["model"])
    gated.eval()
    x = _inputs((1, 8, 8), 4)
    with torch.no_grad():
        assert torch.allclose(loaded(x), gated(x), rtol=1e-5, atol=1e-6)
    if mode == "shrink":
        assert sum(p.numel() for p in loaded.parameters()) == result.params
    # An earlier step: its widths from the trajectory, no weights (and the manifest says so).
    code, out, _ = _cli(capsys, "export", run, "--step", "1", "--out", tmp_path / "s1.pyns")
    assert code == 0 and "freshly initialised" in out
    first = json.loads((run / "trajectory.jsonl").read_text().splitlines()[0])
    early = load_model(tmp_path / "s1.pyns")
    assert early.widths == first["widths"] and early.manifest["weights"]["kind"] == "initialised"
    code, _, err = _cli(capsys, "export", run, "--step", "999", "--out", tmp_path / "x.pyns")
    assert code == 2 and "no prune step 999" in err


# ----------------------------------------------------------------------------------------------------
# Export-time verification and the command line's contract
# ----------------------------------------------------------------------------------------------------


def test_an_export_that_differs_is_refused_and_nothing_is_written(tmp_path, monkeypatch, one_thread):
    from pyns.export import torch_export

    _, model, _, shape = _built("digits_cnn")
    other = _randomised(pyns.load("digits_cnn").build(init="default"))  # same shapes, other weights
    real = torch_export.torch_program_bytes
    monkeypatch.setattr(torch_export, "torch_program_bytes", lambda m, s: real(other, s))
    with pytest.raises(ExportError) as err:
        torch_export.export_torch(model, shape, tmp_path / "m.pt2")
    assert "differs from the pyns module" in str(err.value) and "nothing was written" in str(err.value)
    assert list(tmp_path.iterdir()) == []  # no file, no temporary left behind


def test_onnx_without_the_extra_is_a_clear_error(tmp_path, monkeypatch, one_thread):
    from pyns.export.onnx_export import export_onnx

    _, model, _, shape = _built("digits_cnn")
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    with pytest.raises(ExportError) as err:
        export_onnx(model, shape, tmp_path / "m.onnx")
    assert 'pip install "pyns[onnx]"' in str(err.value)
    assert not (tmp_path / "m.onnx").exists()


def test_onnx_without_onnxruntime_says_it_did_not_verify(tmp_path, monkeypatch, one_thread):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    from pyns.export.onnx_export import export_onnx

    _, model, _, shape = _built("digits_cnn")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    report = export_onnx(model, shape, tmp_path / "m.onnx")
    assert not report.verified and "NOT verified" in report.notes[0]
    assert (tmp_path / "m.onnx").stat().st_size > 0


@pytest.mark.parametrize("argv, message", [
    (["digits_cnn"], "nothing to write"),
    (["digits_cnn", "--info"], "is not one"),
    (["nosuch_arch", "--out", "x.pyns"], "unknown architecture"),
    (["digits_cnn", "--out", "a.x", "--torch", "a.x"], "different files"),
    (["digits_cnn", "--weights", "missing.pt", "--out", "x.pyns"], "no weights file"),
    (["digits_cnn", "--step", "3", "--out", "x.pyns"], "pruning run folder"),
    (["digits_cnn", "--opset", "17", "--out", "x.pyns"], "--onnx only"),
])
def test_bad_input_exits_2_with_one_message(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = _cli(capsys, "export", *argv)
    assert code == 2 and out == "" and err.count("pyns: error:") == 1 and message in err
    assert "Traceback" not in err
    assert not any(tmp_path.iterdir())


def test_a_bundle_fixes_its_network(bundle, capsys):
    code, _, err = _cli(capsys, "export", bundle, "--weights", "w.pt", "--out", bundle.with_name("again.pyns"))
    assert code == 2 and "cannot be used with a bundle" in err


def test_bundle_re_exports_to_torch_and_count_prints_its_manifest(bundle, tmp_path, capsys, one_thread):
    code, out, _ = _cli(capsys, "export", bundle, "--torch", tmp_path / "m.pt2", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["outputs"][0]["verified"] and report["outputs"][0]["max_abs_diff"] <= 1e-5
    program = torch.export.load(str(tmp_path / "m.pt2")).module()
    model = load_model(bundle)
    x = _inputs((1, 8, 8))
    with torch.no_grad():
        assert torch.allclose(program(x), model(x), rtol=1e-5, atol=1e-5)
    code, out, _ = _cli(capsys, "count", bundle, "--no-layers")
    assert code == 0 and f"bundle {bundle}" in out and "params: 29,434" in out
    code, out, _ = _cli(capsys, "export", bundle, "--info", "--json")
    info = json.loads(out)
    assert info["verified"] and info["manifest"]["params"] == 29434


def test_write_is_atomic_an_old_bundle_survives_a_failed_export(bundle, tmp_path, capsys):
    before = bundle.read_bytes()
    torch.save({"x": torch.zeros(3)}, tmp_path / "bad.pt")
    code, _, _ = _cli(capsys, "export", "digits_cnn", "--weights", tmp_path / "bad.pt", "--out", bundle)
    assert code == 2 and bundle.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt", "d.pyns"]


def test_bundled_weights_of_another_dtype_are_refused(bundle):
    import hashlib

    from safetensors.torch import load as load_st
    from safetensors.torch import save as save_st

    members = _members(bundle)
    state = {k: v.half() if v.is_floating_point() else v for k, v in load_st(members["weights.safetensors"]).items()}
    members["weights.safetensors"] = save_st(state)
    manifest = json.loads(members["manifest.json"])
    manifest["weights"]["sha256"] = hashlib.sha256(members["weights.safetensors"]).hexdigest()
    members["manifest.json"] = json.dumps(manifest).encode()
    _rewrite(bundle, members)
    assert "is torch.float16 in the weights, the arch needs torch.float32" in _error(bundle)
