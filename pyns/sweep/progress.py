"""What a sweep shows while it runs: one progress bar over its cells (done / running / left, ETA) and one
line per finished cell. Both go to stderr, so stdout keeps only the table (or --json); `--quiet` silences
them (the CLI passes enabled=False and a silent `say`).
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = ["CellProgress"]


class CellProgress:
    """Counts cells as they start and finish; `line` prints above the bar (tqdm.write), never through it.

    The ETA covers the cells trained in this call only: cells already complete from an earlier run finish
    at once and would make the rate look far higher than it is, so they are counted as done up front.
    """

    def __init__(self, total: int, done_before: int, say: Callable[[str], None], enabled: bool):
        self.total = total
        self.done = done_before
        self.running = 0
        self.say = say
        self.bar: Any = None
        self.started_at = time.perf_counter()
        self.trained = 0
        if enabled and total:
            from tqdm.auto import tqdm  # local: defers tqdm until a bar is shown

            # disable=None: no bar when stderr is not a terminal (a log file gets the per-cell lines only)
            self.bar = tqdm(total=total, initial=done_before, desc="sweep cells", unit="cell",
                            dynamic_ncols=True, disable=None, file=sys.stderr)
            self._postfix()

    @property
    def left(self) -> int:
        return self.total - self.done - self.running

    def _postfix(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"done {self.done}, running {self.running}, left {self.left}"
                                     + (f", ETA {self.eta()}" if self.eta() else ""), refresh=True)

    def eta(self) -> str:
        """Remaining time at the mean time per cell trained so far in this call ('' before the first)."""
        if not self.trained:
            return ""
        seconds = (time.perf_counter() - self.started_at) / self.trained * (self.total - self.done)
        minutes, secs = divmod(int(seconds), 60)
        hours, minutes = divmod(minutes, 60)
        return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"

    def started(self, count: int = 1) -> None:
        self.running += count
        self._postfix()

    def unstarted(self) -> None:
        """A cell that did not start after all (another process holds its folder): no longer running."""
        self.running = max(0, self.running - 1)
        self._postfix()

    def note(self, text: str) -> None:
        """A line that is not a finished cell (e.g. a cell another process trains), above the bar."""
        if self.bar is not None:
            from tqdm.auto import tqdm  # local: defers tqdm until a bar is shown

            tqdm.write(text, file=sys.stderr)
        else:
            self.say(text)

    def finished(self, text: str, *, skipped: bool) -> None:
        self.running = max(0, self.running - 1)
        self.done += 1
        self.trained += 0 if skipped else 1
        line = f"[{self.done}/{self.total}] {text}"
        if self.bar is not None:  # the bar is on only when the lines are (not --quiet)
            from tqdm.auto import tqdm  # local: defers tqdm until a bar is shown

            self.bar.update(1)
            tqdm.write(line, file=sys.stderr)  # above the bar, which redraws below it
        else:
            self.say(line)
        self._postfix()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

