"""Text and Server-Sent Events of the front end's answers.

Owns: `TextAssembler` (token ids -> text deltas, incremental detokenization that never
splits a UTF-8 character, stop strings cut and never streamed), OpenAI's response and chunk
objects (`completion_object`, `chunk`, `usage`) and the SSE framing (`sse`, `SSE_DONE`).
Sits at the exit of the front end's data flow: coordinator tokens -> **streaming** -> client.
"""

from __future__ import annotations

import json
import time
from typing import Any, Sequence

SSE_DONE = b"data: [DONE]\n\n"
FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length"}  # ours -> OpenAI's


class TextAssembler:
    """One choice's text. `add(token_id)` returns the new text that may be shown now: text that
    could still become (part of) a stop string, or an incomplete UTF-8 character, is held back;
    `flush()` returns what was held back once the sequence ended without a stop string."""

    def __init__(self, tokenizer: Any, stop: Sequence[str]) -> None:
        self._tok, self.stop = tokenizer, tuple(stop)
        self._longest = max((len(s) for s in self.stop), default=0)
        self.ids: list[int] = []
        self._prefix = self._read = 0  # vLLM-style offsets: decode a window, never the whole text
        self.full = ""  # decoded so far (uncut)
        self.text = ""  # shown so far
        self.stopped = False

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        if self.stopped:
            return ""
        before = self._tok.decode(self.ids[self._prefix : self._read])
        after = self._tok.decode(self.ids[self._prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.full += after[len(before) :]
            self._prefix, self._read = self._read, len(self.ids)
        return self._show()

    def _show(self) -> str:
        full, start = self.full, len(self.text)
        if self.stop:
            from_ = max(0, start - self._longest)
            cuts = [i for i in (full.find(s, from_) for s in self.stop) if i >= 0]
            if cuts:
                self.stopped = True
                self.full = full[: min(cuts)]
                return self._emit(self.full)
            hold = max((k for s in self.stop for k in range(1, len(s)) if full.endswith(s[:k])), default=0)
            return self._emit(full[: len(full) - hold])
        return self._emit(full)

    def _emit(self, upto: str) -> str:
        delta = upto[len(self.text) :]
        self.text += delta
        return delta

    def flush(self) -> str:
        if self.stopped:
            return ""
        tail = self._tok.decode(self.ids[self._prefix :])  # an unfinished character at the very end
        before = self._tok.decode(self.ids[self._prefix : self._read])
        self.full += tail[len(before) :]
        return self._emit(self.full)


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}


def completion_object(
    rid: str, kind: str, model: str, choices: list[dict[str, Any]], use: dict[str, int], created: int | None = None
) -> dict[str, Any]:
    """A whole answer: kind "text_completion" or "chat.completion"."""
    return {"id": rid, "object": kind, "created": created or int(time.time()), "model": model, "choices": choices, "usage": use}


def text_choice(index: int, text: str, finish_reason: str | None) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}


def chat_choice(index: int, text: str, finish_reason: str | None) -> dict[str, Any]:
    return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": finish_reason}


def chunk(
    rid: str, chat: bool, model: str, created: int, index: int, text: str | None, finish_reason: str | None = None, role: bool = False
) -> bytes:
    """One SSE event of a stream. Chat deltas carry the role in the first chunk of a choice."""
    if chat:
        delta: dict[str, Any] = {"role": "assistant", "content": text or ""} if role else ({} if text is None else {"content": text})
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    else:
        choice = text_choice(index, text or "", finish_reason)
    return sse(
        {
            "id": rid,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created,
            "model": model,
            "choices": [choice],
        }
    )


def usage_chunk(rid: str, chat: bool, model: str, created: int, use: dict[str, int]) -> bytes:
    """The last event when stream_options.include_usage is set: usage, no choices."""
    return sse(
        {
            "id": rid,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created,
            "model": model,
            "choices": [],
            "usage": use,
        }
    )


def sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"
