"""One deadline for every phase of the planner, with an injectable clock.

Sits under plan.py: `plan(time_limit_s)` -> **Deadline** -> heuristics, LP fix-point, bisection,
region windows, repair. Each phase asks the same object how much time is left (`remaining_s`),
whether it may start (`enter(phase)`: False once time is up) and cuts its own share from what
is left (`share`), so the phases together never overrun the limit, and a phase cut short leaves
the best placement found so far to the next.

The clock is a parameter (`time.monotonic` by default): tests pass a clock that jumps past the
end when a given phase is entered, so "the limit expires during phase X" is an event, not a
race against the machine's speed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

Clock = Callable[[], float]


class Deadline:
    """The end of the time limit, shared by a run's phases (module docstring).

    `on_enter(phase)` is called each time a phase starts (tests use it to move a fake clock);
    `phases` lists the phases that ran, in order, with the seconds elapsed at each."""

    def __init__(
        self,
        time_limit_s: float,
        clock: Clock = time.monotonic,
        on_enter: Callable[[str], None] | None = None,
        parent: Deadline | None = None,
    ) -> None:
        if not time_limit_s >= 0:
            raise ValueError(f"a deadline needs a non-negative time limit, got {time_limit_s}")
        self.clock = clock
        self.start = clock()
        self.end = self.start + time_limit_s
        self.parent = parent
        self.on_enter = on_enter
        self.phases: list[tuple[str, float]] = []

    def remaining_s(self) -> float:
        """Seconds left, never negative (the tighter of this deadline and its parent's)."""
        left = self.end - self.clock()
        if self.parent is not None:
            left = min(left, self.parent.remaining_s())
        return max(0.0, left)

    def expired(self) -> bool:
        return self.remaining_s() <= 0.0

    def elapsed_s(self) -> float:
        return self.clock() - self.start

    def enter(self, phase: str) -> bool:
        """Start `phase` if time is left: record it and return True (False once the time is up;
        a skipped phase is not recorded). `on_enter` may end the time at once (tests)."""
        if self.expired():
            return False
        self.note(phase)
        return not self.expired()

    def note(self, phase: str) -> None:
        """Record that `phase` runs, whether or not time is left (the answer's final step)."""
        root = self
        while root.parent is not None:
            root = root.parent
        root.phases.append((phase, round(root.elapsed_s(), 3)))
        if root.on_enter is not None:
            root.on_enter(phase)

    def share(self, fraction: float, max_s: float = math.inf, min_s: float = 0.0) -> Deadline:
        """A deadline for one phase: `fraction` of what is left (at least `min_s`, at most `max_s`
        seconds), never past this one's end."""
        left = self.remaining_s()
        budget = min(left, max(min_s, min(max_s, fraction * left)))
        return Deadline(budget, self.clock, parent=self)

    def before_end(self, reserve_s: float) -> Deadline:
        """A deadline `reserve_s` seconds before this one's end (time kept for a final step)."""
        return Deadline(max(0.0, self.remaining_s() - reserve_s), self.clock, parent=self)

    def seconds(self, cap_s: float = math.inf) -> float:
        """Seconds a solver call may take now: what is left, at most `cap_s`."""
        return min(cap_s, self.remaining_s())


class StepClock:
    """A fake clock for tests: stands still until `jump` moves it (e.g. from `on_enter`)."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def jump(self, seconds: float) -> None:
        self.now += seconds
