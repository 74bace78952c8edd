"""How many times a node's crashed worker may be restarted: a budget that refills over time.

Used by LocalDeployment's watcher (deploy.py) before it starts a replacement worker. A fixed
count per node (the old rule) ends, after enough crashes, in a node that stays down for as
long as deploy runs; this budget allows `max_restarts` restarts within any `window_s` seconds,
so a node that crashed long ago may be restarted again, while a crash loop still stops.
The coordinator's stats read it (`health.py`: restarts taken and left per node), from its own
thread, so every method holds one lock.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Callable


class RestartBudget:
    """At most `max_restarts` restarts per node within any `window_s` seconds of `clock()`."""

    def __init__(self, max_restarts: int, window_s: float = 600.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_restarts, self.window_s, self._clock = max_restarts, window_s, clock
        self._times: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)
        self.total: dict[str, int] = collections.Counter()  # restarts ever taken, per node
        self._lock = threading.Lock()

    def _recent(self, node: str) -> collections.deque[float]:
        times, now = self._times[node], self._clock()
        while times and now - times[0] >= self.window_s:
            times.popleft()
        return times

    def left(self, node: str) -> int:
        """Restarts the node may still take now."""
        with self._lock:
            return max(0, self.max_restarts - len(self._recent(node)))

    def take(self, node: str) -> bool:
        """Use one restart if the node has one left now; whether it did."""
        with self._lock:
            if len(self._recent(node)) >= self.max_restarts:
                return False
            self._times[node].append(self._clock())
            self.total[node] += 1
            return True
