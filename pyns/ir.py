"""The typed intermediate representation every part of pyns consumes.

The DSL elaborates an .arch source into a `Network`: a tree of layers (residual blocks nest) whose
channel counts are `Expr`s over width symbols. Spatial sizes are concrete, because an IR is specialised
to one resolution and one depth multiplier; widths stay symbolic so that the cost engine, the solvers and
the pruner can vary them without re-elaborating. Nothing downstream re-parses text.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Mapping, Union

from pyns.dsl.expr import Const, Expr, Number, Sym, evaluate
from pyns.errors import SourcePos


@dataclass(frozen=True)
class WidthSymbol:
    name: str
    default: int
    searchable: bool
    roles: tuple[str, ...] = ()
    pos: SourcePos | None = None
    minimum: int = 1  # the smallest width a solver or a user may give it


@dataclass
class Conv:
    name: str
    in_ch: Expr
    out_ch: Expr
    kernel: int
    stride: int
    padding: int
    groups: Expr
    bias: bool
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    pos: SourcePos | None = None
    dilation: int = 1  # spreads the taps; changes the output size, not the cost per output


@dataclass
class BatchNorm:
    name: str
    channels: Expr
    spatial: bool  # BatchNorm2d after a conv, BatchNorm1d after flatten/linear
    pos: SourcePos | None = None
    eps: float = 1e-5  # torch's default; MobileNetV3 / TF-ported nets use 1e-3


@dataclass
class Activation:
    name: str
    kind: str  # one of pyns.dsl.elaborate.ACTIVATIONS
    pos: SourcePos | None = None


@dataclass
class Pool:
    name: str
    kind: str  # max | avg | adaptive_avg
    kernel: int
    stride: int
    padding: int
    channels: Expr
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    pos: SourcePos | None = None
    ceil: bool = False  # ceil_mode: a last, partial window (GoogLeNet, SqueezeNet)
    exclude_pad: bool = False  # average pooling divides by the window's in-bounds size (count_include_pad off)


@dataclass
class Flatten:
    name: str
    channels: Expr
    features: Expr  # channels * H * W
    pos: SourcePos | None = None


@dataclass
class Linear:
    name: str
    in_features: Expr
    out_features: Expr
    bias: bool
    pos: SourcePos | None = None


@dataclass
class Dropout:
    name: str
    p: float
    pos: SourcePos | None = None


@dataclass
class SqueezeExcite:
    """Global pool, 1x1 conv down to `reduced` (+bias), [BatchNorm,] act, 1x1 conv back up (+bias), gate,
    multiply. `bn`: a BatchNorm (eps 1e-5) on the reduced channels before the act (timm's ReXNet)."""

    name: str
    channels: Expr
    reduced: Expr
    act: str
    gate: str
    pos: SourcePos | None = None
    bn: bool = False


@dataclass
class Residual:
    """`body(x) + shortcut(x)`.

    mode 'identity': the add always happens, with an identity shortcut (widths must agree).
    mode 'project': identity when `project_when` is 0, else the `shortcut` layers (a strided 1x1 conv,
    maybe with BN). mode 'none': the add happens only when `project_when` is 0 (torchvision MobileNetV2).
    mode 'partial': the input is added into the first `in_ch` of the body's `out_ch` >= `in_ch` channels and
    the others pass unchanged (ReXNet's `cat([out[:, :in] + x, out[:, in:]])`); no shortcut layers.
    `project_when` is an Expr over widths, 1 when stride or width differs, folded to a Const when static.
    """

    name: str
    body: list["Node"]
    shortcut: list["Node"]
    mode: str
    in_ch: Expr
    out_ch: Expr
    stride: int
    project_when: Expr = field(default_factory=lambda: Const(0))
    pos: SourcePos | None = None


@dataclass
class Concat:
    """`cat([branch(x) for branch in branches], dim=1)`: every branch reads the same input; an empty
    branch passes the input itself (DenseNet). `out_ch` is the sum of the branches' widths."""

    name: str
    branches: list[list["Node"]]
    in_ch: Expr
    out_ch: Expr
    pos: SourcePos | None = None


@dataclass
class Slice:
    """Channels [start, start + width) of the input (one part of a split / chunk)."""

    name: str
    start: Expr
    width: Expr
    in_ch: Expr
    pos: SourcePos | None = None


@dataclass
class Shuffle:
    """ShuffleNet's channel shuffle: view as [groups, C / groups], transpose, flatten back."""

    name: str
    groups: int
    channels: Expr
    pos: SourcePos | None = None


@dataclass
class LayerNorm:
    """LayerNorm over the channels at every position (ConvNeXt's permute -> LayerNorm(C) -> permute)."""

    name: str
    channels: Expr
    eps: float = 1e-6
    pos: SourcePos | None = None


@dataclass
class ChannelLinear:
    """A Linear layer acting on the channels at every position (ConvNeXt's MLP): a 1x1 conv's cost,
    in * out MACs per position, stored as a Linear weight [out, in]."""

    name: str
    in_ch: Expr
    out_ch: Expr
    bias: bool
    hw: tuple[int, int]
    pos: SourcePos | None = None


@dataclass
class Scale:
    """A learned per-channel multiplier (ConvNeXt's layer scale gamma): `channels` parameters."""

    name: str
    channels: Expr
    pos: SourcePos | None = None


Node = Union[Conv, BatchNorm, Activation, Pool, Flatten, Linear, Dropout, SqueezeExcite, Residual, Concat, Slice,
             Shuffle, LayerNorm, ChannelLinear, Scale]
COUNTED = (Conv, BatchNorm, Linear, SqueezeExcite, LayerNorm, ChannelLinear, Scale)


@dataclass
class Network:
    name: str
    variant: str | None
    params: dict[str, Number]
    policy: str
    symbols: list[WidthSymbol]
    layers: list[Node]
    in_channels: int
    resolution: int
    depth_mult: float
    out_features: Expr
    source_file: str = "<string>"

    @property
    def searchable(self) -> list[WidthSymbol]:
        return [s for s in self.symbols if s.searchable]

    @property
    def symbol_names(self) -> list[str]:
        return [s.name for s in self.symbols]

    def defaults(self) -> dict[str, int]:
        return {s.name: s.default for s in self.symbols}


def every_node(nodes: list[Node]) -> Iterator[Node]:
    """Every node of the tree, containers (residuals, concats) and all their branches included, whatever a
    shortcut's mode; `walk` gives the layers that count at given widths instead."""
    for node in nodes:
        yield node
        if isinstance(node, Residual):
            yield from every_node(node.body)
            yield from every_node(node.shortcut)
        elif isinstance(node, Concat):
            for branch in node.branches:
                yield from every_node(branch)


def walk(nodes: list[Node], active: Mapping[str, Number] | None = None) -> Iterator[tuple[Node, Expr]]:
    """Yield every leaf layer with its multiplicity Expr (Const(1), or a residual's `project_when`).

    With `active` widths given, shortcut layers whose condition is 0 are skipped and the multiplicity is
    folded; without, conditions stay symbolic for the cost-program compiler.
    """
    for node in nodes:
        if isinstance(node, Concat):
            for branch in node.branches:
                yield from walk(branch, active)
        elif isinstance(node, Residual):
            yield from walk(node.body, active)
            if node.mode == "project" and node.shortcut:
                if active is None:
                    for leaf, _ in walk(node.shortcut, None):
                        yield leaf, node.project_when
                elif evaluate(node.project_when, active):
                    yield from walk(node.shortcut, active)
        else:
            yield node, Const(1)


def tied_groups(network: Network, widths: Mapping[str, Number]) -> list[list[str]]:
    """Searchable symbols joined by an identity add at these widths, as groups (singletons included).

    Channels that meet in an add must be pruned together, so a group shrinks as one unit.
    """
    parent = {s.name: s.name for s in network.searchable}

    def find(a: str) -> str:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def visit(nodes: list[Node]) -> None:
        for node in nodes:
            if isinstance(node, Concat):
                for branch in node.branches:
                    visit(branch)
            if not isinstance(node, Residual):
                continue
            visit(node.body)
            # A partial add joins the input to part of the output only: no two symbols are made equal.
            adds_identity = node.mode == "identity" or (node.mode != "partial"
                                                        and not evaluate(node.project_when, widths))
            if adds_identity and isinstance(node.in_ch, Sym) and isinstance(node.out_ch, Sym):
                if node.in_ch.name in parent and node.out_ch.name in parent:
                    parent[find(node.in_ch.name)] = find(node.out_ch.name)

    visit(network.layers)
    groups: dict[str, list[str]] = {}
    for name in parent:
        groups.setdefault(find(name), []).append(name)
    return list(groups.values())
