"""Test doubles that ship with the library: a fake stage runner and an in-process cluster.

Users testing code built on helix-jax (and helix-jax's own tests) get a deployment that starts
in well under a second, runs the real coordinator, workers, wire format and scheduler, and
streams tokens that `fake_generation` predicts exactly. Nothing here imports jax.
"""

from helix_jax.testing.cluster import InProcessCluster, WorkerThread
from helix_jax.testing.fake_runner import FakeRunner, fake_generation, next_token

__all__ = ["FakeRunner", "InProcessCluster", "WorkerThread", "fake_generation", "next_token"]
