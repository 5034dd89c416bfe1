"""What a pruning run shows while it goes: a tqdm bar over warm-up minibatches, then over removed units.

`width_summary` fits the current widths into the bar's one line.
"""
from __future__ import annotations

import statistics
import sys
from collections.abc import Mapping
from typing import Any

from tqdm.auto import tqdm

__all__ = ["PruneProgress", "width_summary"]


def width_summary(widths: Mapping[str, int], symbols: list[str], limit: int = 10) -> str:
    """`16/32/32/48` for a few widths; `min/median/max` of many (a progress bar has one line)."""
    values = [widths[s] for s in symbols]
    if len(values) <= limit:
        return "/".join(str(v) for v in values)
    return f"{min(values)}..{int(statistics.median(values))}..{max(values)} ({len(values)} widths)"


class PruneProgress:
    """A tqdm bar over warm-up minibatches, then one over removed units; silent when disabled or when
    stderr is not a terminal (tqdm's disable=None)."""

    def __init__(self, enabled: bool, symbols: list[str]):
        self.enabled = enabled
        self.symbols = symbols
        self.bar: Any = None
        self.phase = ""

    def start(self, phase: str, total: int, done: int, unit: str) -> None:
        if not self.enabled or self.phase == phase:
            return
        self.close()

        self.phase = phase
        self.bar = tqdm(total=total, initial=done, desc=phase, unit=unit, dynamic_ncols=True, disable=None)

    def show(self, advance: int, epoch: int, params: int, widths: Mapping[str, int], loss: float | None) -> None:
        if self.bar is None:
            return
        postfix = {"epoch": epoch, "τ": f"{params:,}", "widths": width_summary(widths, self.symbols)}
        if loss is not None:
            postfix["loss"] = f"{loss:.4f}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(advance)

    def write(self, line: str) -> None:
        if self.enabled:
            from tqdm.auto import tqdm

            tqdm.write(line, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar = None
        self.phase = ""
