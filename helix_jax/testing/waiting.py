"""`wait_until`: wait for a state, not for a number of seconds.

Tests of live deployments (in-process clusters, worker processes, Ray actors) wait for what they
need, such as a node back in service or no actor left, by checking it again and again: the wait
ends as soon as the state holds, and `timeout_s` only turns a hang into a failure that names
what was awaited.
"""

from __future__ import annotations

import time
from typing import Callable


def wait_until(predicate: Callable[[], bool], what: str, timeout_s: float = 30.0, period_s: float = 0.01) -> None:
    """Return once `predicate()` holds (checked every `period_s`); AssertionError naming `what` if
    it does not within `timeout_s` (a hang, not a slow machine)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(period_s)
