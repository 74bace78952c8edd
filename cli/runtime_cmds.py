"""Runtime commands: `generate` (local whole-model generation; `--endpoint` is the hook for a
live deployment) and `profile` (measure per-layer latency of this machine's accelerator).

Imports stay light at module level (typer, rich): jax, flax and the topology loader (which
needs pydantic) are imported inside the commands, so this module works on bare GPU hosts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from helix_jax.errors import CheckpointError, ConfigError, RequestError
from helix_jax.modelconfig import DTYPE_ALIASES as _DTYPES  # stdlib-only module: stays light


def _dtype(text: str) -> str:
    if text.lower() not in _DTYPES:
        raise ConfigError(f"--dtype {text!r} is not one of {', '.join(sorted(_DTYPES))}")
    return _DTYPES[text.lower()]


def _model_config(model: Optional[str], dtype: Optional[str]):
    """The ModelConfig of a --model option (default: the default topology's model) with the
    --dtype override; dimensions only, no weights."""
    from helix_jax.modelconfig import resolve_model

    if model is None:
        from helix_jax.topology import default_topology_path, load_topology  # pydantic: lazily

        config = load_topology(default_topology_path()).model
    else:
        config = resolve_model(model)
    return config.with_overrides(dtype=_dtype(dtype)) if dtype else config


def _resolve(model: Optional[str], dtype: Optional[str]):
    """(ModelConfig, weights source, tokenizer source or None) for a --model option: the
    tokenizer source is the .gguf file or checkpoint directory, None for random weights."""
    config, spec = _model_config(model, dtype), model
    from helix_jax.models import default_weights_source

    source = default_weights_source(config, spec or config.name)
    model_dir = None if source.startswith("random:") else Path(source)
    return config, source, model_dir


def _prompt_ids(tokenizer, prompt: str, chat: bool, system: Optional[str]) -> list[int]:
    """The prompt's ids: raw text (the tokenizer's own BOS setting), or with --chat one user
    message (after an optional system message) rendered by the model's chat template."""
    if not chat:
        return tokenizer.encode(prompt)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return tokenizer.encode_chat(messages, add_generation_prompt=True)


def _parse_ids(text: str, option: str = "--prompt-ids") -> list[int]:
    """Comma-separated integers given to `option`; RequestError naming the option and text."""
    try:
        ids = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise RequestError(f"{option} must be comma-separated integers, got {text!r}") from None
    if not ids:
        raise RequestError(f"{option} is empty")
    return ids


def _generate_remote(endpoint: str, keys=None, **request) -> dict:
    """Send the request to a live deployment at `endpoint` (helix_jax.client.Client); with
    stream=True print each token's text as it arrives. `model` is the deployment's business,
    except with --chat: its tokenizer renders the chat template here and ids are sent."""
    from helix_jax.client import Client

    sampling = request["sampling"]
    prompt = request["prompt"] if request["prompt"] is not None else _parse_ids(request["prompt_ids"])
    if request["chat"]:
        from helix_jax.model.tokenizer import load_tokenizer

        config, _, source = _resolve(request["model"], None)
        prompt = _prompt_ids(load_tokenizer(config, source), request["prompt"], True, request["system"])
    kwargs = dict(
        max_tokens=request["max_tokens"], temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p, seed=sampling.seed
    )
    with Client(endpoint, timeout_s=10.0, keys=keys) as client:
        info = client.info()  # fails in 10 s with a clear error when nothing listens there
        client.timeout_s = 600.0
        if request["stream"]:
            tokens = client.stream(prompt, **kwargs)
            for token in tokens:
                typer.echo(token.text, nl=False)
            typer.echo()
            result = tokens.result
        else:
            result = client.generate(prompt, **kwargs)
    return {
        "endpoint": endpoint,
        "model": info["model"],
        "ids": list(result.ids),
        "text": result.text,
        "finish_reason": result.finish_reason,
        "ttft_s": result.timings.ttft_s,
        "tpot_s": result.timings.tpot_s,
        "route": [list(hop) for hop in result.route],
    }


def generate(
    model: Optional[str] = typer.Option(
        None, help="Model name (helix-jax models list), .gguf file, preset or checkpoint directory (default: the default topology's model)."
    ),
    prompt: Optional[str] = typer.Option(None, help="Prompt text (BOS as the tokenizer adds it)."),
    chat: bool = typer.Option(False, "--chat", help="Send --prompt as a user message through the model's chat template."),
    system: Optional[str] = typer.Option(None, help="System message for --chat (default: the template's own)."),
    prompt_ids: Optional[str] = typer.Option(None, help="Prompt as token ids, e.g. 256,72,105."),
    max_tokens: int = typer.Option(32, help="Tokens to generate at most."),
    temperature: float = typer.Option(0.0, help="0 = greedy."),
    top_k: int = typer.Option(0, help="0 = no top-k cut."),
    top_p: float = typer.Option(1.0, help="1.0 = no nucleus cut."),
    seed: int = typer.Option(0, help="Sampling seed (same seed, same output)."),
    dtype: Optional[str] = typer.Option(None, help="Override the model dtype (fp32, bf16, fp16)."),
    local: bool = typer.Option(False, "--local", help="Run the whole model in this process (the default when no --endpoint is given)."),
    endpoint: Optional[str] = typer.Option(None, help="Send to a live deployment instead."),
    connection: Optional[Path] = typer.Option(
        None, help="Send to the deployment of this connection.json (endpoint and CURVE keys; printed by deploy)."
    ),
    stream: bool = typer.Option(False, "--stream", help="Print tokens as they are produced."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object {ids, text, ...}."),
) -> None:
    """Generate a continuation of a prompt."""
    if (prompt is None) == (prompt_ids is None):
        raise RequestError("give exactly one of --prompt and --prompt-ids")
    keys = None
    if connection is not None:
        from helix_jax.runtime.security import read_connection_file

        if endpoint:
            raise ConfigError("--connection and --endpoint exclude each other (the file names the endpoint)")
        endpoint, keys = read_connection_file(connection)
    if local and endpoint:
        raise ConfigError("--local and --endpoint/--connection exclude each other")
    if chat and prompt is None:
        raise RequestError("--chat needs --prompt (text), not --prompt-ids")
    from helix_jax.model.sampling import SamplingParams

    sampling = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    if endpoint:
        result = _generate_remote(
            endpoint,
            keys,
            model=model,
            prompt=prompt,
            prompt_ids=prompt_ids,
            chat=chat,
            system=system,
            max_tokens=max_tokens,
            sampling=sampling,
            stream=stream and not as_json,
        )
        if as_json or not stream:
            typer.echo(json.dumps(result) if as_json else result.get("text", ""))
        return
    from helix_jax.model.generate import generate_local
    from helix_jax.model.tokenizer import load_tokenizer

    config, source, model_dir = _resolve(model, dtype)
    if prompt_ids is not None:  # ids need no tokenizer; use one for the text if there is one
        ids = _parse_ids(prompt_ids)
        try:
            tokenizer = load_tokenizer(config, model_dir)
        except CheckpointError:
            tokenizer = None
    else:
        tokenizer = load_tokenizer(config, model_dir)
        ids = _prompt_ids(tokenizer, prompt, chat, system)

    produced: list[int] = []
    printed = [""]

    def show(token: int) -> None:  # stream: print the new suffix of the decoded text so far
        produced.append(token)
        if not stream or as_json:
            return
        if prompt_ids is not None:
            typer.echo(f"{token} ", nl=False)
            return
        text_so_far = tokenizer.decode(produced)
        if not text_so_far.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            typer.echo(text_so_far[len(printed[0]) :], nl=False)
            printed[0] = text_so_far

    stops = tokenizer.stop_token_ids if tokenizer is not None else None
    out = generate_local(config, source, ids, max_tokens, sampling, on_token=show, stop_token_ids=stops)
    text = tokenizer.decode(out) if tokenizer is not None else None
    if as_json:
        typer.echo(json.dumps({"model": config.name, "prompt_ids": ids, "ids": out, "text": text}))
    elif stream:
        typer.echo("" if prompt_ids is not None else text[len(printed[0]) :])
    elif prompt_ids is not None:
        typer.echo(",".join(str(t) for t in out))
    else:
        typer.echo(text)


def profile(
    model: Optional[str] = typer.Option(
        None, help="Model name, .gguf file, preset or checkpoint directory (default: the default topology's model)."
    ),
    layers: int = typer.Option(2, help="Layers of the model's true width to run (K)."),
    dtype: Optional[str] = typer.Option(None, help="Override the model dtype (fp32, bf16, fp16)."),
    out: Path = typer.Option(Path("profile.json"), help="Profile file to write."),
    prefill_tokens: str = typer.Option("16,64,256", help="Prompt sizes to measure."),
    decode_batches: str = typer.Option("1,2,4,8,16,32", help="Decode batch sizes to measure."),
    context_tokens: int = typer.Option(128, help="Cached tokens per decode sequence."),
    repeats: int = typer.Option(5, help="Timed runs per point (median is kept)."),
) -> None:
    """Measure per-layer prefill/decode latency on this machine and write a latency profile."""
    from rich.console import Console
    from rich.progress import Progress

    from helix_jax.model.profiler import profile_device
    from helix_jax.profiles import LatencyProfile

    config = _model_config(model, dtype)  # dimensions only: profiling uses random weights
    prefill = _parse_ids(prefill_tokens, "--prefill-tokens")
    decode = _parse_ids(decode_batches, "--decode-batches")
    console = Console(stderr=True)
    with Progress(console=console, transient=False) as progress:
        task = progress.add_task(f"profiling {config.name} ({layers} layers)", total=len(prefill) + len(decode))
        raw = profile_device(
            config,
            layers,
            prefill,
            decode,
            context_tokens,
            repeats,
            progress=lambda label: progress.update(task, advance=1, description=label),
        )
    result = LatencyProfile.from_dict(raw, source=str(out))
    result.save(out)
    console.print(
        f"wrote {out}: device {result.device}, {len(result.prefill)} prefill and "
        f"{len(result.decode)} decode points; decode batch 1 "
        f"{result.decode_seconds_per_layer(1) * 1e3:.3f} ms/layer"
    )


def register(app: typer.Typer) -> None:
    app.command()(generate)
    app.command()(profile)
