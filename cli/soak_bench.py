"""`make bench-soak`: the reliability figure of issue 19, on the default deployment.

The shipped default (topologies/cpu-small.json: SmolLM2-135M-Instruct on 3 worker processes,
planned, CURVE on, restarts on) serves streaming load from `--clients` client threads for
`--duration-s`; every `--fault-every-s` a random worker gets SIGKILL (the deployment restarts
it) or SIGSTOP (the heartbeat timeout takes it out of service; it is resumed `--stop-for-s`
later, told to shut down, and restarted); one request in `--poison-every` is malformed or a
poison value (huge top_k, a token id outside the vocabulary, an empty prompt, max_tokens past
the context). It prints, and writes as JSON with `--out`:

* requests sent, completed, failed with a clear error (a HelixError naming the cause), lost
  (no answer at all) and hung (an answer more than 10 s after the last fault's recovery);
* the longest stall: the longest gap between two tokens of one stream;
* `/ready` at the end (the coordinator's readiness) and the restarts per node.

Run as `python -m helix_jax.cli.soak_bench` (a script, not library code).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

from helix_jax.client import Client
from helix_jax.errors import HelixError

POISON = (dict(top_k=10**9, temperature=1.0), dict(prompt=[49151, 10**6]), dict(prompt=""), dict(max_tokens=10**6), dict(top_p=0.0))
QUESTIONS = [
    "What is the capital of France?",
    "Name three colours.",
    "What is 2 + 2?",
    "Say hello.",
    "What is a GPU?",
    "Why is the sky blue?",
]


REQUEST_ID = re.compile(r"'r[0-9a-f]{16}'")


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts = {"sent": 0, "completed": 0, "failed_clear": 0, "failed_poison": 0, "lost": 0}
        self.errors: dict[str, int] = {}
        self.longest_stall_s = 0.0
        self.slowest_s = 0.0
        self.slowest: dict[str, Any] = {}  # how the slowest request ended
        self.over_10_s = 0  # requests that took longer than 10 s, whatever their end
        self.spans: list[tuple[float, float]] = []  # (start, end) of every request that took over 0.5 s

    def add(self, key: str, error: str | None = None) -> None:
        with self.lock:
            self.counts[key] += 1
            if error is not None:
                self.errors[error] = self.errors.get(error, 0) + 1


def user(endpoint_keys: tuple[str, Any], tally: Tally, stop: threading.Event, seed: int, poison_every: int, timeout_s: float) -> None:
    rng = random.Random(seed)
    endpoint, keys = endpoint_keys
    with Client(endpoint, timeout_s=timeout_s, keys=keys) as client:
        n = 0
        while not stop.is_set():
            n += 1
            poison = poison_every > 0 and n % poison_every == 0
            kwargs: dict[str, Any] = dict(max_tokens=rng.randint(8, 32))
            prompt: Any = rng.choice(QUESTIONS)
            if poison:
                extra = dict(rng.choice(POISON))
                prompt = extra.pop("prompt", prompt)
                kwargs.update(extra)
            tally.add("sent")
            started = last = time.monotonic()
            outcome = "completed"
            try:
                for _ in client.stream(prompt, **kwargs):
                    now = time.monotonic()
                    with tally.lock:
                        tally.longest_stall_s = max(tally.longest_stall_s, now - last)
                    last = now
                tally.add("completed")
            except HelixError as exc:
                text = str(exc)
                lost = "no reply within" in text
                outcome = f"{type(exc).__name__}: {text[:160]}"
                kind = REQUEST_ID.sub("'r…'", f"{type(exc).__name__}: {text}")[:90]  # one key per kind, not per request
                tally.add("lost" if lost else ("failed_poison" if poison else "failed_clear"), kind)
            took = time.monotonic() - started
            with tally.lock:
                tally.over_10_s += took > 10.0
                if took > 0.5:
                    tally.spans.append((started, started + took))
                if took > tally.slowest_s:
                    tally.slowest_s, tally.slowest = took, {"outcome": outcome, "started": started}


def after_fault_seconds(spans: list[tuple[float, float]], fault_times: list[float]) -> list[float]:
    """For each request (start, end) that a fault struck while in flight: end - the last such fault."""
    out = []
    ordered = sorted(fault_times)
    for start, end in spans:
        hit = [t for t in ordered if start <= t <= end]
        if hit:
            out.append(end - hit[-1])
    return out


def faults(dep: Any, stop: threading.Event, every_s: float, stop_for_s: float, log: list, seed: int) -> None:
    rng = random.Random(seed)
    while not stop.wait(every_s):
        alive = [w for w in dep.workers if w.process.poll() is None]
        if not alive:
            continue
        victim = rng.choice(alive)
        kind = rng.choice(["SIGKILL", "SIGSTOP"])
        log.append({"t": time.monotonic(), "node": victim.node, "signal": kind})
        if kind == "SIGKILL":
            os.kill(victim.process.pid, signal.SIGKILL)
        else:
            os.kill(victim.process.pid, signal.SIGSTOP)
            if stop.wait(stop_for_s):
                os.kill(victim.process.pid, signal.SIGCONT)
                return
            os.kill(victim.process.pid, signal.SIGCONT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration-s", type=float, default=600.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--fault-every-s", type=float, default=30.0)
    parser.add_argument("--stop-for-s", type=float, default=12.0)
    parser.add_argument("--poison-every", type=int, default=7)
    parser.add_argument("--heartbeat-timeout-s", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from helix_jax.cli.serve_cmds import serve_config
    from helix_jax.runtime.deploy import LocalDeployment

    cfg, tokenizer = serve_config(
        None, None, None, False, 1.0, "127.0.0.1", 0, None, 256, 10.0, heartbeat_timeout_s=args.heartbeat_timeout_s, secure=True
    )
    tally, stop, log = Tally(), threading.Event(), []
    began = time.monotonic()
    with LocalDeployment(cfg, tokenizer, restart_workers=True, max_restarts=1000) as dep:
        dep.wait_ready()
        ready_s = time.monotonic() - began
        assert dep.coordinator is not None and cfg.keys is not None
        where = (dep.client_endpoint, cfg.keys.client())
        users = [threading.Thread(target=user, args=(where, tally, stop, i, args.poison_every, 120.0)) for i in range(args.clients)]
        chaos = threading.Thread(target=faults, args=(dep, stop, args.fault_every_s, args.stop_for_s, log, 7))
        for t in (*users, chaos):
            t.start()
        stop.wait(args.duration_s)
        stop.set()
        for t in (*users, chaos):
            t.join(timeout=300)
        stopped = time.monotonic()
        with Client(dep.client_endpoint, timeout_s=30, keys=cfg.keys.client()) as probe:
            final = probe.stats()  # a worker the last fault hit may still be restarting: wait (bounded)
            while not final["ready"] and time.monotonic() - stopped < 300:
                time.sleep(1.0)
                final = probe.stats()
            ready_after_s = time.monotonic() - stopped
            try:
                after = probe.generate("What is the capital of France?", max_tokens=8).text
            except HelixError as exc:
                after = f"{type(exc).__name__}: {exc}"
        began_at = tally.slowest.pop("started", 0.0)
        faults_before = [f["t"] for f in log if f["t"] <= began_at]
        slowest = {
            **tally.slowest,
            "faults_during": sum(began_at <= f["t"] <= began_at + tally.slowest_s for f in log),
            "started_after_last_fault_s": began_at - faults_before[-1] if faults_before else None,
        }
        after_fault = after_fault_seconds(tally.spans, [f["t"] for f in log])
        result = {
            "duration_s": args.duration_s,
            "ready_s": ready_s,
            "clients": args.clients,
            **tally.counts,
            "longest_stall_s": tally.longest_stall_s,
            "slowest_request_s": tally.slowest_s,
            "slowest_request": slowest,
            "requests_over_10_s": tally.over_10_s,
            # of the requests in flight when a fault struck: how long the slowest took to end after
            # the last fault it saw (streamed on, resumed or failed), and how many took over 10 s
            "requests_hit_by_a_fault": len(after_fault),
            "longest_after_fault_s": max(after_fault, default=0.0),
            "hung_past_10_s_after_a_fault": sum(t > 10.0 for t in after_fault),
            "ready_after_stop_s": ready_after_s,
            "faults": len(log),
            "kills": sum(f["signal"] == "SIGKILL" for f in log),
            "stops": sum(f["signal"] == "SIGSTOP" for f in log),
            "restarts": dict(dep.restarts),
            "ready_at_end": final["ready"],
            "reason_at_end": final.get("reason"),
            "health_at_end": final.get("health"),
            "answer_after": after,
            "errors": tally.errors,
        }
    print(json.dumps(result, indent=2))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
