"""Waker: how another thread wakes a loop that sleeps in `zmq.Poller.poll`.

Used by the coordinator's loop (`stop()`, `report_node_down()`) and the sync client's I/O
thread (new requests, cancels, `close()`). The loop registers `waker.fd` (the read end of a
pipe) in its poller and calls `drain()` when it is readable; any thread calls `wake()`.

`wake()` after `close()` does nothing and returns False, so a thread that races the loop's
shutdown never writes to a closed descriptor (or to one the process has since reused). The
write end is non-blocking: a full pipe means the loop is already due to wake. A descriptor
that something else in the process closed under us is logged once and not raised: the
client's loop wakes on its ping timer, and the coordinator's on its heartbeat checks once it
serves, so there a lost wake-up only delays it (a coordinator still starting up sleeps until
its next message).
"""

from __future__ import annotations

import errno
import logging
import os
import threading

logger = logging.getLogger(__name__)


class Waker:
    """A pipe whose read end (`fd`) a poll loop watches; thread-safe `wake()`, idempotent `close()`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.fd, self._write_fd = os.pipe()
        os.set_blocking(self.fd, False)
        os.set_blocking(self._write_fd, False)
        self._lock = threading.Lock()
        self._open = True
        self._warned = False

    @property
    def is_open(self) -> bool:
        return self._open

    def wake(self, why: bytes = b"w") -> bool:
        """Wake the loop (False once closed: nobody is listening any more)."""
        with self._lock:
            if not self._open:
                return False
            try:
                os.write(self._write_fd, why[:1])
            except BlockingIOError:
                pass  # the pipe is full: the loop has plenty to wake it
            except OSError as exc:
                if exc.errno != errno.EBADF:
                    raise
                if not self._warned:
                    self._warned = True
                    logger.warning("the %s wake-up pipe was closed by something else; its loop wakes on its timer", self.name)
            return True

    def drain(self) -> bytes:
        """Read every pending wake-up (the loop, after its poll saw `fd` readable)."""
        out = b""
        while self._open:
            try:
                chunk = os.read(self.fd, 4096)
            except OSError:  # empty (BlockingIOError) or gone
                break
            if not chunk:
                break
            out += chunk
        return out

    def close(self) -> None:
        """Close both ends; later `wake()` calls are no-ops."""
        with self._lock:
            if not self._open:
                return
            self._open = False
            for fd in (self.fd, self._write_fd):
                try:
                    os.close(fd)
                except OSError:
                    pass  # already closed by someone else: nothing of ours to release
