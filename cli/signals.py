"""How the long-running commands (`deploy`, `serve-http`) wait for Ctrl-C or SIGTERM.

Owns: `StopSignal`. Two rules of Python's signal handling shape it:
* a Python-level handler runs in the main thread between two bytecodes, possibly inside code
  that holds a lock, so a handler that takes a lock deadlocks when a second signal lands while
  the first one is handled: `threading.Event.set` takes one, and two signals in a row are
  common (`timeout` forwards a signal to its child and to the child's process group,
  orchestrators repeat SIGTERM, people press Ctrl-C twice). Ours only records the signal;
* the kernel may deliver a process signal to any thread (deploy runs the coordinator, the HTTP
  server and ZeroMQ's threads), and then a main thread asleep in a system call does not wake
  to run the handler. `signal.set_wakeup_fd` makes the interpreter write a byte to our pipe
  from whichever thread got it; the main thread sleeps in `select` on that pipe.
Used by cli/deploy_cmd.py and cli/http_cmds.py; touches nothing else.
"""

from __future__ import annotations

import os
import select
import signal
import time
from types import FrameType
from typing import Any


class StopSignal:
    """Set by the first of `signals` to arrive; create it, wait on it and close it in the main
    thread (Python installs handlers and the wake-up fd only there). `close()` puts the previous
    handlers and wake-up fd back."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> None:
        self.received: int | None = None
        self._read_fd, self._write_fd = os.pipe()
        for fd in (self._read_fd, self._write_fd):
            os.set_blocking(fd, False)
        self._previous_wakeup = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        self._previous: dict[int, Any] = {sig: signal.signal(sig, self._handle) for sig in signals}
        self._open = True

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:  # no lock, no I/O: this may run inside any code of the main thread
            self.received = signum

    def is_set(self) -> bool:
        return self.received is not None

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a signal has arrived (True) or `timeout` seconds pass (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.received is None:  # each pass lets the interpreter run the pending handlers
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            readable, _, _ = select.select([self._read_fd], [], [], remaining)
            if readable:
                try:
                    os.read(self._read_fd, 512)  # the wake-up bytes; the handler has run or runs next
                except BlockingIOError:
                    pass
        return self.received is not None

    def close(self) -> None:
        if not self._open:
            return
        self._open = False
        signal.set_wakeup_fd(self._previous_wakeup)
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        for fd in (self._read_fd, self._write_fd):
            os.close(fd)
