"""Discrete-event simulator of a placement serving a workload, driving the real `Scheduler`.

    from helix_jax.sim import SimConfig, simulate
    result = simulate(placement, CostModel(topology), AzureConversationLengths(), SimConfig(mode="offline"))
    result.metrics.decode_tokens_per_s, result.flow_fraction, result.to_dict()
    ReferenceSimulator(placement, cost_model, lengths, config).run()  # one event per message: the oracle

Files in data-flow order: config.py, admission.py, request.py, cluster.py, stepping.py, engine.py,
result.py (state.py names what they share; reference.py is the message-per-event engine).
"""

from helix_jax.sim.config import MODES, SimConfig
from helix_jax.sim.engine import Simulator, simulate
from helix_jax.sim.reference import ReferenceSimulator
from helix_jax.sim.result import NodeStats, SimResult, config_dict, placement_max_flow

__all__ = [
    "MODES",
    "NodeStats",
    "ReferenceSimulator",
    "SimConfig",
    "SimResult",
    "Simulator",
    "config_dict",
    "placement_max_flow",
    "simulate",
]
