"""A worker: one node of the placement, running its layer range with continuous batching.

Sockets: a control DEALER to the coordinator (register / assign / ready / shutdown), a data
PULL bound on a free port (activations from the previous hop, token ids from the coordinator,
`free`), and one PUSH per neighbour it may hand off to plus one to the coordinator's data
socket. All linger 0.

The loop, one thread, one zmq.Poller:

1. Join: bind the data socket, `register` (node name + data endpoint), wait for `assign`
   (layer range, model, weights source, neighbours, emulation spec).
2. Warm-up: load the weights of the range, build the StageEngine, compile every bucket, then
   send `ready` with the real KV capacity in token-layers (the emulated GPU's budget under
   --emulate).
3. Receive: every `step` names its route and hop; the hop gives the layer sub-range this node
   runs (partial inference). A request's first step takes a KV slot or its reserved pages
   (or waits for them); malformed steps are logged and dropped. A prompt longer than the
   node's per-step prompt budget runs in chunks over successive batches (stage_host.py).
4. Batch: when not busy, all waiting steps (one per request, capped by --emulate's batch
   limits) run as one engine step: prompt chunks and decode tokens together. A step the
   engine rejects is retried item by item so one bad item cannot hurt the others. With
   `gather_s` (deploy's --gather-ms; on by default when all workers share one host) a stage
   that is the first hop of some requests waits, at most that long, until every one of them
   is back with its next token, so they move as one batch (ServeConfig.entry_gather_s).
5. Forward: hidden states go to the next hop named by the route as a new `step`; the last
   stage sends the sampled token to the coordinator. Under --emulate the results leave only
   when the emulated GPU would have finished (cost model x time scale) and each transfer
   waits its emulated link time (FIFO per link); meanwhile step 3 keeps receiving.
6. `free` releases the request's slot; `shutdown` (or the death of the parent process)
   ends the loop and closes every socket.
7. While serving, a `heartbeat` goes to the coordinator every `wire.HEARTBEAT_INTERVAL_S`;
   a worker that falls silent is taken out of service and its requests move to other routes.
   `peer` names a neighbour's new data endpoint (a replacement worker rejoined).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
import zmq

from helix_jax.errors import ProtocolError, RequestError
from helix_jax.runtime import security, wire
from helix_jax.runtime.worker_join import WorkerJoin, WorkerOptions
from helix_jax.topology import COORDINATOR

__all__ = ["Worker", "WorkerOptions", "run_worker"]

logger = logging.getLogger(__name__)

KV_LEASE_S = 300.0  # a request held here that gets no step for this long (x the emulation's time scale) is released (stage_host.expire)
FREED_MEMORY = 100_000  # ids of freed requests remembered, to drop their late steps


class Worker(WorkerJoin):
    """State of one worker process; `run()` is the loop of the module docstring (steps 1-2:
    worker_join.py)."""

    def run(self) -> int:
        try:
            assign = self._join()
            if assign is None:
                return 1
            try:
                self._warm_up(assign)
            except Exception as exc:  # report any load failure to the coordinator, then exit
                logger.exception("worker %s failed to %s", self.options.node, self._phase)
                wire.send(
                    self._control, wire.make("failed", node=self.options.node, phase=self._phase, message=f"{type(exc).__name__}: {exc}")
                )
                return 1
            self._serve()
            steps = max(1, self.steps_run)
            assert self.host is not None
            logger.info(
                "worker %s served %d steps (mean %.1f decode rows, %.1f prompt tokens): compute %.1f s, emulated %.1f s, %d overruns",
                self.options.node,
                self.steps_run,
                self.host.decode_rows_total / steps,
                self.host.prompt_tokens_total / steps,
                self.real_busy_s,
                self.emulated_busy_s,
                self.overruns,
            )
            return 0
        finally:
            self._close()

    @property
    def kv_lease_s(self) -> float:
        """How long a request held here may go without a step before its KV is reclaimed, in
        wall-clock seconds: the lease stretches with an emulation's time scale, as its steps do."""
        return KV_LEASE_S * self.time_scale

    def stop(self) -> None:
        """End the serve loop at its next wake-up (at most a heartbeat period), silently: the
        coordinator learns it the way it learns of a dead process (thread-safe)."""
        self._running = False

    # ------------------------------------------------------------------ 3-6: serve
    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self._control, zmq.POLLIN)
        poller.register(self._data, zmq.POLLIN)
        next_heartbeat = time.perf_counter()
        while self._running:
            now = time.perf_counter()
            if now >= next_heartbeat:
                assert self.host is not None
                self.host.expire(time.monotonic(), self.kv_lease_s)
                report: dict[str, Any] = self._step_report()
                dropped = self.drops.take()
                if dropped:
                    report["dropped"] = dropped
                wire.send(self._control, wire.make("heartbeat", node=self.options.node, **report))
                self.heartbeats_sent += 1
                next_heartbeat = now + wire.HEARTBEAT_INTERVAL_S
            wake = [t for t in (self._timers.next_due, self._busy_until if self._held else None) if t is not None]
            wake.append(next_heartbeat)
            assert self.host is not None
            has_work = bool(self.host.waiting) and not self._held and not self._stalled and self._gathered(now, wake)
            timeout_ms = 0 if has_work else math.ceil(max(0.0, (min(wake) - now) * 1000))
            events = dict(poller.poll(timeout_ms))
            if events:
                self._stalled = False  # new messages may unblock waiting steps
            if self._control in events:
                wire.drain(self._control, lambda _i, m: self._on_control(m), on_reject=self.drops)
            if self._data in events:
                wire.drain(self._data, lambda _i, m: self._on_data(m), secure=self.keys is not None, on_reject=self.drops)
            self._release_held()
            self._timers.fire(time.perf_counter(), self._push_now)
            if not self.host.waiting:
                self._gather_since = None  # emptied without a step (freed or expired): the next wait starts afresh
            elif not self._held and self._gathered(time.perf_counter(), wake):
                self._run_batch()
            if not events and not self._parent_alive():
                logger.warning("parent process gone: worker %s exits", self.options.node)
                return

    def _gathered(self, now: float, wake: list[float]) -> bool:
        """Whether a step may run now (step 4): yes, unless requests that entered here are still
        further down their routes, the waiting steps fill less than a batch (`--max-batch`) and
        have waited less than `gather_s` for them (then `wake` gets the time the wait ends)."""
        host = self.host
        assert host is not None
        if self._gather_s <= 0 or not host.entries_away() or len(host.waiting) >= host.max_decode_rows:
            return True
        if host.prompt_waiting():
            return True  # a prompt never waits: its first token would come later, and it joins the rest after it
        if self._gather_since is None:
            self._gather_since = now
        due = self._gather_since + self._gather_s
        if now < due:
            wake.append(due)
            return False
        return True

    def _step_report(self) -> dict[str, float]:
        """`mean_step_s` of the batches run since the last heartbeat (emulated time when paced)."""
        steps = self.steps_run - self._reported_steps
        busy = max(self.real_busy_s, self.emulated_busy_s)
        report = {"mean_step_s": (busy - self._reported_busy_s) / steps} if steps else {}
        self._reported_steps, self._reported_busy_s = self.steps_run, busy
        return report

    def _on_control(self, msg: wire.Message) -> None:
        if msg.kind == "shutdown":
            self._running = False
        elif msg.kind == "peer" and msg["node"] in self._push:  # a neighbour rejoined elsewhere
            self._push.pop(msg["node"]).close(linger=0)
            self._push[msg["node"]] = self._connect_push(msg["node"], msg["data_endpoint"])
            logger.info("worker %s: neighbour %s now at %s", self.options.node, msg["node"], msg["data_endpoint"])
        else:
            raise ProtocolError(f"unexpected {msg.kind!r} on the control socket")

    def _on_data(self, msg: wire.Message) -> None:
        assert self.host is not None
        if self.keys is not None:  # CURVE on: who signed it must be allowed to send it
            security.check_data_sender(msg, self._sender_node(msg), self._upstream, self.options.node)
        if msg.kind == "free":
            rid = msg["request_id"]
            self.host.forget(rid)
            self._freed[rid] = None
            if len(self._freed) > FREED_MEMORY:
                self._freed.popitem(last=False)
            return
        if msg.kind != "step":
            raise ProtocolError(f"unexpected {msg.kind!r} on the data socket")
        if msg["request_id"] in self._freed:
            return
        self.host.enqueue(msg)  # ProtocolError/RequestError if bad

    def _run_batch(self) -> None:
        assert self.host is not None
        self._gather_since = None
        batch = self.host.pick_batch()
        if not batch:
            self._stalled = True  # every waiting step needs a slot or an earlier step first
            return
        started = time.perf_counter()
        results = self.host.run(batch)
        self.steps_run += 1
        finished = time.perf_counter()
        self._busy_until = finished
        self.real_busy_s += finished - started
        if self._compute is not None:
            emulated = self._compute.step_seconds(self.host.layer_loads(batch))
            self._busy_until = max(finished, started + emulated)
            self.emulated_busy_s += emulated
            self.overruns += finished - started > emulated  # this CPU was slower than the GPU x scale
        for pending, result in results:
            out = self._forward(pending.msg, result)
            if out is not None:
                self._held.append(out)
        for rid, why in self.host.failed.items():  # the coordinator fails them (no blind replay)
            self._held.append((COORDINATOR, wire.make("abort", request_id=rid, node=self.options.node, message=why), 0))
        self.host.failed.clear()
        self._release_held()

    def _forward(self, msg: wire.Message, result: Any) -> tuple[str, wire.Message, int] | None:
        route, hop = msg["route"], msg["hop"]
        if hop + 1 == len(route):
            if result.next_token is None:
                return None  # a prompt chunk that does not end the prompt: nothing sampled
            return (
                COORDINATOR,
                wire.make(
                    "sampled", request_id=msg["request_id"], index=msg["index"], token_id=int(result.next_token), node=self.options.node
                ),
                1,
            )
        hidden = np.ascontiguousarray(result.hidden)  # [tokens, hidden]
        extra = {k: msg[k] for k in ("kv_tokens", "last") if k in msg.fields}
        if msg["position"] == 0:  # the request's first step on the next hop: it takes the sampling once
            extra["sampling"] = msg["sampling"]
        out = wire.make(
            "step", [hidden], request_id=msg["request_id"], route=route, hop=hop + 1, position=msg["position"], index=msg["index"], **extra
        )
        return str(route[hop + 1][0]), out, hidden.shape[0]

    def _release_held(self) -> None:
        if not self._held or time.perf_counter() < self._busy_until:
            return
        held, self._held = self._held, []
        bundles: dict[str, list[wire.Message]] = {}
        for dst, msg, num_tokens in held:
            if dst not in self._push:
                logger.warning("worker %s has no link to %s; dropped %s", self.options.node, dst, msg["request_id"])
                continue
            if self._links is None:
                bundles.setdefault(dst, []).append(msg)
            else:
                self._timers.push(self._links.deliver_at(dst, num_tokens, self._busy_until), dst, msg)
        for dst, msgs in bundles.items():  # a step's outputs reach each next hop together
            self._push_now(dst, *msgs)

    def _push_now(self, dst: str, *msgs: wire.Message) -> None:
        """Send `msgs` to `dst` as one bundle (one message goes plain)."""
        if self._running:  # after stop() nothing leaves, as after a kill
            wire.send_many(self._push[dst], msgs)


def run_worker(options: WorkerOptions) -> int:
    """Entry point of `helix-jax worker`: join, warm up, serve until shutdown. Exit code."""
    try:
        return Worker(options).run()
    except RequestError as exc:  # pragma: no cover - defensive: never leave a traceback
        logger.error("worker %s: %s", options.node, exc)
        return 1
