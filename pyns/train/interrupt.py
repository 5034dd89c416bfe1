"""Ctrl-C at a consistent point: long runs (pruning) finish the minibatch, checkpoint and stop."""
from __future__ import annotations

import signal
import threading
from typing import Any

__all__ = ["DeferredInterrupt"]


class DeferredInterrupt:
    """While active (main thread only), the first Ctrl-C only sets `requested`: the loop finishes the
    minibatch, checkpoints and stops, so the checkpoint is taken at a consistent point. A second
    Ctrl-C raises KeyboardInterrupt at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> DeferredInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self._installed:
            previous = self._previous if self._previous is not None else signal.default_int_handler
            signal.signal(signal.SIGINT, previous)
