"""Links: what a message costs on a link, and how many decode tokens/s links and NICs carry.

Sits inside the cost model (topology -> **cost model** -> solver link capacities, simulator
and `--emulate` transfers). Reads the topology's links and NICs and the model's activation
size; touches nothing else.

Owns **the link transfer time**: a link carries one transfer at a time in FIFO order; a
message of `n` tokens ready at `t` starts at `max(t, link free)`, holds the link for
`n x bytes per token / bandwidth` and arrives `latency` later (propagation overlaps the next
transfer). `FifoLink` is that link (the simulator's and the emulated endpoints' links),
`CostModel.transfer_seconds` the time on an idle one; nothing else computes it.

Links carry one activation vector per token (`activation_bytes_per_token`); links to or from
the coordinator carry token ids (`COORDINATOR_BYTES_PER_TOKEN`). Link and NIC capacities are in
decode tokens/s like everything else, so they count the prompt traffic too: every decode token
brings `mean_prompt / mean_output` prompt vectors over each node-to-node hop (3.3 on the Azure
trace; the paper's convention of counting decode vectors alone overstates a 12.5 MB/s
inter-region link 4.3x, and FIFO links then queue every decode token behind prompt chunks).
"""

from __future__ import annotations

import functools
from typing import Any

from helix_jax.costmodel.memory import MAX_PROMPT_TOKENS_CAP, MemoryModel
from helix_jax.modelconfig import ModelConfig
from helix_jax.topology import COORDINATOR, Link

COORDINATOR_BYTES_PER_TOKEN = 4  # int32 token ids
LINK_PLANNING_UTILIZATION = 0.5  # busiest share of a slow (inter-region) link a plan may use


def bytes_per_token(model: ModelConfig, src: str, dst: str) -> int:
    """Bytes one token occupies on the link src -> dst: an activation vector between nodes,
    a token id to or from the coordinator."""
    if COORDINATOR in (src, dst):
        return COORDINATOR_BYTES_PER_TOKEN
    return model.activation_bytes_per_token


def latency_seconds(link: Link) -> float:
    return link.latency_ms / 1e3


class FifoLink:
    """A directed link with one FIFO transfer at a time (the module docstring). Every duration
    is multiplied by `time_scale` (emulated pacing runs a cluster N times slower)."""

    __slots__ = ("latency_s", "bytes_per_s", "bytes_per_token", "time_scale", "free_at_s", "busy_s", "transfers")

    def __init__(self, latency_s: float, bytes_per_s: float, bytes_per_token: float, time_scale: float = 1.0):
        self.latency_s = latency_s
        self.bytes_per_s = bytes_per_s
        self.bytes_per_token = bytes_per_token
        self.time_scale = time_scale
        self.free_at_s = 0.0
        self.busy_s = 0.0
        self.transfers = 0

    @classmethod
    def between(cls, link: Link, model: ModelConfig, src: str, dst: str, time_scale: float = 1.0) -> "FifoLink":
        """The topology's link src -> dst carrying `model`'s tokens (latency scaled too)."""
        return cls(latency_seconds(link) * time_scale, link.bandwidth_bytes_per_s, float(bytes_per_token(model, src, dst)), time_scale)

    def send(self, now_s: float, num_tokens: int) -> float:
        """Queue a message of `num_tokens` tokens at `now_s`; returns its arrival time."""
        start = now_s if now_s > self.free_at_s else self.free_at_s
        wire_s = num_tokens * self.bytes_per_token / self.bytes_per_s * self.time_scale
        self.free_at_s = start + wire_s
        self.busy_s += wire_s
        self.transfers += 1
        return self.free_at_s + self.latency_s


class LinkModel(MemoryModel):
    """Link and NIC figures of one topology (part of CostModel)."""

    def bytes_per_vector(self, src: str, dst: str) -> float:
        """Bytes one token occupies on the link src -> dst (`bytes_per_token`)."""
        return float(bytes_per_token(self.model, src, dst))

    def _vectors_per_decode_token(self, dst: str) -> float:
        """Tokens a link carries per decode token of the workload: each decode token's own vector
        plus `prompt_per_output` prompt vectors (prefill crosses the same hops), except on the
        way back to the coordinator, which gets one sampled-position vector per step."""
        return 1.0 if dst == COORDINATOR else 1.0 + self.workload.prompt_per_output

    def link_tokens_per_s(self, src: str, dst: str) -> float:
        """Decode tokens/s the link src -> dst carries, prompt traffic included."""
        link = self.topology.link(src, dst)
        return link.bandwidth_bytes_per_s / (self.bytes_per_vector(src, dst) * self._vectors_per_decode_token(dst))

    def nic_tokens_per_s(self, node: str) -> float | None:
        """Decode tokens/s the node's NIC passes each way, prompt activations included
        (node-to-node traffic only; token ids to and from the coordinator bypass it), or None
        where the catalog sets no NIC."""
        nic = self.topology.gpu_of(node).nic_bandwidth_bytes_per_s
        if nic is None:
            return None
        return nic / (self.model.activation_bytes_per_token * (1.0 + self.workload.prompt_per_output))

    def fifo_link(self, src: str, dst: str, time_scale: float = 1.0) -> FifoLink:
        """A fresh (idle) FIFO link src -> dst of this topology."""
        return FifoLink.between(self.topology.link(src, dst), self.model, src, dst, time_scale)

    def transfer_seconds(self, src: str, dst: str, num_tokens: int) -> float:
        """Latency + wire time of one message of `num_tokens` vectors (prompt or decode) on an
        idle link."""
        return self.fifo_link(src, dst).send(0.0, num_tokens)

    @functools.cached_property
    def route_link_seconds(self) -> float:
        """Time a decode token spends on links per round trip (a cluster-wide estimate, like
        `reference_layer_seconds`): ~`L / mean max_layers` hops at the mean link latency between
        nodes of one region, plus, when nodes sit in several regions, the crossings of a plan
        that visits each region once (region windows) at the mean latency between regions: the
        activation crossings also wait behind prompt chunks on a FIFO link planned to
        `LINK_PLANNING_UTILIZATION` (M/D/1: rho / (2 (1 - rho)) chunk wire times), the token
        ids back to (and, if it has no nodes, into) the coordinator's region pay latency only."""
        nodes = self.topology.nodes
        region = {n.name: n.region or "default" for n in nodes}
        tops = [self.max_layers(n.gpu) for n in nodes]
        mean_top = sum(tops) / len(tops) if tops else 0
        if mean_top <= 0:
            return 0.0
        within: list[Any] = []  # Links
        between: list[Any] = []
        for a in nodes:
            for b in nodes:
                if a.name != b.name:
                    (within if region[a.name] == region[b.name] else between).append(self.topology.link(a.name, b.name))
        hops = self.model.num_layers / mean_top
        total = hops * (sum(link.latency_ms for link in within) / len(within) / 1e3 if within else 0.0)
        node_regions = set(region.values())
        coordinator_region = self.topology.coordinator.region or "default"
        if between and len(node_regions | {coordinator_region}) > 1:
            rho = LINK_PLANNING_UTILIZATION
            chunk_bytes = MAX_PROMPT_TOKENS_CAP * self.model.activation_bytes_per_token
            latency_s = sum(link.latency_ms for link in between) / len(between) / 1e3
            queue_s = sum(rho / (2 * (1 - rho)) * chunk_bytes / link.bandwidth_bytes_per_s for link in between) / len(between)
            # activations cross between node regions; token ids go back (and in) latency-only
            id_crossings = 1 + (coordinator_region not in node_regions)
            total += (len(node_regions) - 1) * (latency_s + queue_s) + id_crossings * latency_s
        return total
