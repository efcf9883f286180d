"""When training stops: the ``max_minutes`` clock, a graceful Ctrl-C, and :class:`Limits`, which
has every rank agree on both once a step.

The clock's learning-rate decay follows wall time only when the run, at its pace so far, would
end after its deadline. A run that fits in its budget decays by steps alone, so machine load
(another job on the same cores) changes how long it takes, not what it learns.
"""

from __future__ import annotations

import math
import signal
import threading
import time

from . import distributed
from .distributed import Ranks

JUDGE_AFTER_STEPS = 10  # the pace is judged from this many steps (or 1% of the run) on


class Clock:
    """Wall time of a run against its ``max_minutes`` budget, across resumes."""

    def __init__(self, max_minutes: float | None, elapsed: float = 0.0) -> None:
        self.budget = 60 * max_minutes if max_minutes else math.inf
        self.started = time.perf_counter() - elapsed
        self.progress = 0.0  # time progress fed to the schedule; only grows

    def elapsed(self) -> float:
        """Seconds trained, counting the runs before a resume."""
        return time.perf_counter() - self.started

    def used(self) -> float:
        """Fraction of the budget gone (0 without a budget)."""
        return 0.0 if math.isinf(self.budget) else self.elapsed() / self.budget

    def schedule_progress(self, step: int, total: int, used: float | None = None) -> float:
        """The time progress the learning-rate schedule follows at ``step`` of ``total``.

        Zero while the run is projected to finish within its budget (steps done so far, at
        their pace, extrapolated to ``total``); once it is projected to overrun, the fraction
        of the budget used, so the decay still reaches its end when time runs out. It never
        goes back down, so a passing load spike cannot raise the learning rate again.

        Args:
            used: the budget fraction to judge by (under torchrun, the largest over ranks, so
                every rank follows the same schedule); default :meth:`used`.
        """
        if math.isinf(self.budget) or step < max(JUDGE_AFTER_STEPS, total // 100):
            return self.progress  # the first steps (warm-up, caches) would misjudge the pace
        used = self.used() if used is None else used
        if used / step * total > 1.0:  # the projected run overruns the budget
            self.progress = max(self.progress, used)
        return self.progress


class StopRequest:
    """While active, the first Ctrl-C (or SIGTERM, as torchrun and job schedulers send) asks
    the loop to stop after the current step and write a checkpoint; a second Ctrl-C stops at
    once. A SIGTERM is delivered again once the loop has stopped, so the process still ends
    as asked (after its checkpoint), instead of going on to whatever it would do next.

    Signal handlers can only be set from the main thread; elsewhere (a server thread, a tuning
    worker thread) this does nothing and Ctrl-C raises KeyboardInterrupt as usual.
    """

    def __init__(self) -> None:
        self.requested = False
        self._terminated = False
        self._previous: dict = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self._terminated = self._terminated or signum == signal.SIGTERM

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if self._terminated:
            signal.raise_signal(signal.SIGTERM)  # now with the handler the process had before


class Limits:
    """The clock and the stop signals, agreed across ranks once a step, so every rank stops at
    the same step and follows the same learning-rate schedule.

    Entering it listens for Ctrl-C and SIGTERM (:class:`StopRequest`) until it is left.
    """

    def __init__(self, clock: Clock, ranks: Ranks) -> None:
        self.clock = clock
        self.ranks = ranks
        self.stop = StopRequest()
        self.used = 0.0  # the budget fraction used, the largest over ranks
        self.stopping = False  # a stop asked for on any rank

    def __enter__(self) -> Limits:
        self.stop.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.__exit__(*exc)

    def agree(self) -> None:
        """One collective a step: a stop asked for on any rank, the clock's largest reading."""
        flags = distributed.largest([float(self.stop.requested), self.clock.used()], self.ranks)
        self.stopping, self.used = bool(flags[0]), flags[1]

    def stop_requested(self) -> bool:
        """Whether a stop was asked for on any rank (asked again at the end of an epoch)."""
        return distributed.any_rank(self.stop.requested, self.ranks)

    @property
    def out_of_time(self) -> bool:
        return self.used >= 1.0

    def schedule_progress(self, step: int, total: int) -> float:
        """:meth:`Clock.schedule_progress` judged by the budget used on the slowest rank."""
        return self.clock.schedule_progress(step, total, self.used)
