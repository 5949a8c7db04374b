"""Preemption: SIGTERM and SIGINT become `Interrupted`, deferred while a storage update must finish.

Clusters preempt with SIGTERM (Kubernetes, Slurm, Docker) and people with Ctrl-C; both must hand a
running trial back rather than leave it half-written. Code that must finish whole (a tell, a
claim, a re-queue) runs under `critical()`: a signal that arrives there is raised right after.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["Interrupted", "signals_interrupt", "critical", "checkpoint"]


class Interrupted(BaseException):
    """SIGTERM or SIGINT reached the process: stop the work, hand it back. `note` is the line that
    says what was done about the work in flight (the CLI prints it and exits 128 + signum)."""

    def __init__(self, signum: int, note: str = "") -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.note = note

    def noted(self, note: str) -> Interrupted:
        return Interrupted(self.signum, note)


class _SignalGate:
    """Raises `Interrupted` from the signal handler, and remembers the signal: a raise that lands
    where Python swallows exceptions (a weakref or GC callback, a `__del__`) is raised again at the
    next `checkpoint()`, so a signal is never lost."""

    def __init__(self) -> None:
        self.pending: int | None = None
        self.received: int | None = None
        self.depth = 0

    def handler(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum
        if self.depth:
            self.pending = signum
        else:
            raise Interrupted(signum)

    def checkpoint(self) -> None:
        """Where work may stop safely (between batches, between trials): a signal received and not
        yet acted on is raised here."""
        if self.received is not None and not self.depth:
            raise Interrupted(self.received)

    @contextmanager
    def critical(self) -> Iterator[None]:
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if not self.depth and self.pending is not None:
                signum, self.pending = self.pending, None
                raise Interrupted(signum)


_GATE = _SignalGate()
critical = _GATE.critical
checkpoint = _GATE.checkpoint


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """Within the block (main thread only), SIGTERM and SIGINT raise `Interrupted`."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, _GATE.handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        _GATE.received = None  # acted on: the block is left
