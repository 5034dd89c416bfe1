"""pyns.batchnorm: the C++ rows kernel against nn.BatchNorm2d (float64 to rounding, float32 to 1e-5), its
running statistics, the ReLU folded into it, where it steps aside for torch's own path, and the pruner
switching its networks to it."""
import copy

import pytest
import torch
from torch import nn

from pyns.batchnorm import RowsBatchNorm2d, _FoldedReLU, rows_kernel_serves, use_rows_batchnorm
from pyns.gate import TaylorGate

CL = torch.channels_last


def _pair(c: int, dtype=torch.float64, seed: int = 0, **kwargs):
    """nn.BatchNorm2d and RowsBatchNorm2d with the same random affine parameters and running stats."""
    torch.manual_seed(seed)
    ref = nn.BatchNorm2d(c, **kwargs).to(dtype)
    with torch.no_grad():
        if ref.affine:
            ref.weight.uniform_(-1.5, 1.5)
            ref.bias.normal_()
        if ref.track_running_stats:
            ref.running_mean.normal_()
            ref.running_var.uniform_(0.5, 2.0)
    rows = RowsBatchNorm2d(c, **kwargs).to(dtype)
    rows.load_state_dict(ref.state_dict())
    return ref, rows


def _input(n, c, h, w, dtype=torch.float64, seed=1, layout=CL):
    g = torch.Generator().manual_seed(seed)
    # A mean far from 0 and a spread unlike 1 per channel: a one-pass variance would lose digits here.
    x = torch.randn(n, c, h, w, generator=g, dtype=dtype) * torch.rand(1, c, 1, 1, generator=g, dtype=dtype) * 3 \
        + torch.randn(1, c, 1, 1, generator=g, dtype=dtype) * 5
    return x.contiguous(memory_format=layout).requires_grad_()


def _run(module, x, grad):
    y = module(x)
    params = [p for p in (module.weight, module.bias) if p is not None]
    grads = torch.autograd.grad(y, [x, *params], grad)
    return [y.detach(), *grads]


def _state(module):
    return [t.clone() for t in module.state_dict().values()]


@pytest.mark.parametrize("c", [1, 3, 19, 32])
@pytest.mark.parametrize("shape", [(8, 5, 5), (2, 1, 3), (64, 4, 4)])
def test_float64_forward_backward_and_running_stats_match_torch(c, shape):
    n, h, w = shape
    ref, rows = _pair(c)
    x = _input(n, c, h, w)
    assert rows_kernel_serves(x)
    grad = torch.randn(n, c, h, w, dtype=torch.float64).contiguous(memory_format=CL)
    for _ in range(3):  # three batches: the running averages compound
        for a, b in zip(_run(ref, x, grad), _run(rows, x, grad)):
            torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    for a, b in zip(_state(ref), _state(rows)):
        torch.testing.assert_close(b, a, rtol=1e-13, atol=1e-13)
    assert int(rows.num_batches_tracked) == 3


# The kernel runs over segments of k whole rows (csrc/batchnorm.cpp, tile_rows): k = 64 at C = 1, 16 at
# C = 5 and 31, 4 at C = 100 (lanes a multiple of 16), 8 at C = 65 (16 * 65 lanes would pass the cap),
# 1 at C = 129 (plain rows). 33 * 31 * 33 = 33,759 rows (3 * 31 * 33 = 3,069 for the wider C) is odd, a
# multiple of no k > 1, so the last segment is short; every case is above the size where the work is
# split between threads.
@pytest.mark.parametrize("c", [1, 5, 31, 65, 100, 129])
@pytest.mark.parametrize("relu", [False, True])
def test_every_segment_shape_matches_torch(c, relu):
    n, h, w = (33, 31, 33) if c < 65 else (3, 31, 33)
    ref, rows = _pair(c)
    x = _input(n, c, h, w)
    grad = torch.randn(n, c, h, w, dtype=torch.float64).contiguous(memory_format=CL)
    reference = nn.Sequential(ref, nn.ReLU()) if relu else ref
    folded = use_rows_batchnorm(nn.Sequential(rows, nn.ReLU())) if relu else rows
    assert (rows._folded is not None) == relu

    def outputs(module, bn):
        y = module(x)
        return [y.detach(), *torch.autograd.grad(y, [x, bn.weight, bn.bias], grad)]

    for a, b in zip(outputs(reference, ref), outputs(folded, rows)):
        torch.testing.assert_close(b, a, rtol=1e-11, atol=1e-11)
    for a, b in zip(_state(ref), _state(rows)):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kwargs", [{"momentum": None}, {"affine": False}, {"track_running_stats": False},
                                    {"momentum": 0.3, "eps": 1e-3}])
def test_options_match_torch(kwargs):
    ref, rows = _pair(7, **kwargs)
    x = _input(4, 7, 6, 6)
    grad = torch.randn(4, 7, 6, 6, dtype=torch.float64).contiguous(memory_format=CL)
    for _ in range(3):
        for a, b in zip(_run(ref, x, grad), _run(rows, x, grad)):
            torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    for a, b in zip(_state(ref), _state(rows)):
        torch.testing.assert_close(b, a, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("c", [5, 21, 64])
def test_float32_is_as_close_to_float64_as_torchs_own(c):
    """In float32 neither kernel is exact (a channel with mean 7.7 and std 0.01 loses digits in both), so
    each is measured against the float64 result of the same BN: the rows kernel's error is at most
    torch's (with slack for luck), on every output and the running statistics."""
    ref, rows = _pair(c, torch.float32)
    exact = copy.deepcopy(ref).double()
    x = _input(32, c, 8, 8, torch.float32)
    grad = torch.randn(32, c, 8, 8).contiguous(memory_format=CL)
    truth = _run(exact, x.detach().double().contiguous(memory_format=CL).requires_grad_(), grad.double())
    outputs = zip(_run(ref, x, grad) + [ref.running_mean, ref.running_var],
                  _run(rows, x, grad) + [rows.running_mean, rows.running_var],
                  truth + [exact.running_mean, exact.running_var])
    for torch_out, rows_out, exact_out in outputs:
        torch_error = float((torch_out.double() - exact_out).abs().max())
        rows_error = float((rows_out.double() - exact_out).abs().max())
        assert rows_error <= 2 * torch_error + 1e-6 * float(exact_out.abs().max())


def test_results_repeat_bit_for_bit_and_threads_only_change_rounding():
    x = _input(64, 19, 16, 16, torch.float32)  # above the kernel's threshold for a parallel region
    grad = torch.randn(64, 19, 16, 16).contiguous(memory_format=CL)
    threads = torch.get_num_threads()
    runs = []
    try:
        for count in (threads, threads, 1):
            torch.set_num_threads(count)
            _, rows = _pair(19, torch.float32)
            runs.append(_run(rows, x, grad))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(runs[0], runs[1]):
        assert torch.equal(a, b)
    for a, b in zip(runs[0], runs[2]):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-4)


def test_other_inputs_take_torchs_own_path_exactly():
    ref, rows = _pair(6)
    nchw = _input(4, 6, 5, 5, layout=torch.contiguous_format)
    assert not rows_kernel_serves(nchw)
    grad = torch.randn(4, 6, 5, 5, dtype=torch.float64)
    for a, b in zip(_run(ref, nchw, grad), _run(rows, nchw, grad)):
        assert torch.equal(a, b)
    ref.eval(), rows.eval()
    x = _input(4, 6, 5, 5)
    for a, b in zip(_run(ref, x, grad), _run(rows, x, grad)):
        assert torch.equal(a, b)  # eval: the running statistics, torch's kernel
    # One value per channel in training: torch's own error, not a kernel result.
    rows.train()
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        rows(_input(1, 6, 1, 1))


def _block(c_in: int, c: int, gate: bool, dtype=torch.float64) -> nn.Sequential:
    torch.manual_seed(3)
    layers = [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)]
    if gate:
        layers.append(TaylorGate(c, accumulate=False))
    layers += [nn.ReLU(inplace=True), nn.Conv2d(c, 4, 1), nn.BatchNorm2d(4)]
    model = nn.Sequential(*layers).to(dtype)
    with torch.no_grad():
        model[1].bias.normal_()  # about half the activations negative: the ReLU mask matters
    return model


def _train_grads(model, x):
    out = model(x)
    loss = (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum()
    loss.backward()
    return [out.detach()] + [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("gate", [False, True])
def test_relu_is_folded_into_the_bn_and_changes_nothing(gate):
    ref = _block(3, 11, gate)
    fused = use_rows_batchnorm(copy.deepcopy(ref))
    relu = fused[3 if gate else 2]
    assert type(fused[1]) is RowsBatchNorm2d and type(relu) is _FoldedReLU and fused[1]._folded is not None
    x = _input(6, 3, 7, 7)
    for a, b in zip(_train_grads(ref, x), _train_grads(fused, x)):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    assert list(fused.state_dict()) == list(ref.state_dict())


def test_folded_relu_mask_is_the_forwards_bit_for_bit():
    """The backward recomputes the folded ReLU's mask from x: in float32, with many outputs within rounding
    of 0, the folded BN gives exactly the gradients of the same kernel without the fold followed by
    nn.ReLU (whose threshold_backward reads the forward's own output)."""
    ref = _block(3, 13, gate=False, dtype=torch.float32)
    with torch.no_grad():
        ref[1].bias.zero_()  # the normalised values straddle 0 densely
    folded = use_rows_batchnorm(copy.deepcopy(ref))
    unfolded = copy.deepcopy(folded)
    unfolded[1].__dict__["_folded"] = None
    unfolded[2].__class__ = nn.ReLU
    x = _input(16, 3, 9, 9, torch.float32)
    for a, b in zip(_train_grads(unfolded, x), _train_grads(folded, x)):
        assert torch.equal(a, b)


def test_relu_is_not_folded_behind_a_gate_that_masks_or_collects():
    for setup in ("mask", "collect"):
        ref = _block(3, 11, gate=True)
        if setup == "mask":
            ref[2].z[[1, 4]] = 0.0
        else:
            ref[2].accumulate = True
        fused = use_rows_batchnorm(copy.deepcopy(ref))
        x = _input(6, 3, 7, 7)
        for a, b in zip(_train_grads(ref, x), _train_grads(fused, x)):
            torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
        if setup == "collect":  # the gate saw the BN's output, not a ReLU's
            torch.testing.assert_close(fused[2].importance, ref[2].importance, rtol=1e-12, atol=0)


def test_a_shared_bn_is_switched_but_not_folded():
    bn = nn.BatchNorm2d(5).double()
    model = nn.Sequential(nn.Sequential(bn, nn.ReLU()), nn.Sequential(bn, nn.Identity()))
    use_rows_batchnorm(model)
    assert type(bn) is RowsBatchNorm2d and bn._folded is None
    x = _input(2, 5, 3, 3)
    out = model(x)
    assert (out < 0).any()  # the second use keeps the negative values a ReLU would have removed


@pytest.mark.filterwarnings("ignore::pyns.neuralscale.prune.defaults.ScheduleWarning")  # a short run on purpose
def test_pruner_trains_on_rows_batchnorm_after_every_rebuild(tmp_path):
    from pyns.arch import load
    from pyns.data.datasets import load_dataset
    from pyns.neuralscale.prune.run import prune
    from pyns.neuralscale.prune.schedule import PruneConfig

    arch = load("vgg11")
    data = load_dataset("synthetic", split="train", resolution=32, channels=3, num_samples=64, num_classes=10,
                        seed=0)
    config = PruneConfig(warmup_epochs=0, batch_size=32, prune_every=1, units_per_step=40, max_epochs=2,
                         stop_at_min_width=False, augment=False, seed=0)
    seen = []

    def callback(state, model):
        bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        folded = [m for m in model.modules() if isinstance(m, _FoldedReLU)]
        seen.append((state.step, all(type(m) is RowsBatchNorm2d for m in bns), len(folded) == len(bns)))

    prune(arch, data, config, tmp_path / "run", widths=arch.uniform_widths(0.125), callback=callback)
    assert len({step for step, _, _ in seen}) > 2  # several rebuilt networks were seen
    assert all(switched and folded for _, switched, folded in seen)


def test_training_channels_last_on_the_cpu_uses_the_kernel_and_hands_the_model_back(tmp_path):
    """pyns.train with channels_last on the CPU: the BNs run on the rows kernel during the run (seen from
    inside a forward), the result follows the NCHW run to float rounding, and the caller's model comes
    back with plain nn.BatchNorm2d / nn.ReLU classes."""
    from pyns.data.augment import BatchLoader
    from pyns.data.datasets import load_dataset
    from pyns.train.loop import train
    from pyns.train.recipe import TrainRecipe

    data = load_dataset("synthetic", num_samples=96, test_samples=32, resolution=8, channels=3, seed=0)
    test = load_dataset("synthetic", split="test", num_samples=96, test_samples=32, resolution=8, channels=3, seed=0)

    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 11, 3, padding=1, bias=False), nn.BatchNorm2d(11), nn.ReLU(inplace=True),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(11, 10))

    classes_seen = []
    results = {}
    for layout in (False, True):
        net = model()
        net[0].register_forward_hook(lambda m, i, o: classes_seen.append((type(net[1]), type(net[2]))))
        recipe = TrainRecipe(epochs=2, batch_size=32, milestones=(), lr=0.05, channels_last=layout)
        loaders = (BatchLoader(data, 32, train=True, seed=0), BatchLoader(test, 32, train=False))
        result = train(net, *loaders, recipe, out_dir=tmp_path / f"cl-{layout}", progress=False)
        results[layout] = (result, [p.detach().clone() for p in net.parameters()])
        assert type(net[1]) is nn.BatchNorm2d and type(net[2]) is nn.ReLU and "_folded" not in net[1].__dict__
    assert (RowsBatchNorm2d, _FoldedReLU) in classes_seen and (nn.BatchNorm2d, nn.ReLU) in classes_seen
    for a, b in zip(results[False][1], results[True][1]):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    assert results[True][0].final_test_loss == pytest.approx(results[False][0].final_test_loss, rel=1e-4)
