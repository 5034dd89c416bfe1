"""The channel-space records `channel_map` returns (see pyns.channels for what a space, a class, a block and a
composite are): `Space` and `ChannelMap`, with the look-ups the builder, shrinker and pruner share."""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from pyns.dsl.expr import Expr, evaluate


@dataclass
class Space:
    id: str
    width: Expr
    symbol: str | None  # the searchable symbol of a symbol space; None for a derived space
    # conv / linear layers whose output channels are this space (producers, depthwise convs and
    # projection shortcuts included): "the filters of the space"
    layers: list[str] = field(default_factory=list)
    se_reduce: str | None = None  # for a squeeze-excite's reduced space: the SE layer that makes it
    blocks: int = 1  # `M * s`: M blocks of s channels that keep equal sizes (see the module docstring)


@dataclass
class ChannelMap:
    spaces: dict[str, Space]
    # layer name -> role -> space id (None: a width that never changes). Roles: conv/linear "in", "out";
    # BatchNorm "channels"; squeeze-excite "channels", "reduced".
    layers: dict[str, dict[str, str | None]]
    flatten_hw: dict[str, int]  # Linear right after a Flatten: the H*W features of each channel
    grouped: list[str]  # grouped convs that are not depthwise: channels cannot keep their groups
    classes: list[tuple[str, ...]]  # spaces joined by identity adds, in order of first appearance
    frozen: set[str]  # spaces joined by an identity add to a width that never changes
    # concat layer name -> its output's segments, in channel order: (space id or None, width expression)
    composites: dict[str, list[tuple[str | None, Expr]]] = field(default_factory=dict)
    # layers that re-route channels (shuffle, misaligned slice) or mix channel statistics (LayerNorm):
    # layer name -> the role (space or composite id) whose changing width makes a shrink inexact there
    rerouted: dict[str, str] = field(default_factory=dict)
    composite_layers: dict[str, list[str]] = field(default_factory=dict)  # depthwise convs on a composite
    # composites whose every channel a conv has just written: one conv writing several spaces at once
    # (`conv(a + b)`), or a concat whose every branch ends in a conv (MixNet's mixed conv); gated per segment
    gated_composites: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._class_index = {space: i for i, members in enumerate(self.classes) for space in members}

    def class_of(self, space: str) -> tuple[str, ...]:
        return self.classes[self._class_index[space]]

    def symbol_classes(self) -> list[tuple[str, ...]]:
        """Classes holding a searchable symbol: the units of the global ranking."""
        return [c for c in self.classes if any(self.spaces[s].symbol for s in c)]

    def derived_classes(self) -> list[tuple[str, ...]]:
        """Classes of derived spaces only: each chooses its survivors within itself."""
        return [c for c in self.classes if not any(self.spaces[s].symbol for s in c)]

    def blocks(self, space: str | None) -> int:
        """Blocks of a space (1 for a plain space, a composite or None)."""
        sp = self.spaces.get(space) if space is not None else None
        return sp.blocks if sp is not None else 1

    def class_blocks(self, members: tuple[str, ...]) -> int:
        """Blocks a class's keep set must respect: every member's (their least common multiple)."""
        return math.lcm(*(self.blocks(m) for m in members))

    def width(self, space: str, env: Mapping[str, int]) -> int:
        if space in self.composites:
            return sum(int(evaluate(w, env)) for _, w in self.composites[space])
        return int(evaluate(self.spaces[space].width, env))

    def segments(self, role: str | None) -> list[str]:
        """The simple spaces a role's channels belong to (a composite's varying segments, in order)."""
        if role is None:
            return []
        if role in self.composites:
            return [s for s, _ in self.composites[role] if s is not None]
        return [role]
