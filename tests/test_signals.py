"""cli/signals.py: deploy's and serve-http's wait for Ctrl-C / SIGTERM survives a second signal
that lands while the first one is being handled (a handler that takes a lock, as
`threading.Event.set` does, deadlocks there). Signals are raised in this process, so SIGUSR1
and SIGUSR2 stand in for SIGINT and SIGTERM (pytest keeps its own SIGINT handler)."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from helix_jax.cli import signals
from helix_jax.cli.signals import StopSignal

SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)


@pytest.fixture
def stop():
    s = StopSignal(SIGNALS)
    yield s
    s.close()


def test_a_signal_sets_it_and_wakes_the_wait(stop: StopSignal) -> None:
    assert not stop.is_set() and stop.wait(0) is False
    signal.raise_signal(signal.SIGUSR2)
    assert stop.is_set() and stop.received == signal.SIGUSR2
    assert stop.wait() is True  # no timeout: returns because the signal came


def test_a_second_signal_inside_the_handler_neither_deadlocks_nor_loses_the_first(stop: StopSignal, monkeypatch) -> None:
    real_write, nested = os.write, []

    def write_then_signal_again(fd: int, data: bytes) -> int:
        if not nested:  # the second signal arrives while the first one's handler runs
            nested.append(True)
            signal.raise_signal(signal.SIGUSR1)
        return real_write(fd, data)

    monkeypatch.setattr(signals.os, "write", write_then_signal_again)
    signal.raise_signal(signal.SIGUSR2)
    assert nested == [True] and stop.received == signal.SIGUSR2 and stop.wait() is True


def test_a_signal_wakes_a_wait_already_sleeping(stop: StopSignal) -> None:
    asleep = threading.Event()
    sender = threading.Thread(target=lambda: (asleep.wait(), os.kill(os.getpid(), signal.SIGUSR1)))
    sender.start()
    asleep.set()
    assert stop.wait() is True and stop.received == signal.SIGUSR1
    sender.join()


def test_close_puts_the_previous_handlers_back() -> None:
    before = [signal.getsignal(s) for s in SIGNALS]
    s = StopSignal(SIGNALS)
    assert [signal.getsignal(x) for x in SIGNALS] == [s._handle] * 2
    s.close()
    assert [signal.getsignal(x) for x in SIGNALS] == before
