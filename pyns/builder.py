"""IR + concrete widths -> torch.nn.Module.

The module mirrors the IR tree: a `Sequential` of layers, with `ResidualBlock`s holding a body and an
optional projection. Parameter order follows the .arch source, so a file written in the order of a
public implementation yields the same `parameters()` shapes in the same order.
With `gates=True`, a `TaylorGate` follows every BatchNorm whose width is a searchable symbol; the gate
records which symbol it belongs to (tied widths share a symbol, hence one pruning group).
"""
from __future__ import annotations

import math
from typing import Mapping

import torch
from torch import nn

from pyns import ir
from pyns.dsl.expr import Sym, evaluate, to_source
from pyns.errors import PynsError
from pyns.gate import TaylorGate

_ACTIVATIONS = {
    "relu": lambda: nn.ReLU(inplace=True), "relu6": lambda: nn.ReLU6(inplace=True), "swish": nn.SiLU,
    "silu": nn.SiLU, "hswish": nn.Hardswish, "hsigmoid": nn.Hardsigmoid, "sigmoid": nn.Sigmoid, "gelu": nn.GELU,
    "tanh": nn.Tanh, "leaky_relu": nn.LeakyReLU,
}


class SqueezeExcite(nn.Module):
    """`units` is the pruning gate on the squeezed channels (an Identity unless the squeeze width is a
    searchable symbol of its own, as in imported networks): zeroing a squeezed channel there is removing it."""

    def __init__(self, channels: int, reduced: int, act: str, gate: str, units: nn.Module | None = None):
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, reduced, 1, bias=True)
        self.act = _ACTIVATIONS[act]()
        self.units = units if units is not None else nn.Identity()
        self.conv_expand = nn.Conv2d(reduced, channels, 1, bias=True)
        self.gate = _ACTIVATIONS[gate]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)  # [N, C, 1, 1]
        return x * self.gate(self.conv_expand(self.units(self.act(self.conv_reduce(s)))))


class ResidualBlock(nn.Module):
    """body(x) + shortcut(x); `add=False` is torchvision MobileNetV2's "no residual when shapes differ"."""

    def __init__(self, body: nn.Module, shortcut: nn.Module | None, add: bool):
        super().__init__()
        self.body = body
        self.shortcut = shortcut
        self.add = add

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        if not self.add:
            return out
        return out + (self.shortcut(x) if self.shortcut is not None else x)


class ConcatBlock(nn.Module):
    """torch.cat of the branches' outputs along channels; an empty branch is the input itself."""

    def __init__(self, branches: list[nn.Module]):
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([b(x) for b in self.branches], 1)


class ChannelSlice(nn.Module):
    def __init__(self, start: int, width: int):
        super().__init__()
        self.start, self.width = start, width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.start:self.start + self.width]


class ChannelShuffle(nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of [N, C, H, W] (channels-last inside, as ConvNeXt computes it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ChannelLinear(nn.Linear):
    """A Linear on the channels of [N, C, H, W] at every position."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class LayerScale(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma.view(1, -1, 1, 1)


def _value(expr, env: Mapping[str, int]) -> int:
    value = int(evaluate(expr, env))
    if value < 1:
        raise PynsError(f"these widths give a layer width `{to_source(expr)}` = {value}; every layer needs >= 1")
    return value


def _gate(channels: int, symbol: str):
    gate = TaylorGate(channels)
    gate.symbol = symbol
    return gate


def _gate_symbol(node: ir.Node, following: ir.Node | None, searchable: set[str]) -> str | None:
    """The searchable symbol whose channels a gate after `node` would mask, or None for no gate.

    Gates go after every BN of a searchable width, and after every conv/linear *producing* a searchable
    width with no BN right behind it (e.g. a pre-activation block's last conv, whose output joins the
    residual stream). Masking channel c at all of a symbol's gates then zeroes that channel on every path
    it takes, identity shortcuts included, which is exactly what removing it does.
    """
    if isinstance(node, ir.BatchNorm):
        width = node.channels
    elif isinstance(node, ir.Conv):
        width = node.out_ch
    elif isinstance(node, ir.Linear):
        width = node.out_features
    else:
        return None
    if not (isinstance(width, Sym) and width.name in searchable):
        return None
    if not isinstance(node, ir.BatchNorm) and isinstance(following, ir.BatchNorm):
        return None  # the BN right after carries the gate
    return width.name


def _build(nodes: list[ir.Node], env: Mapping[str, int], gates: bool, searchable: set[str]) -> nn.Sequential:
    modules: list[nn.Module] = []
    for index, node in enumerate(nodes):
        if isinstance(node, ir.Conv):
            cin, cout, groups = _value(node.in_ch, env), _value(node.out_ch, env), _value(node.groups, env)
            if cin % groups or cout % groups:
                raise PynsError(f"{node.name}: groups {groups} does not divide widths {cin} -> {cout}")
            conv = nn.Conv2d(cin, cout, node.kernel, node.stride, node.padding, dilation=node.dilation,
                             groups=groups, bias=node.bias)
            conv.pyns_layer = node  # type: ignore[attr-defined]  # lets the pruner map weights back to the IR
            modules.append(conv)
        elif isinstance(node, ir.BatchNorm):
            c = _value(node.channels, env)
            bn = nn.BatchNorm2d(c, eps=node.eps) if node.spatial else nn.BatchNorm1d(c, eps=node.eps)
            bn.pyns_layer = node  # type: ignore[attr-defined]
            modules.append(bn)
        elif isinstance(node, ir.Activation):
            modules.append(_ACTIVATIONS[node.kind]())
        elif isinstance(node, ir.Pool):
            if node.kind == "max":
                modules.append(nn.MaxPool2d(node.kernel, node.stride, node.padding, ceil_mode=node.ceil))
            elif node.kind == "avg":
                modules.append(nn.AvgPool2d(node.kernel, node.stride, node.padding, ceil_mode=node.ceil,
                                            count_include_pad=not node.exclude_pad))
            else:
                modules.append(nn.AdaptiveAvgPool2d(node.out_hw))
        elif isinstance(node, ir.Flatten):
            modules.append(nn.Flatten(1))
        elif isinstance(node, ir.Linear):
            lin = nn.Linear(_value(node.in_features, env), _value(node.out_features, env), bias=node.bias)
            lin.pyns_layer = node  # type: ignore[attr-defined]
            modules.append(lin)
        elif isinstance(node, ir.Dropout):
            modules.append(nn.Dropout(node.p))
        elif isinstance(node, ir.SqueezeExcite):
            reduced = node.reduced.name if isinstance(node.reduced, Sym) and node.reduced.name in searchable else None
            units = _gate(env[reduced], reduced) if gates and reduced else None
            se = SqueezeExcite(_value(node.channels, env), _value(node.reduced, env), node.act, node.gate, units)
            se.pyns_layer = node  # type: ignore[attr-defined]
            modules.append(se)
        elif isinstance(node, ir.Residual):
            modules.append(_build_residual(node, env, gates, searchable))
        elif isinstance(node, ir.LayerNorm):
            ln = ChannelLayerNorm(_value(node.channels, env), eps=node.eps)
            ln.pyns_layer = node  # type: ignore[attr-defined]
            modules.append(ln)
        elif isinstance(node, ir.ChannelLinear):
            lin = ChannelLinear(_value(node.in_ch, env), _value(node.out_ch, env), bias=node.bias)
            lin.pyns_layer = node  # type: ignore[attr-defined]
            modules.append(lin)
        elif isinstance(node, ir.Scale):
            scale = LayerScale(_value(node.channels, env))
            scale.pyns_layer = node  # type: ignore[attr-defined]
            modules.append(scale)
        elif isinstance(node, ir.Slice):
            start, width, total = int(evaluate(node.start, env)), _value(node.width, env), _value(node.in_ch, env)
            if start < 0 or start + width > total:
                raise PynsError(f"{node.name}: channels {start}..{start + width} of {total} do not exist")
            modules.append(ChannelSlice(start, width))
        elif isinstance(node, ir.Shuffle):
            if _value(node.channels, env) % node.groups:
                raise PynsError(f"{node.name}: shuffle({node.groups}) of {_value(node.channels, env)} channels")
            modules.append(ChannelShuffle(node.groups))
        elif isinstance(node, ir.Concat):
            modules.append(ConcatBlock([_build(b, env, gates, searchable) for b in node.branches]))
        following = nodes[index + 1] if index + 1 < len(nodes) else None
        symbol = _gate_symbol(node, following, searchable)
        if symbol is not None:
            # An Identity holds the gate's slot in ungated models, so gated and plain models share
            # state_dict keys (weights move between them with load_state_dict).
            modules.append(_gate(env[symbol], symbol) if gates else nn.Identity())
    return nn.Sequential(*modules)


def _build_residual(node: ir.Residual, env, gates, searchable) -> ResidualBlock:
    body = _build(node.body, env, gates, searchable)
    differs = bool(evaluate(node.project_when, env))
    if node.mode == "identity":
        a, b = _value(node.in_ch, env), _value(node.out_ch, env)
        if a != b:
            raise PynsError(f"{node.name}: identity shortcut joins widths {a} and {b}; these widths are tied "
                            "and must be equal")
        return ResidualBlock(body, None, True)
    if node.mode == "none":
        return ResidualBlock(body, None, not differs)
    shortcut = _build(node.shortcut, env, gates, searchable) if differs else None
    return ResidualBlock(body, shortcut, True)


def _init(module: nn.Module, bn_gamma: float, linear_init) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.constant_(m.weight, bn_gamma)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            linear_init(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def init_neuralscale(module: nn.Module) -> None:
    """SPEC §4 init: Kaiming normal (fan_out) convs, BN gamma 0.5 (the reference code's) / beta 0,
    linear N(0, 0.01)."""
    _init(module, 0.5, lambda w: nn.init.normal_(w, 0.0, 0.01))


def init_default(module: nn.Module) -> None:
    """torchvision-style: Kaiming fan_out convs, BN gamma 1, linear uniform(+-1/sqrt(fan_in))."""
    _init(module, 1.0, lambda w: nn.init.uniform_(w, -1.0 / math.sqrt(w.shape[1]), 1.0 / math.sqrt(w.shape[1])))


INITS = {"neuralscale": init_neuralscale, "default": init_default}


class Network(nn.Module):
    """The built model; `.widths` and `.network` (the IR) travel with it."""

    def __init__(self, network: ir.Network, widths: Mapping[str, int], layers: nn.Sequential):
        super().__init__()
        self.layers = layers
        self.widths = dict(widths)
        self.ir = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def gates(self):
        return [m for m in self.modules() if isinstance(m, TaylorGate)]


def build_module(network: ir.Network, widths: Mapping[str, int], *, gates: bool = False,
                 init: str | None = None) -> Network:
    searchable = {s.name for s in network.searchable}
    env = dict(network.defaults())
    env.update(widths)
    model = Network(network, env, _build(network.layers, env, gates, searchable))
    init_name = init or network.params.get("init", None) or "neuralscale"
    if isinstance(init_name, (int, float)):
        init_name = "neuralscale"
    if not any(p.is_meta for p in model.parameters()):  # shape-only (meta) modules have nothing to initialise
        INITS[init_name](model)
    return model
