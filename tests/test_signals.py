"""cli/signals.py: deploy's and serve-http's wait for Ctrl-C / SIGTERM wakes whichever thread the
kernel hands the signal to, and a second signal changes nothing. Signals are raised in this
process, so SIGUSR1 and SIGUSR2 stand in for SIGINT and SIGTERM (pytest keeps its own SIGINT
handler). A wait that does not wake fails after 120 s instead of hanging the suite."""

from __future__ import annotations

import signal
import threading

import pytest

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
    assert stop.wait(timeout=120) is True and stop.received == signal.SIGUSR2


def test_a_second_signal_keeps_the_first(stop: StopSignal) -> None:
    signal.raise_signal(signal.SIGUSR2)
    signal.raise_signal(signal.SIGUSR1)
    assert stop.wait(timeout=120) is True and stop.received == signal.SIGUSR2


def test_a_signal_delivered_to_another_thread_wakes_the_main_threads_wait(stop: StopSignal) -> None:
    """As when the kernel picks deploy's coordinator or HTTP thread: the main thread, asleep in
    `select`, runs no handler until something wakes it (here, the interpreter's wake-up fd)."""
    asleep = threading.Event()

    def sender() -> None:
        asleep.wait()
        signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)  # delivered to this thread, not the main one

    thread = threading.Thread(target=sender)
    thread.start()
    asleep.set()
    assert stop.wait(timeout=120) is True and stop.received == signal.SIGUSR1
    thread.join()


def _wakeup_fd() -> int:
    fd = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(fd)
    return fd


def test_close_puts_the_previous_handlers_and_wakeup_fd_back() -> None:
    before, fd_before = [signal.getsignal(s) for s in SIGNALS], _wakeup_fd()
    s = StopSignal(SIGNALS)
    assert [signal.getsignal(x) for x in SIGNALS] == [s._handle] * 2 and _wakeup_fd() == s._write_fd
    s.close()
    s.close()  # idempotent
    assert [signal.getsignal(x) for x in SIGNALS] == before and _wakeup_fd() == fd_before
