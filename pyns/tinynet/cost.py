"""An architecture at TinyNet's multipliers: resolution r, depth d and width w, counted cheaply.

`stage_repeats` gives the repeat counts of the body's top-level `repeat` statements (the stages) at a depth
multiplier under the arch's policy, `CostPath` the params, MACs, widths and resolution at any (r, d, w),
compiling the cost program once per distinct network. `with_policy` re-reads an arch under another
scaling policy.
"""
from __future__ import annotations

from dataclasses import dataclass

from pyns.arch import Arch
from pyns.dsl.elaborate import Elaborator, Settings
from pyns.errors import BudgetError
from pyns.policies import scale_resolution

__all__ = ["Stage", "with_policy", "record_repeats", "stage_repeats", "CostPath"]


@dataclass(frozen=True)
class Stage:
    """One top-level `repeat(n) { ... }` of the body: a stage of an EfficientNet-style network."""

    line: int     # source line of the repeat statement
    base: int     # repeat count written in the file
    repeats: int  # after depth scaling under the policy


def with_policy(arch: Arch, policy: str) -> Arch:
    """The same architecture (variant, parameters) under another scaling policy."""
    if arch.policy.name == policy:
        return arch
    return Arch(arch.source, variant=arch.variant, policy=policy, params=arch.params)


class _RepeatRecorder(Elaborator):
    """An elaboration that also records every repeat statement it expands: its count's place in the source,
    the count written there, the count after depth scaling, and whether it is a top-level stage."""

    def __init__(self, src, settings: Settings):
        super().__init__(src, settings)
        self.records: list[tuple[int, int, int, int, int, bool]] = []  # start, end, line, base, scaled, stage
        self._nesting = 0

    def repeat(self, stmt, scope, state, namer):
        count_tree = stmt.children[0]
        base = self.static_int(self.expr(count_tree, scope, state), "a repeat count", count_tree.meta, 1)
        scaled = self.policy.depth(base, self.settings.depth_mult)
        top_level = self._nesting == 0 and not self.call_stack
        self.records.append((count_tree.meta.start_pos, count_tree.meta.end_pos, stmt.meta.line, base, scaled,
                             top_level))
        self._nesting += 1
        try:
            return super().repeat(stmt, scope, state, namer)
        finally:
            self._nesting -= 1


def record_repeats(arch: Arch, depth: float) -> list[tuple[int, int, int, int, int, bool]]:
    settings = Settings(params=dict(arch.params), variant=arch.variant, policy=arch.policy.name,
                        depth_mult=depth, resolution=None)
    recorder = _RepeatRecorder(arch.source, settings)
    recorder.run()
    return recorder.records


def stage_repeats(arch: Arch, depth: float) -> list[Stage]:
    """Repeat counts of the body's top-level `repeat` statements (the stages) at depth multiplier `depth`."""
    return [Stage(line, base, scaled) for _, _, line, base, scaled, top in record_repeats(arch, depth) if top]


class CostPath:
    """Counts (r, d, w) points of one architecture cheaply.

    The elaborated network depends on d only through the scaled repeat counts, so every d is mapped to the
    first d seen with the same counts: the cost program is compiled once per (counts, resolution) instead of
    once per distinct float. Work on a private copy of the Arch so that its compile cache is dropped with us.
    """

    def __init__(self, arch: Arch):
        self.arch = Arch(arch.source, variant=arch.variant, policy=arch.policy.name, params=arch.params)
        self.base_counts = sorted({base for _, _, _, base, _, _ in record_repeats(self.arch, 1.0)})
        self._canonical: dict[tuple[int, ...], float] = {}

    def depth_key(self, d: float) -> tuple[int, ...]:
        return tuple(self.arch.policy.depth(n, d) for n in self.base_counts)

    def canonical_depth(self, d: float) -> float:
        return self._canonical.setdefault(self.depth_key(d), float(d))

    def resolution(self, r: float) -> int:
        return scale_resolution(self.arch.resolution, r)

    def count(self, r: float, d: float, w: float | None) -> tuple[int, int, dict[str, int], int]:
        """(params, MACs, widths, resolution) of the network at multipliers (r, d, w); w=None keeps the
        default widths (under a make_divisible policy w = 1 would round widths that are not multiples of 8)."""
        resolution = self.resolution(r)
        if resolution < 1:
            raise BudgetError(f"resolution multiplier {r:g} gives an input of {resolution} pixels; "
                              "it must be at least 1")
        widths = self.arch.defaults if w is None else self.arch.uniform_widths(w)
        cost = self.arch.count(widths, depth=self.canonical_depth(d), resolution=resolution)
        return cost.params, cost.macs, widths, resolution
