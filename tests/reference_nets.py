"""Independent plain-torch oracles of the three NeuralScale CIFAR / TinyImageNet models.

These are written from SPEC §4 (and checked against the public NeuralScale code) WITHOUT importing
pyns, so tests can build pyns's DSL model and this oracle at the same (random) widths and compare
parameter counts, parameter shapes and MACs exactly.

Each constructor takes an explicit list of searchable widths:

* ``vgg11_cifar(widths)``              8 widths, one per conv.
* ``preact_resnet18(widths)``          17 widths: stem, then conv1/conv2 of each of the 8 blocks.
* ``mobilenetv2_neuralscale(widths)``  19 widths: stem, the 17 block outputs, the head.

Uniform scaling (the paper's baseline) is ``[int(w * r) for w in DEFAULT_WIDTHS]`` applied to ALL
searchable widths, the MobileNetV2 stem (32) and head (1280) included. This is what the public
NeuralScale code does (``prepare_filters`` scales every entry of its ``filters`` list, which holds
[32] and [1280]), and it is the only reading that reproduces all three MobileNetV2-CIFAR100 numbers
of the paper's Table 1 (0.20M / 1.42M / 9.30M at r = 0.25 / 0.75 / 2); see
``tests/test_reference_nets.py`` for the exact counts and the rejected alternatives.

MAC convention (SPEC §3): conv ``k_h*k_w*(C_in/groups)*C_out*H_out*W_out``, linear ``in*out``, batch
size 1; BN, activations, pooling, adds count 0.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

# --- default searchable widths --------------------------------------------------------------

VGG11_CFG: list[int | str] = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]
VGG11_DEFAULT_WIDTHS: list[int] = [w for w in VGG11_CFG if w != "M"]  # 8 widths

# stem | (conv1, conv2) of the 8 blocks, stage by stage
PREACT_RESNET18_DEFAULT_WIDTHS: list[int] = [64] + [64] * 4 + [128] * 4 + [256] * 4 + [512] * 4

# stem | 17 block outputs grouped by stage | head
MOBILENETV2_DEFAULT_WIDTHS: list[int] = (
    [32] + [16] + [24] * 2 + [32] * 3 + [64] * 4 + [96] * 3 + [160] * 3 + [320] + [1280]
)

# MobileNetV2 stage table: (number of blocks, expansion factor t, stride of the stage's first block)
_MBV2_STAGES_CIFAR: list[tuple[int, int, int]] = [
    (1, 1, 1), (2, 6, 2), (3, 6, 2), (4, 6, 2), (3, 6, 1), (3, 6, 2), (1, 6, 1),
]
# TinyImageNet images are 64x64 (twice CIFAR's side), so the fifth stage also downsamples
_MBV2_STAGES_TINY: list[tuple[int, int, int]] = [
    (1, 1, 1), (2, 6, 2), (3, 6, 2), (4, 6, 2), (3, 6, 2), (3, 6, 2), (1, 6, 1),
]


def uniform_widths(default: list[int], ratio: float) -> list[int]:
    """The paper's uniform-scaling baseline: every searchable width becomes int(w * r)."""
    return [int(w * ratio) for w in default]


def _check_widths(widths: list[int], expected_len: int, model: str) -> None:
    if len(widths) != expected_len:
        raise ValueError(f"{model} needs {expected_len} widths, got {len(widths)}")
    if any(int(w) != w or w < 1 for w in widths):
        raise ValueError(f"{model} widths must be positive integers, got {widths}")


# --- VGG11 (CIFAR) ---------------------------------------------------------------------------

class VGG11Cifar(nn.Module):
    def __init__(self, widths: list[int], num_classes: int = 10) -> None:
        super().__init__()
        _check_widths(widths, len(VGG11_DEFAULT_WIDTHS), "vgg11_cifar")
        layers: list[nn.Module] = []
        in_ch, width_iter = 3, iter(widths)
        for item in VGG11_CFG:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                out_ch = next(width_iter)
                layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=True),
                           nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]
                in_ch = out_ch
        self.features = nn.Sequential(*layers)
        # five 2x2 pools take 32x32 to 1x1, so the flattened feature is just the last width
        self.classifier = nn.Linear(widths[-1], num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # SPEC §4 / NeuralScale VGG init
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 0.5)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(torch.flatten(x, 1))  # (N, C, 1, 1) -> (N, C)


def vgg11_cifar(widths: list[int] | None = None, num_classes: int = 10) -> VGG11Cifar:
    return VGG11Cifar(list(widths or VGG11_DEFAULT_WIDTHS), num_classes)


# --- PreAct-ResNet18 ----------------------------------------------------------------------------

class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3; a 1x1 conv shortcut (no BN, no bias) on the pre-activated
    input when the stride or the width changes, the raw input otherwise (He et al. 2016 / the
    NeuralScale code)."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, mid_ch, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_ch)
        self.conv2 = nn.Conv2d(mid_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        skip = self.shortcut(pre) if self.shortcut is not None else x
        out = self.conv1(pre)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + skip


class PreActResNet18(nn.Module):
    def __init__(self, widths: list[int], num_classes: int = 10, tinyimagenet: bool = False) -> None:
        super().__init__()
        _check_widths(widths, len(PREACT_RESNET18_DEFAULT_WIDTHS), "preact_resnet18")
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        stage_strides = [2, 2, 2, 2] if tinyimagenet else [1, 2, 2, 2]
        blocks: list[nn.Module] = []
        in_ch = widths[0]
        for i in range(8):  # 4 stages x 2 blocks
            stride = stage_strides[i // 2] if i % 2 == 0 else 1
            mid_ch, out_ch = widths[1 + 2 * i], widths[2 + 2 * i]
            blocks.append(PreActBlock(in_ch, mid_ch, out_ch, stride))
            in_ch = out_ch
        self.blocks = nn.Sequential(*blocks)
        self.bn_out = nn.BatchNorm2d(in_ch)
        self.linear = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(self.conv1(x))
        out = F.relu(self.bn_out(out))
        out = F.adaptive_avg_pool2d(out, 1)
        return self.linear(torch.flatten(out, 1))  # (N, C, 1, 1) -> (N, C)


def preact_resnet18(widths: list[int] | None = None, num_classes: int = 10,
                    tinyimagenet: bool = False) -> PreActResNet18:
    return PreActResNet18(list(widths or PREACT_RESNET18_DEFAULT_WIDTHS), num_classes, tinyimagenet)


# --- MobileNetV2 (NeuralScale variant) -------------------------------------------------------------

class InvertedResidual(nn.Module):
    """expand 1x1 + BN + ReLU6, depthwise 3x3 + BN + ReLU6, project 1x1 + BN; every conv has a bias.
    The t=1 block keeps its (then square) expand conv, as in the NeuralScale code."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, t: int) -> None:
        super().__init__()
        hidden = in_ch * t
        self.residual = nn.Sequential(
            nn.Conv2d(in_ch, hidden, 1, bias=True),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=True),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, out_ch, 1, bias=True),
            nn.BatchNorm2d(out_ch),
        )
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=True),
                nn.BatchNorm2d(out_ch),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.shortcut(x) if self.shortcut is not None else x
        return self.residual(x) + skip


class MobileNetV2NeuralScale(nn.Module):
    def __init__(self, widths: list[int], num_classes: int = 10, tinyimagenet: bool = False) -> None:
        super().__init__()
        _check_widths(widths, len(MOBILENETV2_DEFAULT_WIDTHS), "mobilenetv2_neuralscale")
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=True),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU6(inplace=True),
        )
        stages = _MBV2_STAGES_TINY if tinyimagenet else _MBV2_STAGES_CIFAR
        blocks: list[nn.Module] = []
        in_ch, width_idx = widths[0], 1
        for n_blocks, t, first_stride in stages:
            for j in range(n_blocks):
                out_ch = widths[width_idx]
                blocks.append(InvertedResidual(in_ch, out_ch, first_stride if j == 0 else 1, t))
                in_ch, width_idx = out_ch, width_idx + 1
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.Conv2d(in_ch, widths[18], 1, bias=True),
            nn.BatchNorm2d(widths[18]),
            nn.ReLU6(inplace=True),
        )
        self.classifier = nn.Conv2d(widths[18], num_classes, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        x = self.classifier(F.adaptive_avg_pool2d(x, 1))
        return torch.flatten(x, 1)  # (N, classes, 1, 1) -> (N, classes)


def mobilenetv2_neuralscale(widths: list[int] | None = None, num_classes: int = 10,
                            tinyimagenet: bool = False) -> MobileNetV2NeuralScale:
    return MobileNetV2NeuralScale(list(widths or MOBILENETV2_DEFAULT_WIDTHS), num_classes, tinyimagenet)


# --- cost counting ----------------------------------------------------------------------------

def count_params(model: nn.Module) -> int:
    """Trainable parameters as SPEC §3 defines them (BN running stats are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters())


def macs_per_layer(model: nn.Module, resolution: int | tuple[int, int],
                   channels: int = 3) -> list[tuple[str, int]]:
    """(module name, MACs) for every Conv2d / Linear in forward order, one image of the given size.

    Works on meta-device modules too (a shape-only forward), so big networks need no memory."""
    h, w = (resolution, resolution) if isinstance(resolution, int) else resolution
    names = {m: n for n, m in model.named_modules()}
    records: list[tuple[str, int]] = []

    def hook(module: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            k_h, k_w = module.kernel_size
            per_output = k_h * k_w * (module.in_channels // module.groups)
            records.append((names[module], per_output * out.numel()))  # out is (1, C_out, H, W)
        else:
            records.append((names[module], module.in_features * module.out_features))

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    try:
        model.eval()
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.zeros(1, channels, h, w, device=device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return records


def macs(model: nn.Module, resolution: int | tuple[int, int], channels: int = 3) -> int:
    """Total multiply-accumulates (convs + linears only) at batch size 1."""
    return sum(m for _, m in macs_per_layer(model, resolution, channels))
