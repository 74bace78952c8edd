"""Live bench against a live deployment (helix_jax.testing.InProcessCluster: the real coordinator,
workers, ZeroMQ and scheduler, FakeRunners for tiny-8's layers): the same workload and metrics
code as the simulator, measured on the wall clock. What is checked is the accounting (sent,
completed, tokens, the results file and table), not how fast this machine is."""

from __future__ import annotations

import json

import pytest

from helix_jax.bench.live import LiveConfig, run_live_bench
from helix_jax.bench.report import live_table, write_results
from helix_jax.errors import ConfigError
from helix_jax.model.tokenizer import load_tokenizer
from helix_jax.placement import FlowEdge, Placement
from helix_jax.runtime.coordinator import ServeConfig
from helix_jax.testing import InProcessCluster
from helix_jax.topology import load_topology, tiny_topology_path
from helix_jax.workload import FixedLengths

pytestmark = pytest.mark.slow


def placement() -> Placement:
    flows = (FlowEdge("coordinator", "cpu-0", 100), FlowEdge("cpu-0", "cpu-1", 100), FlowEdge("cpu-1", "coordinator", 100))
    return Placement("cpu-small", 8, {"cpu-0": (0, 4), "cpu-1": (4, 8)}, flows)


@pytest.fixture(scope="module")
def endpoint():
    topo = load_topology(tiny_topology_path())
    cfg = ServeConfig(topo, placement(), topo.model, weights="random:0", max_seq_len=64, kv_tokens=256, queue_limit=50)
    with InProcessCluster(cfg, load_tokenizer(topo.model)) as cluster:
        yield cluster.wait_ready().client_endpoint


def test_closed_loop_live_bench_measures_the_deployment(endpoint: str, tmp_path) -> None:
    config = LiveConfig(mode="offline", duration_s=2.0, warmup_s=0.5, concurrency=3, seed=1, drain_s=60.0)
    seen = []
    result = run_live_bench(endpoint, FixedLengths(12, 6), config, progress=seen.append)
    m = result.metrics
    assert result.deployment["model"] == "tiny-8" and result.failed == 0
    assert result.completed >= 3 and m.completed >= 1
    assert m.decode_tokens_per_s > 0 and m.ttft.count >= 1 and m.tpot.count >= 1
    assert 0 < m.ttft.p50_ms <= m.ttft.p99_ms and 0 < m.tpot.p50_ms <= m.tpot.p99_ms
    # every completed request produced exactly its 6 tokens: window tokens <= 6 per request sent
    assert m.output_tokens <= 6 * result.sent
    assert seen and seen[-1] == config.duration_s
    path = write_results({"runs": [result.to_dict()]}, tmp_path)
    assert json.loads(path.read_text())["runs"][0]["completed"] == result.completed
    assert live_table(result).row_count == 1


def test_ignore_eos_gives_every_request_its_sampled_length(endpoint: str) -> None:
    """`--ignore-eos`: no request ends before its output length (the report's "ended at EOS";
    without it, about one request in fifteen of these ends at EOS on this deployment)."""
    config = LiveConfig(mode="offline", duration_s=1.5, warmup_s=0.25, concurrency=3, seed=3, ignore_eos=True)
    result = run_live_bench(endpoint, FixedLengths(4, 56), config)
    assert result.completed >= 3 and result.failed == 0 and result.ended_early == 0
    assert result.to_dict()["ended_early"] == 0 and result.to_dict()["config"]["ignore_eos"] is True


def test_open_loop_live_bench_sends_at_the_rate(endpoint: str) -> None:
    config = LiveConfig(mode="online", rate_per_s=8.0, duration_s=1.5, warmup_s=0.25, seed=2)
    result = run_live_bench(endpoint, FixedLengths(8, 4), config)
    assert 3 <= result.sent <= 30  # Poisson(12), seeded
    assert result.completed + result.rejected_overloaded + result.cancelled == result.sent
    assert result.metrics.decode_tokens_per_s > 0


def test_live_config_errors() -> None:
    with pytest.raises(ConfigError, match="online mode needs a positive rate"):
        LiveConfig(mode="online")


def test_bench_cli_against_the_endpoint(endpoint: str, tmp_path) -> None:
    from typer.testing import CliRunner

    from helix_jax.cli.main import app

    out = tmp_path / "live"
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "--endpoint",
            endpoint,
            "--duration",
            "1.5",
            "--warmup",
            "0.5",
            "--prompt-tokens",
            "8",
            "--output-tokens",
            "4",
            "--concurrency",
            "2",
            "--out",
            str(out),
        ],
        catch_exceptions=False,
        env={"COLUMNS": "250"},
    )
    assert result.exit_code == 0, result.output
    assert "decode tok/s" in result.output and "tiny-8" in result.output
    run = json.loads((out / "results.json").read_text())["runs"][0]
    assert run["completed"] >= 2 and run["metrics"]["decode_tokens_per_s"] > 0
    assert (out / "latency_cdf.png").stat().st_size > 1000
