"""The worker's bridge to the model runtime: wire `step` messages <-> StageEngine items.

Sits inside a worker (runtime step of the data flow): builds the StageEngine of the assigned
layer range (paged or contiguous KV), checks that each incoming step really belongs here
(route, hop, layer sub-range, array dtype and shape), forms continuous batches (one item per
request, slots and pages permitting, capped by the emulated GPU's batch limits), and runs
them so that one bad item cannot spoil the others. It owns the worker's waiting queue. The
runner comes from a `RunnerFactory` (runner.py): jax is imported only by the default one, so
the coordinator, the client and tests on `helix_jax.testing` fakes stay light.

Chunked prefill: a step carries a whole prompt (or a chunk of it); a batch takes at most
`max_prompt_tokens` prompt tokens (the cost model's per-step budget, the simulator's), so a
longer prompt runs as chunks over successive batches beside the decode rows. Each chunk is
forwarded as its own `step` (`last` false until the chunk that ends the prompt; only that
one samples on the last stage); the next hop chunks again to its own budget.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from typing import Any

import numpy as np

from helix_jax.errors import HelixError, ProtocolError
from helix_jax.model.batching import StepInput
from helix_jax.model.page_pool import pages_for
from helix_jax.model.sampling_params import SamplingParams
from helix_jax.modelconfig import resolve_model
from helix_jax.runtime import wire
from helix_jax.runtime.emulation import ComputePacer, LayerLoad, layer_loads
from helix_jax.runtime.runner import RunnerFactory, RunnerSpec, StageRunner, engine_runner

logger = logging.getLogger(__name__)

DEFAULT_SLOTS = 32  # contiguous slots, or the default KV budget in max_seq_len-long requests
DECODE_BUCKETS = (1, 4, 16, 64, 256)  # few buckets: every one costs seconds of warm-up per worker
PAGE_SIZE = 16  # tokens per KV page (the engine's default)


@dataclasses.dataclass
class Pending:
    """One queued step: (StepInput, SamplingParams or None, KV reservation), its message, tokens."""

    item: tuple[StepInput, SamplingParams | None, int]
    msg: wire.Message
    num_tokens: int


class StageHost:
    """A StageEngine plus the checks and batching policy of the worker loop."""

    def __init__(self, engine: StageRunner, node: str, kv_budget_token_layers: int, max_decode_rows: int, max_prompt_tokens: int) -> None:
        self.engine, self.node = engine, node
        self.start_layer, self.end_layer = engine.start_layer, engine.end_layer
        self.kv_budget_token_layers = kv_budget_token_layers
        self.max_decode_rows, self.max_prompt_tokens = max_decode_rows, max_prompt_tokens
        # request id -> its steps in arrival order; the one queue of the worker (worker.py only
        # adds to it through `enqueue` and `forget`)
        self.waiting: collections.OrderedDict[str, collections.deque] = collections.OrderedDict()
        self.failed: dict[str, str] = {}  # request id -> why running it raised (reported by the worker)
        self.last_step: dict[str, float] = {}  # request id -> when its latest step arrived (the KV lease)
        self.entries: set[str] = set()  # requests whose route starts here (they come back for every token)
        self.decode_rows_total = self.prompt_tokens_total = 0  # over all batches, for the exit log

    @classmethod
    def build(
        cls, assign: wire.Message, compute: ComputePacer | None, on_compile: Any = None, runner_factory: RunnerFactory = engine_runner
    ) -> "StageHost":
        """Build the runner an `assign` message describes (`runner_factory`, StageEngine by
        default) and warm it up; `on_compile()` is called between building and warm-up."""
        spec, max_rows, max_prompt = runner_spec(assign, compute)
        engine = runner_factory(spec)
        if on_compile is not None:
            on_compile()
        engine.warmup()
        budget = engine.kv_capacity_token_layers
        if compute is not None:  # the scheduler must see the emulated GPU's KV, not this CPU's
            budget = compute.kv_budget_token_layers(spec.end_layer - spec.start_layer)
        return cls(engine, assign["node"], budget, max_rows, max_prompt)

    # ---------------------------------------------------------------- step messages
    def step_input(self, msg: wire.Message, node: str) -> Any:
        """The StepInput of a `step` addressed to this node; ProtocolError/RequestError if bad."""
        route, hop = msg["route"], msg["hop"]
        if not 0 <= hop < len(route):
            raise ProtocolError(f"step hop {hop} outside its route of {len(route)} hops")
        entry = route[hop]
        if (
            not isinstance(entry, list)
            or len(entry) != 3
            or entry[0] != node
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in entry[1:])
        ):
            raise ProtocolError(f"step hop {hop} is {entry!r}, not a hop of node {node!r}")
        if not (self.start_layer <= entry[1] < entry[2] == self.end_layer):
            raise ProtocolError(f"hop layers [{entry[1]}, {entry[2]}) do not end this node's range [{self.start_layer}, {self.end_layer})")
        if hop + 1 < len(route) and (not isinstance(route[hop + 1], list) or len(route[hop + 1]) != 3):
            raise ProtocolError(f"step hop {hop + 1} is malformed: {route[hop + 1]!r}")
        if msg["position"] < 0 or msg["index"] < 0:
            raise ProtocolError("step position and index must be >= 0")
        data = msg.arrays[0]
        if entry[1] == 0:
            if data.ndim != 1 or data.dtype != np.int32:
                raise ProtocolError(f"layer-0 input must be int32 token ids [n], got {data.dtype}{list(data.shape)}")
            item = dict(token_ids=data)
        else:
            if data.ndim != 2 or data.shape[1] != self.engine.config.hidden_size or data.dtype.kind != "f":
                raise ProtocolError(
                    f"hidden states must be float [n, {self.engine.config.hidden_size}], got {data.dtype}{list(data.shape)}",
                    "bad_hidden_state",
                )
            if not np.isfinite(data).all():
                raise ProtocolError(f"hidden states of {msg['request_id']} hold NaN or infinite values", "bad_hidden_state")
            item = dict(hidden=data)
        if not 1 <= data.shape[0] <= self.engine.max_seq_len:
            raise ProtocolError(f"step carries {data.shape[0]} tokens; 1..{self.engine.max_seq_len} allowed")
        params = None  # sampling travels once per hop, with a request's first step (position 0)
        if "sampling" in msg.fields:
            sampling = msg["sampling"]
            try:
                params = SamplingParams(
                    float(sampling["temperature"]), int(sampling["top_k"]), float(sampling["top_p"]), int(sampling["seed"])
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise ProtocolError(f"step sampling is malformed: {exc}") from None
        elif msg["position"] == 0:
            raise ProtocolError(f"the first step of {msg['request_id']} carries no sampling parameters")
        step = StepInput(msg["request_id"], entry[1], msg["position"], sample=bool(msg.get("last", True)), **item)
        return step, params, int(msg.get("kv_tokens") or 0)

    def enqueue(self, msg: wire.Message) -> None:
        """Check a `step` addressed to this node (ProtocolError/RequestError if bad) and queue it
        behind the earlier steps of its request."""
        item = self.step_input(msg, self.node)
        self.last_step[msg["request_id"]] = time.monotonic()
        if msg["hop"] == 0:
            self.entries.add(msg["request_id"])
        self.waiting.setdefault(msg["request_id"], collections.deque()).append(Pending(item, msg, item[0].num_tokens))

    def forget(self, request_id: str) -> None:
        """A `free`: drop the request's queued steps and release its KV (if held)."""
        self.waiting.pop(request_id, None)
        self.last_step.pop(request_id, None)
        self.entries.discard(request_id)
        self.release(request_id)

    def expire(self, now: float, lease_s: float) -> list[str]:
        """Release every request whose latest step arrived (or was taken into a batch) more
        than `lease_s` before `now` and none of whose steps still waits here: KV that no live route still uses (a forged
        step, a `free` that never came) is reclaimed. A step queued behind others (a busy node,
        long prompts ahead of it) is a live request, however long it waits."""
        stale = [rid for rid, seen in self.last_step.items() if now - seen > lease_s and not self.waiting.get(rid)]
        for rid in stale:
            logger.warning("node %s: request %s sent no step for %.0f s; its KV is reclaimed", self.node, rid, now - self.last_step[rid])
            self.forget(rid)
        return stale

    def entries_away(self) -> int:
        """Requests that entered here and have no step waiting here: their current token is
        further down their route (or their `free` is on its way)."""
        return sum(rid not in self.waiting for rid in self.entries)

    def prompt_waiting(self) -> bool:
        """Whether some waiting step carries prompt tokens (more than one token)."""
        return any(queue[0].num_tokens > 1 for queue in self.waiting.values())

    # ---------------------------------------------------------------- batching
    def pick_batch(self, now: float | None = None) -> list["Pending"]:
        """Pop one ready step per request, oldest first, within slot, page and batch limits;
        a prompt past the step's prompt budget contributes its next chunk (the rest waits)."""
        batch: list[Any] = []
        rows = prompt_tokens = 0
        pages = self.engine.pages_available
        waiting = self.waiting
        now = time.monotonic() if now is None else now  # a step taken renews its request's lease (`expire`)
        for rid in list(waiting):
            queue = waiting[rid]
            pending = queue[0]
            (item, params, reserve) = pending.item
            held = self.engine.has_request(rid)
            cached = self.engine.tokens_cached(rid) if held else 0
            if item.position < cached or (not held and item.position != 0):
                logger.warning("node %s dropped a stale step of %s at position %d", self.node, rid, item.position)
                self._pop(waiting, rid)
                continue
            if item.position > cached:
                continue  # an earlier step of this request has not arrived yet
            if item.num_tokens == 1 and rows >= self.max_decode_rows:
                continue
            take = item.num_tokens
            if take > 1:
                take = min(take, self.max_prompt_tokens - prompt_tokens, self.engine.max_chunk_tokens)
                if take < 1 or (take == 1 and rows >= self.max_decode_rows):
                    continue  # this step's prompt budget is spent
                if take < item.num_tokens:
                    pending = self._split(queue, take)
                    item = pending.item[0]
            cost = self.engine.page_cost(item, reserve)
            if cost > pages or (not held and not self.engine.free_slots):
                continue  # waits for pages; the scheduler's KV ledger bounds how long
            if not held:
                self.engine.add_request(rid, params, reserve_tokens=reserve, run_start_layer=item.run_start_layer)
            pages -= cost
            rows += item.num_tokens == 1
            prompt_tokens += item.num_tokens if item.num_tokens > 1 else 0
            batch.append(self._pop(waiting, rid))
            self.last_step[rid] = now
        self.decode_rows_total += rows
        self.prompt_tokens_total += prompt_tokens
        return batch

    def _split(self, queue: "collections.deque", take: int) -> Any:
        """Cut the first `take` tokens off the step at the head of `queue` as a chunk that does
        not end the prompt; the rest stays queued (at its new position). Returns the chunk."""
        pending = queue.popleft()
        item, params, reserve = pending.item
        data = item.token_ids if item.token_ids is not None else item.hidden
        key = "token_ids" if item.token_ids is not None else "hidden"
        parts = []
        for begin, end, sample in ((0, take, False), (take, item.num_tokens, item.sample)):
            piece = data[begin:end]
            step = StepInput(item.request_id, item.run_start_layer, item.position + begin, sample=sample, **{key: piece})
            msg = dataclasses.replace(
                pending.msg, arrays=(piece,), fields={**pending.msg.fields, "position": item.position + begin, "last": sample}
            )
            parts.append(dataclasses.replace(pending, item=(step, params, reserve), msg=msg, num_tokens=end - begin))
        queue.appendleft(parts[1])
        queue.appendleft(parts[0])
        return parts[0]

    @staticmethod
    def _pop(waiting: "collections.OrderedDict[str, collections.deque]", rid: str) -> Any:
        queue = waiting[rid]
        pending = queue.popleft()
        if not queue:
            del waiting[rid]
        return pending

    def run(self, batch: list[Any]) -> list[tuple[Any, Any]]:
        """Run one engine step; if it is rejected or fails, retry item by item. An item that
        fails on its own for a reason other than a HelixError (a bug, a value no check foresaw)
        is released and listed in `self.failed` (request id -> reason) for the worker to
        report; the worker itself goes on."""
        items = [p.item[0] for p in batch]
        try:
            return list(zip(batch, self.engine.step(items)))
        except HelixError as exc:
            logger.warning("node %s: batch rejected (%s); retrying item by item", self.node, exc)
        except Exception:
            logger.exception("node %s: a batch of %d failed; retrying item by item", self.node, len(items))
        results = []
        for pending, item in zip(batch, items):
            try:
                results.append((pending, self.engine.step([item])[0]))
            except HelixError as exc:
                logger.warning("node %s dropped %s: %s", self.node, item.request_id, exc)
                if self.engine.has_request(item.request_id) and self.engine.tokens_cached(item.request_id) == 0:
                    self.engine.release(item.request_id)
            except Exception as exc:
                logger.exception("node %s: request %s failed", self.node, item.request_id)
                self.failed[str(item.request_id)] = f"{type(exc).__name__}: {exc}"
                self.forget(str(item.request_id))
        return results

    def release(self, request_id: str) -> None:
        if self.engine.has_request(request_id):
            self.engine.release(request_id)

    def layer_loads(self, batch: list[Any]) -> list[LayerLoad]:
        """Per held layer: prompt tokens, decode rows and their context, for emulated pacing."""
        return layer_loads([pending.item[0] for pending in batch], self.start_layer, self.end_layer)


def runner_spec(assign: wire.Message, compute: ComputePacer | None) -> tuple[RunnerSpec, int, int]:
    """(RunnerSpec, decode rows per batch, prompt tokens per batch) of an `assign` message."""
    config = resolve_model(dict(assign["model"]))
    start, end = assign["start_layer"], assign["end_layer"]
    max_seq_len = min(assign["max_seq_len"], config.max_position_embeddings)
    kv_tokens = assign.get("kv_tokens") or DEFAULT_SLOTS * max_seq_len
    slots = max(1, kv_tokens // max_seq_len)
    max_rows = assign.get("max_batch") or slots
    max_prompt = min(max_seq_len, assign.get("prompt_tokens_per_step") or max_seq_len)
    layout = assign.get("kv_layout") or "paged"
    pages = None
    if layout == "paged":  # kv_tokens tokens of pages per layer; as many requests as fit
        pages = max(pages_for(max_seq_len, PAGE_SIZE), kv_tokens // PAGE_SIZE)
        slots = max(slots, pages)
    if compute is not None:
        max_rows = min(max_rows, max(1, compute.max_decode_batch(end - start)))
    if compute is None:
        prefill = tuple(b for b in (64,) if b < max_prompt) + (max_prompt,)
        decode = tuple(b for b in DECODE_BUCKETS if b < max_rows) + (max_rows,)
    else:  # emulated pacing hides padding cost: few buckets, short warm-up for many workers
        prefill, decode = (max_prompt,), tuple(sorted({max(1, max_rows // 4), max_rows}))
    spec = RunnerSpec(
        config,
        start,
        end,
        assign.get("weights") or f"random:{assign.get('seed', 0)}",
        max_slots=slots,
        max_seq_len=max_seq_len,
        prefill_buckets=prefill,
        decode_buckets=decode,
        kv_layout=layout,
        page_size=PAGE_SIZE,
        num_pages=pages,
        layer_loop=assign.get("layer_loop") or "auto",
    )
    return spec, max_rows, max_prompt
