"""Test doubles that ship with the library: a fake stage runner, an in-process cluster, `wait_until`.

Users testing code built on helix-jax (and helix-jax's own tests) get a deployment that starts
in well under a second, runs the real coordinator, workers, wire format and scheduler, and
streams tokens that `fake_generation` predicts exactly. Nothing here imports jax.
"""

from helix_jax.testing.cluster import InProcessCluster, WorkerThread
from helix_jax.testing.fake_runner import FakeRunner, fake_generation, next_token
from helix_jax.testing.waiting import wait_until

__all__ = ["FakeRunner", "InProcessCluster", "WorkerThread", "fake_generation", "next_token", "wait_until"]
