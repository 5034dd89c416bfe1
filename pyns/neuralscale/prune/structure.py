"""The network a pruning run trains: the architecture with its shortcut structure pinned at the start.

Whether a residual block projects (or, for torchvision-style blocks, adds at all) depends on its widths
(`project_when`). Pruning can make two widths equal mid-run; an unpinned rebuild would then drop the
projection, merge the two widths into one tied class for good and change the architecture under the
search. A masked network (the reference code's) keeps every projection, and so does pyns: the run's
`PrunedNetwork` pins the shortcuts at the start widths (pyns.channels.pin_shortcuts) and counts, builds
and ranks that network at every step. Its channel map (spaces, classes, filters) is fixed for the run.

A per-group width `M * s` (pyns.channels: M blocks of s channels, ResNeXt / RegNet) is one class whose
units are its per-group channels: unit k scores the k-th least important channel of every block, averaged
(`unit_scores`), and removing n units drops each block's own n least important channels (`survivors`),
so every conv group keeps the same size.

τ in the trajectory is therefore the parameter count of the network actually trained, projections that
the widths alone would no longer ask for included; `Arch.count` of a row's widths differs from it only
on such steps.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from pyns.builder import build_module
from pyns.channels import ChannelMap, channel_map, count_filters, pin_shortcuts
from pyns.cost.program import compile_program
from pyns.neuralscale.prune.keep import top_positions

__all__ = ["PrunedNetwork"]


class PrunedNetwork:
    """`arch` with shortcuts pinned at `start` widths: count, build, channel classes and filters."""

    def __init__(self, arch, start: Mapping[str, int]):
        self.arch = arch
        self.network = pin_shortcuts(arch.network, arch.widths(start))
        self.program, _ = compile_program(self.network)
        self.cmap: ChannelMap = channel_map(self.network, arch.widths(start))
        self.symbol_classes = self.cmap.symbol_classes()
        self.derived_classes = self.cmap.derived_classes()
        self.classes = self.symbol_classes + self.derived_classes
        self.blocks = [self.cmap.class_blocks(c) for c in self.classes]  # per class: 1, or M of `M * s`

    def count(self, widths: Mapping[str, int]) -> tuple[int, int]:
        """(params, MACs) of the pinned network at `widths`, from the cost engine."""
        full = self.arch.widths(widths)
        vec = np.array([full[s] for s in self.network.symbol_names], dtype=np.float64)
        params, macs = self.program.evaluate(vec)
        return int(params), int(macs)

    def build(self, widths: Mapping[str, int]):
        return build_module(self.network, self.arch.widths(widths), gates=True)

    def width(self, space: str, widths: Mapping[str, int]) -> int:
        return self.cmap.width(space, self.arch.widths(widths))

    def filters(self, widths: Mapping[str, int]) -> int:
        """Filters of the searchable widths (pyns.channels.count_filters): what the 95% stop counts."""
        return count_filters(self.cmap, self.arch.widths(widths))

    def units(self, widths: Mapping[str, int]) -> int:
        """Channels the global ranking chooses from: one per channel of each class of symbols."""
        full = self.arch.widths(widths)
        return sum(self.cmap.width(c[0], full) // b for c, b in zip(self.symbol_classes, self.blocks))

    def unit_scores(self, index: int, importance: torch.Tensor) -> torch.Tensor:
        """Per unit of class `index` (of `classes`), its score for the global ranking, from the importance
        of its live channels: the channels themselves, or for M blocks of s channels, s units whose k-th
        is the mean of the k-th smallest importance of every block (ascending, so units go in order).
        The mean, not the sum (the first-order cost of removing all M channels at once), so that a unit
        competes per filter with the single channels of other widths: a sum over 32 groups would rank
        ResNeXt's per-group widths behind every other channel, and they would never be pruned."""
        blocks = self.blocks[index]
        if blocks == 1:
            return importance
        return torch.sort(importance.reshape(blocks, -1), dim=1).values.mean(dim=0)

    def survivors(self, index: int, importance: torch.Tensor, removed: list[int]) -> list[int]:
        """Positions (into the live channels) that class `index` keeps after losing the units `removed`
        (positions into `unit_scores`): the other channels, or each block's most important ones."""
        blocks = self.blocks[index]
        if blocks == 1:
            gone = set(removed)
            return [i for i in range(importance.numel()) if i not in gone]
        return top_positions(importance, importance.numel() - blocks * len(removed), blocks)

    def floors(self, min_width: int) -> list[int]:
        """Per symbol class, the width it may not go below: min_width or its symbols' declared minimum."""
        minimum = {sym.name: sym.minimum for sym in self.arch.symbols}
        return [max(min_width, *(minimum[s] for s in c if self.cmap.spaces[s].symbol)) for c in self.symbol_classes]
