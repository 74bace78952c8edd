"""Real-model benchmark (part of `make bench-runtime`): SmolLM2-135M-Instruct on this CPU.

1. Local decode: helix-jax (one StageEngine holding all 30 layers) against Hugging Face
   transformers (PyTorch, the same GGUF dequantized, the same dtype, same machine, same run):
   decode tokens/s at batch 1, 8 and 32 after a 128-token context, and TTFT of a 512-token
   prompt, in alternating rounds (ours, theirs, ours, ...: a drifting machine moves both sides
   of each ratio); every round's ratio and their median.
2. The shipped 3-worker deployment (entry gathering on, its default here, and off) at 16 and 64 concurrent
   streams of 64-token prompts and 160 new tokens: its decode rate (every token after each
   stream's first, over the span from the first first token to the last token: a lower bound,
   since late prompts still prefill while early streams decode) and its rate while every stream
   decodes (the tokens that arrive from the last first token to the first last token), against
   the local engine decoding the same number of sequences at once; the whole run's tok/s; each
   worker's peak RSS (VmHWM).

  python -m helix_jax.cli.model_bench [--batches 1,8,32] [--rounds 3] [--streams 16,64] [--max-batch none] [--gather-ms auto,0]
      [--prompt-tokens 64] [--topology PATH] [--skip-deploy] [--json]        (--batches "": the deployments only)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

MODEL = "smollm2-135m"
CONTEXT, STEPS, TTFT_PROMPT, ROUNDS = 128, 16, 512, 3


def _prompt(n: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    return [int(t) for t in rng.integers(100, 40000, size=n)]


def helix_meters(batches: list[int], ttft: bool = True) -> dict:
    """Our engine's measurements, each a callable run once per round: ("decode", b) -> decode
    tok/s of `b` sequences after a CONTEXT-token prompt each (the median of STEPS steps; a round
    goes on from where the last one stopped, or prefills the prompts again, untimed, when the
    64 positions after them are used up), and with `ttft`, "ttft" -> ms to the first token of a
    TTFT_PROMPT-token prompt."""
    from helix_jax.model import SamplingParams, StageEngine, StepInput, load_stage_weights
    from helix_jax.modelconfig import preset

    config = preset(MODEL)
    weights = load_stage_weights(config, 0, config.num_layers, MODEL)

    def engine(slots: int, max_seq_len: int, prefill: int, decode: int) -> StageEngine:
        return StageEngine(
            config,
            0,
            config.num_layers,
            weights,
            max_slots=slots,
            max_seq_len=max_seq_len,
            prefill_buckets=(prefill,),
            decode_buckets=(decode,),
            prefill_batch_buckets=(1,),
        )

    def decoder(batch: int):
        eng = engine(batch, CONTEXT + 64, CONTEXT, batch)  # the window of every earlier figure
        position = [eng.max_seq_len]  # room for no round yet: the first measure prefills

        def prefill() -> None:
            for i in range(batch):
                if eng.has_request(i):
                    eng.release(i)
                eng.add_request(i, SamplingParams())
                eng.step([StepInput(i, 0, 0, token_ids=np.asarray(_prompt(CONTEXT, i), np.int32))])
            position[0] = CONTEXT

        def measure() -> float:
            if position[0] + STEPS + 2 > eng.max_seq_len:  # out of room: the prompts again, untimed
                prefill()
            times = []
            for _ in range(STEPS + 2):
                items = [StepInput(i, 0, position[0], token_ids=np.asarray([5], np.int32)) for i in range(batch)]
                begin = time.perf_counter()
                eng.step(items)
                times.append(time.perf_counter() - begin)
                position[0] += 1
            return batch / statistics.median(times[2:])

        return measure

    meters: dict = {("decode", b): decoder(b) for b in batches}
    if not ttft:
        return meters
    ttft_engine = engine(1, TTFT_PROMPT + 64, TTFT_PROMPT, 1)
    prompt = np.asarray(_prompt(TTFT_PROMPT, 99), np.int32)

    def first_token_ms() -> float:
        runs = []
        for _ in range(3):
            ttft_engine.add_request("p", SamplingParams())
            begin = time.perf_counter()
            ttft_engine.step([StepInput("p", 0, 0, token_ids=prompt, sample=True)])
            runs.append(time.perf_counter() - begin)
            ttft_engine.release("p")
        return statistics.median(runs) * 1e3

    first_token_ms()  # compile
    meters["ttft"] = first_token_ms
    return meters


def transformers_meters(batches: list[int]) -> tuple[dict, int]:
    """The same measurements with transformers' `generate` (greedy, its own KV cache): decode
    tok/s from the time of STEPS + 1 new tokens minus the time of 1 (prefill and first token);
    and its torch thread count."""
    import torch
    import transformers

    from helix_jax.models import model_file

    path = model_file(MODEL)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    config = model.generation_config
    config.eos_token_id, config.do_sample = [], False  # run every step, as ours does

    def timed(ids: torch.Tensor, new: int) -> float:
        begin = time.perf_counter()
        with torch.inference_mode():
            model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config, max_new_tokens=new)
        return time.perf_counter() - begin

    def decoder(batch: int):
        ids = torch.tensor([_prompt(CONTEXT, i) for i in range(batch)])
        timed(ids, 2)  # warm

        def measure() -> float:
            first = statistics.median(timed(ids, 1) for _ in range(3))
            whole = statistics.median(timed(ids, STEPS + 1) for _ in range(3))
            return batch * STEPS / max(whole - first, 1e-9)

        return measure

    meters: dict = {("decode", b): decoder(b) for b in batches}
    prompt = torch.tensor([_prompt(TTFT_PROMPT, 99)])
    timed(prompt, 1)
    meters["ttft"] = lambda: statistics.median(timed(prompt, 1) for _ in range(3)) * 1e3
    return meters, torch.get_num_threads()


def compare_local(batches: list[int], rounds: int = ROUNDS) -> dict:
    """Our engine and transformers measured in alternating rounds (ours, then theirs, for every
    measurement, `rounds` times), so a machine whose speed drifts over minutes (a shared host)
    moves both sides of each ratio; per measurement, every round's figures and ratio (ours /
    theirs for tok/s, theirs / ours for TTFT: above 1 means helix-jax is faster) and the
    median ratio."""
    ours = helix_meters(batches)
    theirs, threads = transformers_meters(batches)
    out: dict = {"threads": threads, "rounds": rounds, "measures": {}}
    for key in ours:
        pairs = []
        for _ in range(rounds):
            a = ours[key]()
            b = theirs[key]()
            pairs.append((a, b))
        ratios = [b / a if key == "ttft" else a / b for a, b in pairs]
        name = "ttft_ms" if key == "ttft" else f"decode_tok_s_batch_{key[1]}"
        out["measures"][name] = {"helix": [a for a, _ in pairs], "transformers": [b for _, b in pairs], "ratios": ratios}
    return out


def local_decode(batches: list[int]) -> dict[int, float]:
    """Our engine's decode tok/s per batch (the median of three rounds): the deployments'
    reference."""
    meters = helix_meters(batches, ttft=False)  # no 512-token prefill program to compile
    return {b: statistics.median(meters[("decode", b)]() for _ in range(3)) for b in batches}


def _vm_hwm_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def deployment(
    streams: list[int],
    max_tokens: int = 160,
    max_batch: int | None = None,
    topology: Path | None = None,
    prompt_tokens: int = 64,
    gather_ms: float | None = None,
) -> dict:
    """The shipped default deployment (`--max-batch max_batch`) at each number of concurrent
    streams: tok/s over the whole run (prefill included) and the decode rate, every token after
    each stream's first over the span from the first first token to the last token (a lower
    bound: late prompts still prefill while early streams decode), to compare with the local
    decode tok/s at that batch, and the rate while every stream decodes (`_steady_rate`).
    Every stream runs to `max_tokens` (`ignore_eos`), so the streams stay concurrent."""
    from helix_jax.cli.serve_cmds import serve_config
    from helix_jax.client import Client
    from helix_jax.runtime.deploy import LocalDeployment

    most = max(streams)
    cfg, tokenizer = serve_config(topology, None, None, False, 1.0, "127.0.0.1", 0, most * 256, 256, 10.0)
    prompts = [_prompt(prompt_tokens, 1000 + i) for i in range(most)]
    cfg = dataclasses.replace(cfg, max_batch=max_batch, gather_ms=gather_ms)
    out: dict = {
        "placement": {n: list(r) for n, r in cfg.placement.ranges.items()},
        "max_batch": max_batch,
        "gather_ms": cfg.entry_gather_s * 1000,
        "streams": {},
    }
    with LocalDeployment(cfg, tokenizer) as dep:
        dep.wait_ready(timeout_s=900)
        with Client(dep.client_endpoint, timeout_s=900) as client:
            client.generate(prompts[0], max_tokens=4)
            for n in streams:
                begin = time.perf_counter()
                with ThreadPoolExecutor(n) as pool:
                    results = list(pool.map(lambda p: client.generate(p, max_tokens=max_tokens, ignore_eos=True), prompts[:n]))
                wall = time.perf_counter() - begin
                tpot_s = statistics.median(r.timings.tpot_s for r in results)
                arrivals = [a for a in (r.timings.token_times_s for r in results) if a]  # from each send, all sent at once
                start, end = min(a[0] for a in arrivals), max(a[-1] for a in arrivals)
                out["streams"][n] = {
                    "tok_s": sum(len(r.ids) for r in results) / wall,
                    "decode_tok_s": sum(len(a) - 1 for a in arrivals) / (end - start),
                    "steady_tok_s": _steady_rate(arrivals),
                    "tpot_ms": tpot_s * 1e3,
                    "ttft_ms": statistics.median(r.timings.ttft_s for r in results) * 1e3,
                }
        out["peak_rss_mb"] = {w.node: _vm_hwm_mb(w.process.pid) for w in dep.workers}
    return out


def _steady_rate(arrivals: list[list[float]]) -> float | None:
    """Tokens per second that arrived while every stream was decoding: from the last stream's
    first token to the first stream's last token. None when that window is under a third of
    the run's decode span: the client reads tokens in bursts, and a short window that holds one
    burst says nothing (one gave 1,548 tok/s)."""
    begin, end = max(a[0] for a in arrivals), min(a[-1] for a in arrivals)
    span = max(a[-1] for a in arrivals) - min(a[0] for a in arrivals)
    if end - begin < span / 3:
        return None
    return sum(begin < t <= end for a in arrivals for t in a) / (end - begin)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--streams", default="16,64")
    parser.add_argument("--skip-deploy", action="store_true")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="alternating rounds of the local comparison")
    parser.add_argument("--max-batch", default="none", help="deployments to measure: their --max-batch (none: uncapped)")
    parser.add_argument("--gather-ms", default="auto,0", help="deployments to measure: their --gather-ms (auto: deploy's default)")
    parser.add_argument("--prompt-tokens", type=int, default=64, help="each stream's prompt length in the deployments")
    parser.add_argument("--topology", type=Path, default=None, help="deploy this topology instead of the shipped default")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    batches = [int(b) for b in args.batches.split(",") if b]  # --batches "": the deployments only
    result: dict = {}
    if batches:
        local = compare_local(batches, args.rounds)
        result["local"] = local
        print(
            f"[smollm2-135m local, float32, {local['threads']} torch threads, {local['rounds']} alternating rounds] "
            f"helix-jax / transformers (above 1: helix-jax faster), median and each round:"
        )
        for name, m in local["measures"].items():
            unit = "ms" if name == "ttft_ms" else "tok/s"
            label = (
                f"TTFT of a {TTFT_PROMPT}-token prompt"
                if name == "ttft_ms"
                else f"decode batch {name.rsplit('_', 1)[1]:>3} after {CONTEXT}"
            )
            rounds = ", ".join(f"{a:.1f}/{b:.1f}" for a, b in zip(m["helix"], m["transformers"]))
            ratios = m["ratios"]
            spread = f"range {min(ratios):.2f}-{max(ratios):.2f}"
            print(f"  {label}: ratio {statistics.median(ratios):.2f}x ({spread}); {unit} helix/transformers: {rounds}")
    if not args.skip_deploy:
        streams = [int(s) for s in args.streams.split(",")]
        local_batch = local_decode(streams)
        result["local_at_streams"] = local_batch
        result["deployments"] = []
        variants = [(cap, gather) for cap in args.max_batch.split(",") for gather in args.gather_ms.split(",")]
        for cap, gather in variants:
            dep = deployment(
                streams,
                max_batch=None if cap == "none" else int(cap),
                topology=args.topology,
                prompt_tokens=args.prompt_tokens,
                gather_ms=None if gather == "auto" else float(gather),
            )
            result["deployments"].append(dep)
            knobs = f"--max-batch {cap}, --gather-ms {dep['gather_ms']:g}, {args.prompt_tokens}-token prompts"
            print(f"[smollm2-135m deployed on 3 CPU workers {dep['placement']}, {knobs}]")
            for n in streams:
                row = dep["streams"][n]
                decode = row["decode_tok_s"]
                steady = row["steady_tok_s"]
                steady_text = "n/a (window too short)" if steady is None else f"{steady:.1f} tok/s = {steady / local_batch[n]:.0%}"
                print(
                    f"  {n:3d} streams: decode {decode:.1f} tok/s = {decode / local_batch[n]:.0%} of local batch-{n} decode "
                    f"{local_batch[n]:.1f} tok/s; while all {n} decode {steady_text}; "
                    f"whole run {row['tok_s']:.1f} tok/s (TPOT p50 {row['tpot_ms']:.1f} ms, TTFT p50 {row['ttft_ms']:.0f} ms)"
                )
            print("  peak RSS per worker: " + ", ".join(f"{n} {mb:.0f} MB" for n, mb in dep["peak_rss_mb"].items()))
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
