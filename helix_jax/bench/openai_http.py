"""The live benchmark's client for any OpenAI-compatible HTTP server (ours, vLLM, SGLang,
llama.cpp, TGI): the same `generate` / `info` shape as `helix_jax.client.AsyncClient`.

Sits where the ZeroMQ client sits in the live bench's data flow (workload -> **client** ->
server -> metrics): each request is one streamed `POST /v1/completions` with the prompt as
token ids and `stream_options.include_usage`, so every token's arrival is timed as it comes
(TTFT, TPOT, from the first chunk to the one that ends the sequence) and the server's own
usage gives the token counts. Over HTTP the token ids of
the answer are not known: `GenerateResult.ids` holds one placeholder per completion token.
"""

from __future__ import annotations

import json
import time
from typing import Any, Sequence

import httpx

from helix_jax.client import GenerateResult, Timings
from helix_jax.errors import HelixError, OverloadedError, RequestError


class OpenAIHttpClient:
    def __init__(self, base_url: str, api_key: str | None = None, model: str | None = None, timeout_s: float = 3600.0) -> None:
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self.model = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=1024)
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout_s, limits=limits)
        self.time_scale = 1.0

    async def info(self) -> dict[str, Any]:
        """The served model (the first of /v1/models unless given) and what its card says."""
        r = await self._http.get("/v1/models")
        if r.status_code != 200:
            raise HelixError(f"{self.base_url}/v1/models answered {r.status_code}: {r.text[:200]}")
        cards = r.json().get("data") or []
        card = next((c for c in cards if c.get("id") == self.model), cards[0] if cards else {})
        self.model = self.model or card.get("id")
        if not self.model:
            raise HelixError(f"{self.base_url}/v1/models lists no model")
        self.time_scale = float(card.get("time_scale") or 1.0)
        limit = card.get("max_model_len") or card.get("context_length") or card.get("max_seq_len")
        return {"model": self.model, "vocab_size": int(card.get("vocab_size") or 256), "time_scale": self.time_scale, "max_seq_len": limit}

    async def generate(
        self, prompt: Sequence[int], max_tokens: int = 64, temperature: float = 0.0, seed: int = 0, ignore_eos: bool = False, **_: Any
    ) -> GenerateResult:
        body = {
            "model": self.model,
            "prompt": list(prompt),
            "max_tokens": max_tokens,
            "temperature": temperature,
            "seed": seed,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if ignore_eos:  # vLLM's, SGLang's and our extension; sent only when asked, for servers that refuse unknown fields
            body["ignore_eos"] = True
        sent = time.perf_counter()
        arrivals: list[float] = []
        use: dict[str, Any] = {}
        finish, text = "length", []
        async with self._http.stream("POST", "/v1/completions", json=body) as r:
            if r.status_code != 200:
                raise _error(r.status_code, (await r.aread()).decode(errors="replace"))
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if "error" in event:
                    raise HelixError(f"stream error: {event['error'].get('message')}")
                for choice in event.get("choices") or ():
                    if choice.get("text") or choice.get("finish_reason"):
                        arrivals.append(time.perf_counter() - sent)
                        text.append(choice.get("text") or "")
                    finish = choice.get("finish_reason") or finish
                use = event.get("usage") or use
        total = time.perf_counter() - sent
        tokens = int(use.get("completion_tokens") or len(arrivals))
        scale = self.time_scale
        ttft = arrivals[0] if arrivals else total
        tpot = (arrivals[-1] - arrivals[0]) / (tokens - 1) if tokens > 1 and arrivals else 0.0
        # a chunk may carry several tokens (text held back mid-character or mid-stop-string): the
        # tokens not seen one by one are counted at the last chunk, which ends the sequence
        times = (
            (arrivals[: tokens - 1] + arrivals[-1:]) if len(arrivals) >= tokens else (arrivals + arrivals[-1:] * (tokens - len(arrivals)))
        )
        timings = Timings(ttft / scale, tpot / scale, total / scale, tuple(a / scale for a in times), scale)
        return GenerateResult("", "".join(text), (0,) * tokens, int(use.get("prompt_tokens") or len(prompt)), finish, timings)

    async def close(self) -> None:
        await self._http.aclose()


def _error(status: int, body: str) -> HelixError:
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = body[:300]
    if status == 429:
        return OverloadedError(message)
    return (RequestError if 400 <= status < 500 else HelixError)(f"HTTP {status}: {message}")
