"""How the long-running commands (`deploy`, `serve-http`) wait for Ctrl-C or SIGTERM.

Owns: `StopSignal`. Its handler only records the signal and writes one byte to a non-blocking
pipe; the waiting side sleeps in `select` on that pipe. A Python signal handler runs in the
main thread between two bytecodes, possibly inside code that holds a lock, so a handler that
takes a lock deadlocks when a second signal lands while the first one is handled:
`threading.Event.set` does take one, and two signals in a row are common (`timeout` forwards
a signal to its child and to the child's process group, orchestrators repeat SIGTERM, people
press Ctrl-C twice). Used by cli/deploy_cmd.py and cli/http_cmds.py; touches nothing else.
"""

from __future__ import annotations

import os
import select
import signal
from types import FrameType
from typing import Any


class StopSignal:
    """Set by the first of `signals` to arrive; create it in the main thread (Python installs
    handlers only there). `close()` puts the previous handlers back."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> None:
        self.received: int | None = None
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)
        self._previous: dict[int, Any] = {sig: signal.signal(sig, self._handle) for sig in signals}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # no lock, no logging, no allocation worth mentioning: this may run inside any code
        if self.received is None:
            self.received = signum
        try:
            os.write(self._write_fd, b"s")
        except OSError:
            pass  # the pipe is full (the waiter is due to wake anyway) or already closed

    def is_set(self) -> bool:
        return self.received is not None

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a signal has arrived (True) or `timeout` seconds pass (False)."""
        if self.received is None:
            select.select([self._read_fd], [], [], timeout)
        return self.received is not None

    def close(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}
        for fd in (self._read_fd, self._write_fd):
            try:
                os.close(fd)
            except OSError:
                pass
