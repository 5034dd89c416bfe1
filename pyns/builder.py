"""IR + concrete widths -> torch.nn.Module.

The module mirrors the IR tree: a `Sequential` of layers, with `ResidualBlock`s holding a body and an
optional projection. Parameter order follows the .arch source, so a file written in the order of a
public implementation yields the same `parameters()` shapes in the same order.
With `gates=True`, a `TaylorGate` follows every BatchNorm whose channels can be pruned (a searchable
width, or a width derived from searchable ones such as an expansion `6 * in`), and sits inside every
squeeze-excite whose reduced width can change (derived, or a searchable symbol of its own as in
imported networks: either way a channel space); each gate records the channel space it masks
(`gate.symbol`: the symbol's name, or the id of a derived space, see pyns.channels). A BN reading a
concatenation (DenseNet) is followed by `SegmentGates`: one gate per branch's channel space, on that
branch's channels of the concatenation.
"""
from __future__ import annotations

import math
from typing import Mapping

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from pyns import ir
from pyns.channels import ChannelMap, channel_map
from pyns.dsl.expr import evaluate, to_source
from pyns.errors import PynsError
from pyns.gate import TaylorGate, gate_backward

_ACTIVATIONS = {
    "relu": lambda: nn.ReLU(inplace=True), "relu6": lambda: nn.ReLU6(inplace=True), "swish": nn.SiLU,
    "silu": nn.SiLU, "hswish": nn.Hardswish, "hsigmoid": nn.Hardsigmoid, "sigmoid": nn.Sigmoid, "gelu": nn.GELU,
    "tanh": nn.Tanh, "leaky_relu": nn.LeakyReLU,
}


class SqueezeExcite(nn.Module):
    """`reduced_gate` masks the reduced channels (a pruning gate, or an Identity)."""

    def __init__(self, channels: int, reduced: int, act: str, gate: str, reduced_gate: nn.Module | None = None,
                 device: torch.device | str | None = None, bn: bool = False):
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, reduced, 1, bias=True, device=device)
        self.bn = nn.BatchNorm2d(reduced, device=device) if bn else nn.Identity()
        self.act = _ACTIVATIONS[act]()
        self.reduced_gate = reduced_gate if reduced_gate is not None else nn.Identity()
        self.conv_expand = nn.Conv2d(reduced, channels, 1, bias=True, device=device)
        self.gate = _ACTIVATIONS[gate]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)  # [N, C, 1, 1]
        # The pruning gate after the activation: a masked reduced channel is then 0 into conv_expand
        # whatever act(0) is, exactly as if it were removed.
        return x * self.gate(self.conv_expand(self.reduced_gate(self.act(self.bn(self.conv_reduce(s))))))


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


class PartialResidualBlock(ResidualBlock):
    """ReXNet's partial residual: the input added into the first channels of the body's (wider) output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        c = x.shape[1]
        return torch.cat([out[:, :c] + x, out[:, c:]], 1)


class SegmentGates(nn.Module):
    """The pruning gates of a tensor whose channels are several spaces side by side (a concat read by a BN,
    a conv writing `a + b`): one TaylorGate per varying segment, at its offset; fixed segments pass
    unchanged.

    The child gates hold the state (z, importance, the collector's views: pyns.gate.TaylorGate), but the
    tensor is gated in one multiply by their z side by side, and one fused backward (pyns.gate.gate_backward)
    forms dE/dz of every channel, which each child then accumulates as its own TaylorGate would. Gating
    each segment separately computes the same, in one split, a copy per segment and a cat: on DenseNet
    (up to 25 segments per BN) that made a training step ~1.5x slower.
    """

    def __init__(self, segments: list[tuple[int, nn.Module | None]]):
        super().__init__()
        self.widths = [w for w, _ in segments]
        self.gates = nn.ModuleList([g if g is not None else nn.Identity() for _, g in segments])

    def _z(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([g.z.to(x.dtype) if isinstance(g, TaylorGate) else torch.ones(w, dtype=x.dtype,
                                                                                         device=x.device)
                          for g, w in zip(self.gates, self.widths)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] != sum(self.widths):
            raise PynsError(f"The gates expect an input [N, C, ...] with C = {sum(self.widths)} channels, "
                            f"got shape {tuple(x.shape)}.")
        z = self._z(x)
        if torch.is_grad_enabled() and x.requires_grad:
            return _SegmentGateFunction.apply(x, z, self)
        return x * z.view(1, -1, *[1] * (x.dim() - 2))


def _accumulate(gate: TaylorGate, g: torch.Tensor) -> None:
    """What TaylorGate's backward does with its dE/dz `g` (pyns.gate.TaylorGate.forward, GateFunction)."""
    if gate.taylor_squares is not None:
        gate.taylor_squares.addcmul_(g, g)  # the collector counts minibatches itself
    elif gate.accumulate:
        gate.importance.addcmul_(g, g)
        gate.batches += 1
    if gate.taylor_sum is not None:
        gate.taylor_sum += g


class _SegmentGateFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, z: torch.Tensor, module: SegmentGates) -> torch.Tensor:
        ctx.save_for_backward(x, z)  # x itself: the output may be changed in place (ReLU(inplace=True))
        ctx.module = module
        return x * z.view(1, -1, *[1] * (x.dim() - 2))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, z = ctx.saved_tensors
        grad_input, g = gate_backward(grad, x, z, need_grad_input=ctx.needs_input_grad[0])
        offset = 0
        for gate, width in zip(ctx.module.gates, ctx.module.widths):
            if isinstance(gate, TaylorGate):
                _accumulate(gate, g[offset:offset + width])
            offset += width
        return grad_input, None, None


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
    def __init__(self, channels: int, device: torch.device | str | None = None):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(channels, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma.view(1, -1, 1, 1)


def _value(expr, env: Mapping[str, int]) -> int:
    value = int(evaluate(expr, env))
    if value < 1:
        raise PynsError(f"these widths give a layer width `{to_source(expr)}` = {value}; every layer needs >= 1")
    return value


def _gate(channels: int, symbol: str, device=None):
    gate = TaylorGate(channels, device=device)
    gate.symbol = symbol
    return gate


def _gate_space(node: ir.Node, following: ir.Node | None, cmap: ChannelMap) -> str | None:
    """The channel space whose channels a gate after `node` would mask, or None for no gate.

    Gates go after every BN of a prunable space (searchable or derived width), and after every conv /
    linear whose output is in one with no BN right behind it (e.g. a pre-activation block's last conv,
    whose output joins the residual stream). Masking channel c at all gates of its space then zeroes that
    channel on every path it takes, identity shortcuts and biased depthwise convs included, which is
    exactly what removing it does. On a composite (a concat's output, or a conv writing several spaces)
    the composite's id is returned: `SegmentGates` gate each of its spaces there.
    """
    roles = cmap.layers.get(getattr(node, "name", None), {})
    space = None
    if isinstance(node, ir.BatchNorm):
        space = roles.get("channels")
    elif isinstance(node, (ir.Conv, ir.Linear, ir.ChannelLinear)) and not isinstance(following, ir.BatchNorm):
        space = roles.get("out")
    # A composite (a concat's output, or a conv writing several spaces at once, `conv(a + b)`) has a
    # gate per space (SegmentGates). After a BN reading a concat (DenseNet) a masked channel of a branch
    # is its BN's beta, not 0: the gates there make it 0 again, exactly as if it were removed.
    return space


def _gates_of(space: str, env, cmap: ChannelMap, gates: bool, device) -> nn.Module:
    if not gates:
        return nn.Identity()
    if space not in cmap.composites:
        return _gate(_value(cmap.spaces[space].width, env), space, device)
    return SegmentGates([(_value(w, env), _gate(_value(w, env), sid, device) if sid is not None else None)
                         for sid, w in cmap.composites[space]])


def _build(nodes: list[ir.Node], env: Mapping[str, int], gates: bool, cmap: ChannelMap,
           device=None) -> nn.Sequential:
    modules: list[nn.Module] = []
    for index, node in enumerate(nodes):
        if isinstance(node, ir.Conv):
            cin, cout, groups = _value(node.in_ch, env), _value(node.out_ch, env), _value(node.groups, env)
            if cin % groups or cout % groups:
                raise PynsError(f"{node.name}: groups {groups} does not divide widths {cin} -> {cout}")
            conv = nn.Conv2d(cin, cout, node.kernel, node.stride, node.padding, dilation=node.dilation,
                             groups=groups, bias=node.bias, device=device)
            conv.pyns_layer = node  # type: ignore[attr-defined]  # lets the pruner map weights back to the IR
            modules.append(conv)
        elif isinstance(node, ir.BatchNorm):
            c = _value(node.channels, env)
            bn = (nn.BatchNorm2d(c, eps=node.eps, device=device) if node.spatial
                  else nn.BatchNorm1d(c, eps=node.eps, device=device))
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
            lin = nn.Linear(_value(node.in_features, env), _value(node.out_features, env), bias=node.bias,
                            device=device)
            lin.pyns_layer = node  # type: ignore[attr-defined]
            modules.append(lin)
        elif isinstance(node, ir.Dropout):
            modules.append(nn.Dropout(node.p))
        elif isinstance(node, ir.SqueezeExcite):
            reduced, reduced_space = _value(node.reduced, env), cmap.layers[node.name]["reduced"]
            reduced_gate = _gate(reduced, reduced_space, device) if gates and reduced_space is not None else None
            se = SqueezeExcite(_value(node.channels, env), reduced, node.act, node.gate, reduced_gate, device,
                               node.bn)
            se.pyns_layer = node  # type: ignore[attr-defined]
            modules.append(se)
        elif isinstance(node, ir.Residual):
            modules.append(_build_residual(node, env, gates, cmap, device))
        elif isinstance(node, ir.LayerNorm):
            ln = ChannelLayerNorm(_value(node.channels, env), eps=node.eps, device=device)
            ln.pyns_layer = node  # type: ignore[attr-defined]
            modules.append(ln)
        elif isinstance(node, ir.ChannelLinear):
            lin = ChannelLinear(_value(node.in_ch, env), _value(node.out_ch, env), bias=node.bias, device=device)
            lin.pyns_layer = node  # type: ignore[attr-defined]
            modules.append(lin)
        elif isinstance(node, ir.Scale):
            scale = LayerScale(_value(node.channels, env), device=device)
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
            modules.append(ConcatBlock([_build(b, env, gates, cmap, device) for b in node.branches]))
        following = nodes[index + 1] if index + 1 < len(nodes) else None
        space = _gate_space(node, following, cmap)
        if space is not None:
            # An Identity holds the gate's slot in ungated models, so gated and plain models share
            # state_dict keys (weights move between them with load_state_dict).
            modules.append(_gates_of(space, env, cmap, gates, device))
    return nn.Sequential(*modules)


def _build_residual(node: ir.Residual, env, gates, cmap: ChannelMap, device) -> ResidualBlock:
    body = _build(node.body, env, gates, cmap, device)
    differs = bool(evaluate(node.project_when, env))
    if node.mode == "identity":
        a, b = _value(node.in_ch, env), _value(node.out_ch, env)
        if a != b:
            raise PynsError(f"{node.name}: identity shortcut joins widths {a} and {b}; these widths are tied "
                            "and must be equal")
        return ResidualBlock(body, None, True)
    if node.mode == "none":
        return ResidualBlock(body, None, not differs)
    if node.mode == "partial":
        a, b = _value(node.in_ch, env), _value(node.out_ch, env)
        if b < a:
            raise PynsError(f"{node.name}: a partial residual adds {a} input channels into a body output of {b}")
        return PartialResidualBlock(body, None, True)
    shortcut = _build(node.shortcut, env, gates, cmap, device) if differs else None
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
                 init: str | None = None, device: torch.device | str | None = None) -> Network:
    """The module of `network` at `widths` (completed with the defaults), initialised by its init
    scheme; with `device="meta"`, shape-only and uninitialised (the shrinker fills it with old weights)."""
    env = dict(network.defaults())
    env.update(widths)
    model = Network(network, env, _build(network.layers, env, gates, channel_map(network, env), device))
    init_name = init or network.params.get("init", None) or "neuralscale"
    if isinstance(init_name, (int, float)):
        init_name = "neuralscale"
    if not any(p.is_meta for p in model.parameters()):  # shape-only (meta) modules have nothing to initialise
        INITS[init_name](model)
    return model
