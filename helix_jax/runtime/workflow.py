"""Deploy as a workflow: named steps, per-node progress, and failures that name step and node.

Owns: `STEPS` (validate -> plan -> launch -> load -> compile -> ready -> serving), `StepFailed`
(one message "STEP: node NODE on host HOST: CAUSE"), `StepProgress` (the workers' phases as
the coordinator hears them -> "load 2/3 nodes" and which node is slowest), the failure of a
start-up (a worker's `failed` report or its exit) mapped to its step, and `deployment.json`.

Sits between the deploy command (cli/deploy_cmd.py, which renders the steps with rich) and the
runtime: `LocalDeployment.wait_ready(on_progress=...)` hands it the coordinator's node phases
(`Coordinator.phases`, fed by the workers' `register`, `progress` and `ready` messages).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Mapping

from helix_jax.errors import HelixError

STEPS = ("validate", "plan", "launch", "load", "compile", "ready", "serving")
STEP_TITLES = {
    "validate": "validate topology",
    "plan": "plan placement",
    "launch": "launch workers",
    "load": "load weights",
    "compile": "compile buckets",
    "ready": "ready",
    "serving": "serving",
}
# a worker's phase -> how far it got: past "launch" once registered, past "load" once compiling, ...
_PASSED = {"registered": ("launch",), "load": ("launch",), "compile": ("launch", "load"), "ready": ("launch", "load", "compile")}


class StepFailed(HelixError):
    """A deploy step failed: `str()` names the step, the node and its host, and the cause."""

    def __init__(self, step: str, cause: str, node: str | None = None, host: str | None = None) -> None:
        where = f"node {node} on host {host or 'unknown'}: " if node else ""
        super().__init__(f"{step}: {where}{cause}")
        self.step, self.cause, self.node, self.host = step, cause, node, host


def failed_step(phase: str | None) -> str:
    """The step a node was in when it failed, from its last reported phase."""
    if phase is None:
        return "launch"  # never registered
    return {"registered": "load", "ready": "ready"}.get(phase, phase)


@dataclasses.dataclass(frozen=True)
class StepProgress:
    """How many nodes passed `step`, of how many, and the slowest node still in it."""

    step: str
    done: int
    total: int
    slowest: tuple[str, float] | None  # (node, seconds in this step so far)

    def line(self) -> str:
        text = f"{self.step} {self.done}/{self.total} nodes"
        if self.slowest is not None and self.done < self.total:
            text += f" (slowest: {self.slowest[0]}, {self.slowest[1]:.0f} s)"
        return text


def progress_of(phases: Mapping[str, tuple[str, float]], nodes: list[str], started: float, now: float | None = None) -> list[StepProgress]:
    """Per-node progress of the launch, load and compile steps (`phases`: Coordinator.phases)."""
    now = time.monotonic() if now is None else now
    out = []
    for step in ("launch", "load", "compile"):
        done = [n for n in nodes if step in _PASSED.get(phases.get(n, ("", 0.0))[0], ())]
        waiting = [(n, now - (phases[n][1] if n in phases else started)) for n in nodes if n not in done]
        out.append(StepProgress(step, len(done), len(nodes), max(waiting, key=lambda w: w[1]) if waiting else None))
    return out


def current_step(progress: list[StepProgress]) -> StepProgress | None:
    """The first step some node has not passed yet (None: all compiled)."""
    return next((p for p in progress if p.done < p.total), None)


def write_deployment_json(path: Path, data: Mapping[str, Any]) -> Path:
    """deployment.json: placement, endpoints, each node's host, process or actor id, log path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    tmp.replace(path)
    return path
