"""The wake-up pipe of the coordinator's loop and the client's I/O thread (runtime/waker.py).

CI once failed a test in its teardown: `Coordinator.stop()` wrote to a wake-up descriptor
that was already closed (EBADF). Shutdown may race the loop's own end, and a thread may wake
a loop that is gone: neither may raise, nor write to a descriptor the process has reused.
"""

from __future__ import annotations

import logging
import os
import threading

import pytest
import zmq

from helix_jax.model.tokenizer import load_tokenizer
from helix_jax.placement import Placement
from helix_jax.runtime import failover
from helix_jax.runtime.coordinator import Coordinator, ServeConfig
from helix_jax.runtime.waker import Waker
from helix_jax.topology import load_topology, tiny_topology_path

TOPOLOGY = load_topology(tiny_topology_path())


def test_a_wake_reaches_a_polling_loop_and_is_drained() -> None:
    waker = Waker("test")
    poller = zmq.Poller()
    poller.register(waker.fd, zmq.POLLIN)
    assert dict(poller.poll(0)) == {}
    assert waker.wake(b"a") and waker.wake(b"b")
    assert waker.fd in dict(poller.poll(0))
    assert waker.drain() == b"ab"
    assert dict(poller.poll(0)) == {}
    waker.close()


def test_a_full_pipe_does_not_block_the_waking_thread() -> None:
    waker = Waker("test")
    for _ in range(200_000):  # far past a pipe's 64 KiB: every write after that is dropped
        waker.wake()
    pending = waker.drain()
    assert 0 < len(pending) < 200_000 and set(pending) == {ord("w")}  # the excess was dropped, not queued
    waker.close()


def test_wake_after_close_is_a_no_op_and_touches_no_reused_descriptor() -> None:
    waker = Waker("test")
    waker.close()
    waker.close()  # idempotent
    r, w = os.pipe()  # the process may now hand the same numbers to someone else
    try:
        assert waker.wake() is False
        os.set_blocking(r, False)
        with pytest.raises(BlockingIOError):
            os.read(r, 1)  # nothing was written into the new pipe
        assert not waker.is_open
    finally:
        os.close(r)
        os.close(w)


def test_a_descriptor_closed_by_someone_else_is_logged_once_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    waker = Waker("test")
    os.close(waker._write_fd)  # another part of the process closed our descriptor
    with caplog.at_level(logging.WARNING, logger="helix_jax.runtime.waker"):
        assert waker.wake() and waker.wake()
    assert [r.getMessage() for r in caplog.records] == ["the test wake-up pipe was closed by something else; its loop wakes on its timer"]
    waker.close()  # closing what is already gone is quiet too


def test_stop_and_report_after_the_loop_failed_do_not_raise(cpu_small_placement: Placement, monkeypatch: pytest.MonkeyPatch) -> None:
    """The coordinator's loop ends on an error: it is logged and kept as `failure`; a later
    `stop()` or `report_node_down()` (the deployment's teardown) returns quietly."""
    cfg = ServeConfig(TOPOLOGY, cpu_small_placement, TOPOLOGY.model, max_seq_len=128)
    coord = Coordinator(cfg, load_tokenizer(TOPOLOGY.model))

    def broken(*_args: object) -> None:
        raise RuntimeError("a bug in the loop")

    monkeypatch.setattr(failover, "check_heartbeats", broken)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            coord.run()
        except RuntimeError as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    assert coord._waker.wake()  # one pass of the loop: it reaches the broken step
    thread.join(timeout=60)
    assert not thread.is_alive() and [str(e) for e in errors] == ["a bug in the loop"]
    assert coord.failure == "the coordinator's loop failed: RuntimeError: a bug in the loop"
    coord.report_node_down("cpu-0", "its process exited")
    coord.stop()
    coord.stop()
