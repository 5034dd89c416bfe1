"""Fused gate backward vs the eager torch equivalent, per call.

Eager equivalent of one backward: grad_input = grad * z[c]; g = (grad * x).sum over (N, H, W);
importance += g^2; batches += 1 (four passes over activation-sized memory plus a temporary).
The fused op does it in one pass (pyns.gate.gate_backward -> C++ / CUDA).

    python benchmarks/bench_gate.py [--device cpu|cuda] [--threads T] [--repeat R] [--quick] [--best]
"""
from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch

import pyns.gate as gate_mod
from pyns.gate import fused_available, gate_backward


@dataclass(frozen=True)
class Case:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype = torch.float32
    channels_last: bool = False


# Activations after the BNs of a searchable width. VGG11-CIFAR at the pruning batch 256 (SPEC §5);
# PreAct-ResNet18 on TinyImageNet at its pruning batch 100 (strides 2/2/2/2 from 64x64).
CASES = [
    Case("vgg11 conv1", (256, 64, 32, 32)),
    Case("vgg11 conv2", (256, 128, 16, 16)),
    Case("vgg11 conv3", (256, 256, 8, 8)),
    Case("vgg11 conv5", (256, 512, 4, 4)),
    Case("vgg11 conv7", (256, 512, 2, 2)),
    Case("resnet18-tin stem", (100, 64, 64, 64)),
    Case("resnet18-tin stage1", (100, 64, 32, 32)),
    Case("resnet18-tin stage2", (100, 128, 16, 16)),
    Case("resnet18-tin stage4", (100, 512, 4, 4)),
    Case("vgg11 conv1 ch-last", (256, 64, 32, 32), channels_last=True),
    Case("vgg11 conv5 ch-last", (256, 512, 4, 4), channels_last=True),
    Case("vgg11 conv1 bf16", (256, 64, 32, 32), torch.bfloat16),
    Case("vgg11 conv1 fp16 ch-last", (256, 64, 32, 32), torch.float16, True),
    Case("bn1d [N, C]", (256, 4096)),
]
QUICK = {"vgg11 conv1", "vgg11 conv5", "vgg11 conv1 ch-last", "vgg11 conv1 bf16", "bn1d [N, C]"}


def eager_backward(grad: torch.Tensor, x: torch.Tensor, z: torch.Tensor, importance: torch.Tensor,
                   batches: torch.Tensor) -> torch.Tensor:
    view = [1, x.shape[1]] + [1] * (x.dim() - 2)  # broadcast [C] over [N, C, *spatial]
    grad_input = grad * z.to(grad.dtype).view(view)
    g = (grad * x).sum([d for d in range(x.dim()) if d != 1])
    importance += g.double() ** 2
    batches += 1
    return grad_input


def kernel_only(grad: torch.Tensor, x: torch.Tensor, z: torch.Tensor, importance: torch.Tensor,
                batches: torch.Tensor):
    """The CPU kernel writing into preallocated outputs: what the fused pass costs without the fresh
    grad_input allocation that autograd needs (page faults dominate that on some machines)."""
    grad_input = torch.empty_like(x)
    g = torch.empty(x.shape[1], dtype=torch.float64)
    layout = gate_mod._layout_of(x)
    hw = x[0, 0].numel()
    args = (grad.data_ptr(), x.data_ptr(), z.data_ptr(), grad_input.data_ptr(), g.data_ptr(),
            importance.data_ptr(), batches.data_ptr(), x.shape[0], x.shape[1], hw, layout,
            gate_mod._DTYPE_CODES[x.dtype], torch.get_num_threads())
    outputs = (grad_input, g)  # the closure must own them: the kernel only sees their addresses

    def call():
        gate_mod._core.gate_backward_cpu(*args)
        return outputs
    return call


def time_call(fn, repeat: int, device: torch.device, stat=statistics.median) -> float:
    """Seconds per call (median, or `stat`, of `repeat` timed calls) after two warm-up calls."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(2):
        fn()
    times = []
    for _ in range(repeat):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return stat(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch/OpenMP threads (0 = default)")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="only a few representative shapes")
    parser.add_argument("--best", action="store_true",
                        help="report the fastest call instead of the median (on a shared, busy machine)")
    args = parser.parse_args()

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not fused_available(device):
        raise SystemExit(f"no fused gate kernel for {device} in this build; nothing to compare")
    torch.manual_seed(0)
    stat, stat_name = (min, "fastest") if args.best else (statistics.median, "median")
    print(f"device {device}, {torch.get_num_threads()} threads, {stat_name} of {args.repeat} calls")
    print("eager: grad*z, (grad*x).sum, importance += g^2; fused: pyns.gate.gate_backward (allocates "
          "grad_input as autograd must); kernel: the same pass into preallocated outputs (CPU only)")
    print(f"{'case':26s} {'shape':>20s} {'dtype':>9s} {'MB':>6s} {'eager ms':>9s} {'fused ms':>9s} "
          f"{'speed-up':>8s} {'kernel ms':>9s} {'speed-up':>8s}")
    for case in CASES:
        if args.quick and case.name not in QUICK:
            continue
        fmt = torch.channels_last if case.channels_last else torch.contiguous_format
        x = torch.randn(case.shape, device=device).to(case.dtype).contiguous(memory_format=fmt)
        grad = torch.randn(case.shape, device=device).to(case.dtype).contiguous(memory_format=fmt)
        z = torch.ones(case.shape[1], device=device)
        importance = torch.zeros(case.shape[1], dtype=torch.float64, device=device)
        batches = torch.zeros((), dtype=torch.int64, device=device)
        eager = time_call(lambda: eager_backward(grad, x, z, importance, batches), args.repeat, device, stat)
        fused = time_call(lambda: gate_backward(grad, x, z, importance, batches), args.repeat, device, stat)
        kernel_cols = ""
        if device.type == "cpu":
            kernel = time_call(kernel_only(grad, x, z, importance, batches), args.repeat, device, stat)
            kernel_cols = f" {kernel * 1e3:9.3f} {eager / kernel:7.2f}x"
        megabytes = x.numel() * x.element_size() / 2**20
        dtype = str(case.dtype).replace("torch.", "")
        print(f"{case.name:26s} {str(list(case.shape)):>20s} {dtype:>9s} {megabytes:6.1f} "
              f"{eager * 1e3:9.3f} {fused * 1e3:9.3f} {eager / fused:7.2f}x{kernel_cols}")


if __name__ == "__main__":
    main()
