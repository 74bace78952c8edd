"""Message schemas: the fields (and array count) of every message kind the runtime speaks.

Sits under the runtime (client -> coordinator -> workers -> coordinator -> client): wire.py
checks every message it builds or decodes against `SCHEMAS`; this module is the list of
kinds, grouped by socket pair, and what each must and may carry. Data only; touches nothing.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

_NUM = (int, float)
_OPT_STR = (str, type(None))


@dataclasses.dataclass(frozen=True)
class Schema:
    """Required fields (name -> accepted types), optional fields and the array count."""

    required: Mapping[str, tuple[type, ...]]
    optional: Mapping[str, tuple[type, ...]] = dataclasses.field(default_factory=dict)
    num_arrays: int = 0


def _s(required: dict[str, Any], optional: dict[str, Any] | None = None, arrays: int = 0) -> Schema:
    def norm(d: dict[str, Any] | None) -> dict[str, tuple[type, ...]]:
        return {k: (v if isinstance(v, tuple) else (v,)) for k, v in (d or {}).items()}

    return Schema(norm(required), norm(optional), arrays)


# Every message kind the system speaks, grouped by socket pair.
SCHEMAS: dict[str, Schema] = {
    # client <-> coordinator (client DEALER, coordinator ROUTER)
    "generate": _s(
        {"request_id": str, "max_tokens": int, "temperature": _NUM, "top_k": int, "top_p": _NUM, "seed": int},
        {"prompt": _OPT_STR, "prompt_ids": (list, type(None)), "stop": (list, type(None)), "ignore_eos": bool},
    ),
    "cancel": _s({"request_id": str}),
    "info": _s({"request_id": str}),
    "info_reply": _s(
        {"request_id": str, "model": str, "num_layers": int, "vocab_size": int, "time_scale": _NUM, "nodes": list}, {"max_seq_len": int}
    ),
    "stats": _s({"request_id": str}),  # load, per-node KV/flow/health, readiness (Coordinator.serving_stats)
    "stats_reply": _s({"request_id": str, "stats": dict}),
    "token": _s({"request_id": str, "index": int, "token_id": int, "text": str}),
    "done": _s(
        {"request_id": str, "ids": list, "text": str, "finish_reason": str, "prompt_tokens": int, "time_scale": _NUM},
        {"server_ttft_s": _NUM, "queue_s": _NUM, "route": list},
    ),
    "error": _s({"request_id": _OPT_STR, "error": str, "message": str}),
    # worker <-> coordinator control (worker DEALER, coordinator ROUTER)
    "register": _s({"node": str, "data_endpoint": str, "pid": int, "host": str}),
    "assign": _s(
        {"node": str, "start_layer": int, "end_layer": int, "model": dict, "neighbours": dict, "coordinator_data": str, "max_seq_len": int},
        {
            "weights": _OPT_STR,
            "emulate": (dict, type(None)),
            "kv_tokens": (int, type(None)),
            "max_batch": (int, type(None)),
            "gather_s": _NUM,
            "seed": int,
            "kv_layout": _OPT_STR,
            "layer_loop": _OPT_STR,
            "prompt_tokens_per_step": (int, type(None)),
            "upstream": list,
        },
    ),  # CURVE on: the nodes that may hand off to this one
    # kv_page_tokens: the worker's KV page size; the ledger rounds its reservations to it
    "ready": _s({"node": str, "kv_capacity_token_layers": int, "warmup_s": _NUM}, {"kv_page_tokens": (int, type(None))}),
    "failed": _s({"node": str, "message": str}, {"phase": str}),  # phase: where it failed (load, compile)
    "progress": _s({"node": str, "phase": str}),  # warm-up phase started: "load" (weights), "compile"
    # mean batch time and messages dropped (reason -> count) since the last one
    "heartbeat": _s({"node": str}, {"mean_step_s": _NUM, "dropped": dict}),
    "peer": _s({"node": str, "data_endpoint": str}),  # a rejoined neighbour's new data endpoint
    "shutdown": _s({}),
    # data plane (PUSH -> PULL): activations hop to hop, sampled tokens back, KV release
    # kv_tokens: the request's KV reservation (prompt + max_tokens); last: false on a prompt
    # chunk that does not end the prompt (nothing is sampled for it)
    "step": _s(
        {"request_id": str, "route": list, "hop": int, "position": int, "index": int},
        {"kv_tokens": int, "last": bool, "sampling": dict},
        arrays=1,
    ),  # sampling: first step only
    "sampled": _s({"request_id": str, "index": int, "token_id": int, "node": str}),
    "free": _s({"request_id": str}),
    "abort": _s({"request_id": str, "node": str, "message": str}),  # worker -> coordinator: this request failed here
}
