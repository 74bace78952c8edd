"""Runtime parts that need no processes: request validation, stop handling, emulated pacing."""

from __future__ import annotations

import numpy as np
import pytest

from helix_jax.errors import RequestError
from helix_jax.model.tokenizer import ByteTokenizer
from helix_jax.modelconfig import PRESETS
from helix_jax.runtime import wire
from helix_jax.runtime.emulation import ComputePacer, DelayedSends, EmulationSpec, LayerLoad, LinkPacer, layer_loads
from helix_jax.runtime.requests import parse_generate
from helix_jax.topology import load_topology, tiny_topology_path, topology_from_dict

TINY = PRESETS["tiny-8"]


def _generate(**fields) -> wire.Message:
    base = dict(request_id="c1", max_tokens=4, temperature=0.0, top_k=0, top_p=1.0, seed=0, prompt="hi")
    base.update(fields)
    return wire.make("generate", **{k: v for k, v in base.items() if v is not None})


def test_parse_generate_encodes_text_with_bos() -> None:
    req = parse_generate(_generate(), b"id", "r1", TINY, ByteTokenizer(), 64)
    assert req.prompt_ids == (256, ord("h"), ord("i")) and req.max_tokens == 4 and req.request_id == "r1"


def test_parse_generate_keeps_sampling_and_builds_wire_forms_once() -> None:
    from helix_jax.model import SamplingParams
    from helix_jax.placement import Hop

    req = parse_generate(_generate(temperature=0.7, top_k=5, top_p=0.9, seed=11), b"id", "r1", TINY, ByteTokenizer(), 64)
    assert req.sampling == SamplingParams(0.7, 5, 0.9, 11)
    assert req.sampling_wire == {"temperature": 0.7, "top_k": 5, "top_p": 0.9, "seed": 11}
    req.set_route((Hop("a", 0, 4), Hop("b", 4, 8)))
    assert req.route_wire == [["a", 0, 4], ["b", 4, 8]]
    step = wire.decode(
        wire.encode(
            wire.make(
                "step",
                [np.zeros(1, np.int32)],
                request_id="r1",
                route=req.route_wire,
                hop=0,
                position=0,
                index=0,
                sampling=req.sampling_wire,
            )
        )
    )
    assert step["route"] == [["a", 0, 4], ["b", 4, 8]] and step["sampling"]["top_k"] == 5


@pytest.mark.parametrize(
    "fields, needle",
    [
        (dict(prompt=None), "exactly one of prompt"),
        (dict(prompt=None, prompt_ids=[]), "prompt_ids is empty"),
        (dict(prompt=None, prompt_ids=[1, -1]), "outside the vocabulary"),
        (dict(prompt=None, prompt_ids=[1, True]), "outside the vocabulary"),
        (dict(prompt="hi", prompt_ids=[1]), "exactly one of prompt"),
        (dict(max_tokens=-3), "max_tokens must be positive"),
        (dict(max_tokens=62), "prompt too long: 3 prompt tokens + max_tokens 62"),
        (dict(temperature=-0.5), "temperature must be in [0, 100]"),
        (dict(temperature=101.0), "temperature must be in [0, 100]"),
        (dict(top_k=-1), "top_k must be an integer >= 0"),
        (dict(top_p=1.5), "top_p must be in"),
        (dict(seed=-1), "seed must be an integer in [0, 2**32)"),
        (dict(seed=2**32), "seed must be an integer in [0, 2**32)"),
        (dict(stop=["a"] * 9), "stop must be at most 8"),
    ],
)
def test_parse_generate_rejects_bad_requests(fields: dict, needle: str) -> None:
    with pytest.raises(RequestError, match=None) as info:
        parse_generate(_generate(**fields), b"id", "r1", TINY, ByteTokenizer(), 64)
    assert needle in str(info.value)


def test_stop_string_eos_and_length_end_a_request() -> None:
    codec = ByteTokenizer()
    req = parse_generate(_generate(stop=["lo"], max_tokens=10), b"id", "r1", TINY, codec, 64)
    assert req.add_token(ord("h"), codec, frozenset({257})) == ("h", None)
    assert req.add_token(ord("e"), codec, frozenset({257})) == ("e", None)
    assert req.add_token(ord("l"), codec, frozenset({257})) == ("l", None)
    delta, reason = req.add_token(ord("o"), codec, frozenset({257}))
    assert reason == "stop" and req.text == "he"  # the stop string is cut from the text
    eos = parse_generate(_generate(), b"id", "r2", TINY, codec, 64)
    assert eos.add_token(257, codec, frozenset({257})) == ("", "eos") and eos.output_ids == [257]
    short = parse_generate(_generate(max_tokens=2), b"id", "r3", TINY, codec, 64)
    assert short.add_token(65, codec, frozenset({257}))[1] is None and short.add_token(66, codec, frozenset({257}))[1] == "length"


def _two_node_topology() -> object:
    return topology_from_dict(
        {
            "model": "llama-2-70b",
            "nodes": [{"name": "a", "gpu": "A100-40GB"}, {"name": "b", "gpu": "T4"}],
            "links": {"default": {"bandwidth": 1e6, "latency_ms": 10}},
        }
    )


def test_link_pacer_is_fifo_with_latency_and_bandwidth() -> None:
    pacer = LinkPacer(_two_node_topology(), "a", time_scale=2.0)
    act = 8192 * 2  # LLaMA-2-70B hidden state in bf16, bytes per token
    busy = act * 10 / 1e6 * 2.0  # 10 tokens at 1 MB/s, twice slower
    first = pacer.deliver_at("b", 10, now=100.0)
    assert first == pytest.approx(100.0 + busy + 0.010 * 2.0)
    second = pacer.deliver_at("b", 10, now=100.0)  # queued behind the first transfer
    assert second == pytest.approx(100.0 + 2 * busy + 0.020)
    to_coordinator = pacer.deliver_at("coordinator", 1, now=100.0)  # token ids: 4 bytes
    assert to_coordinator == pytest.approx(100.0 + 4 / 1e6 * 2.0 + 0.020)


def test_compute_pacer_sums_cost_model_layers_times_scale() -> None:
    from helix_jax.costmodel import CostModel

    topo = _two_node_topology()
    pacer = ComputePacer(topo, "b", time_scale=3.0)
    cost = CostModel(topo)
    loads = [LayerLoad(0, 0, 0), LayerLoad(16, 4, 400), LayerLoad(0, 4, 400)]
    expected = 3.0 * (cost.layer_step_seconds("T4", 16, 4, 400) + cost.layer_step_seconds("T4", 0, 4, 400))
    assert pacer.step_seconds(loads) == pytest.approx(expected)
    assert pacer.max_decode_batch(3) == cost.max_decode_batch("T4", 3)


def test_emulation_spec_travels_and_rebuilds_the_topology() -> None:
    import msgpack

    topo = load_topology(tiny_topology_path())
    raw = msgpack.unpackb(msgpack.packb(EmulationSpec.for_topology(topo, 4.0).to_wire()))
    spec = EmulationSpec.from_wire(raw)
    rebuilt = spec.topology()
    assert rebuilt.node_names == topo.node_names and rebuilt.model == topo.model and spec.time_scale == 4.0


def test_delayed_sends_fire_in_due_order_and_fifo_among_equals() -> None:
    sends = DelayedSends()
    assert not sends and sends.next_due is None
    sends.push(2.0, "b", "late")
    sends.push(1.0, "a", "first")
    sends.push(1.0, "c", "second")
    assert sends.next_due == 1.0
    out: list[tuple[str, str]] = []
    sends.fire(1.5, lambda dst, msg: out.append((dst, msg)))
    assert out == [("a", "first"), ("c", "second")] and sends.next_due == 2.0
    sends.fire(2.0, lambda dst, msg: out.append((dst, msg)))
    assert out[-1] == ("b", "late") and not sends


def test_layer_loads_count_each_item_from_its_start_layer() -> None:
    from helix_jax.model import StepInput

    items = [
        StepInput("p", 2, 0, token_ids=np.zeros(5, np.int32)),  # prompt chunk from the stage start
        StepInput("d1", 4, 9, hidden=np.zeros((1, 8), np.float32)),  # decode entering at layer 4
        StepInput("d2", 6, 19, hidden=np.zeros((1, 8), np.float32)),
    ]  # decode entering at layer 6
    loads = layer_loads(items, 2, 8)
    assert loads == [
        LayerLoad(5, 0, 0),
        LayerLoad(5, 0, 0),
        LayerLoad(5, 1, 10),
        LayerLoad(5, 1, 10),
        LayerLoad(5, 2, 30),
        LayerLoad(5, 2, 30),
    ]
    brute = [
        LayerLoad(
            sum(i.num_tokens for i in items if i.run_start_layer <= layer and i.num_tokens > 1),
            sum(1 for i in items if i.run_start_layer <= layer and i.num_tokens == 1),
            sum(i.position + 1 for i in items if i.run_start_layer <= layer and i.num_tokens == 1),
        )
        for layer in range(2, 8)
    ]
    assert loads == brute and layer_loads([], 2, 8) == [LayerLoad(0, 0, 0)] * 6


def test_the_coordinator_client_front_end_and_planner_import_no_jax() -> None:
    """They run on hosts and in processes without an accelerator stack: only workers need jax.
    The planner too, although cvxpy's solver probe imports jax (solver/maxflow.import_cvxpy), and
    deploy's first step, which resolves the weights source (helix_jax/models.py)."""
    import subprocess
    import sys

    code = (
        "import sys; import helix_jax.runtime.coordinator, helix_jax.runtime.deploy, helix_jax.client, "
        "helix_jax.http.app, helix_jax.model.tokenizer, helix_jax.model.sampling_params; "
        "from helix_jax.solver.plan import plan; from helix_jax.topology import load_topology, tiny_topology_path; "
        "assert plan(load_topology(tiny_topology_path()), time_limit_s=5).flows; "
        "from helix_jax.cli.serve_cmds import validate_deploy; "
        "assert validate_deploy(tiny_topology_path(), None, 1.0, '127.0.0.1', 10.0, True)[2] == 'random:0'; "
        "print(sorted(m for m in ('jax', 'flax') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_thaw_calls_off_a_freeze_after_that_has_not_fired() -> None:
    from helix_jax.model.batching import StepInput
    from helix_jax.runtime.runner import RunnerSpec
    from helix_jax.testing import FakeRunner

    config = load_topology(tiny_topology_path()).model
    spec = RunnerSpec(config, 0, 8, "random:0", max_slots=4, max_seq_len=64, prefill_buckets=(16,), decode_buckets=(4,), num_pages=16)
    for thaw_first in (False, True):
        runner = FakeRunner(spec)
        runner.add_request("r")
        runner.freeze_after(1)
        if thaw_first:
            runner.thaw()
        runner.step([StepInput("r", 0, 0, token_ids=np.asarray([1, 2, 3], np.int32))])
        assert runner.frozen is not thaw_first  # without the thaw, the pending freeze fires


@pytest.mark.parametrize("exit_code, kept", [(0, False), (3, True)])
def test_a_deployment_removes_its_own_temporary_directory_only_after_a_clean_exit(cpu_small_placement, exit_code, kept) -> None:
    """Without log_dir/state_dir a LocalDeployment keeps logs, keys and connection.json in a
    temporary directory: gone after every worker exited 0, kept when one failed (its log is
    what tells why). The stand-in worker is a child process that exits with `exit_code`."""
    import subprocess
    import sys

    from helix_jax.model.tokenizer import load_tokenizer
    from helix_jax.runtime.coordinator import ServeConfig
    from helix_jax.runtime.deploy import LocalDeployment
    from helix_jax.runtime.worker_process import WorkerProcess

    topo = load_topology(tiny_topology_path())
    dep = LocalDeployment(ServeConfig(topo, cpu_small_placement, topo.model), load_tokenizer(topo.model))
    log = dep.log_dir / "cpu-0.log"
    log.write_text("worker log\n")
    dep.workers.append(WorkerProcess("cpu-0", subprocess.Popen([sys.executable, "-c", f"raise SystemExit({exit_code})"]), log))
    dep.close()
    assert log.exists() == kept
    if kept:
        import shutil

        shutil.rmtree(dep.log_dir)
