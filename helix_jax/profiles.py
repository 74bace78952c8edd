"""Measured latency profiles: per-layer prefill and decode times of one device.

Owns the `helix-jax-profile/1` file format (written by `helix-jax profile`, read by the cost
model when a GPU type names `"profile": "path.json"`) and its interpolation. Sits between the
topology file and the cost model: file -> topology -> **profile** -> cost model -> solver.

Format::

    {"format": "helix-jax-profile/1", "device": "cpu", "model": {...ModelConfig...},
     "dtype": "bfloat16", "layers_measured": 4, "memory_bytes_total": 85899345920,
     "memory_bytes_free_for_kv_per_layer_held": null, "weight_bytes_per_layer": 1711276032,
     "prefill": [{"tokens": 128, "seconds_per_layer": 0.0012}, ...],
     "decode": [{"batch": 1, "context_tokens": 512, "seconds_per_layer": 0.0004}, ...]}

Interpolation is piecewise linear in the measured points and extrapolates linearly beyond the
last two (and towards zero below the first), never returning a negative time.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from helix_jax.errors import ConfigError
from helix_jax.jsonfile import read_json_file

PROFILE_FORMAT = "helix-jax-profile/1"


def _interpolate(points: tuple[tuple[float, float], ...], x: float) -> float:
    """Piecewise-linear y(x) through sorted (x, y) points; linear extrapolation at both ends."""
    if len(points) == 1:
        x0, y0 = points[0]
        return max(0.0, y0 * x / x0) if x0 > 0 else y0
    if x <= points[0][0]:
        (x0, y0), (x1, y1) = points[0], points[1]
    elif x >= points[-1][0]:
        (x0, y0), (x1, y1) = points[-2], points[-1]
    else:
        i = next(i for i in range(1, len(points)) if points[i][0] >= x)
        (x0, y0), (x1, y1) = points[i - 1], points[i]
    slope = (y1 - y0) / (x1 - x0)
    return max(0.0, y0 + slope * (x - x0))


@dataclasses.dataclass(frozen=True)
class DecodePoint:
    batch: int
    context_tokens: int
    seconds_per_layer: float


@dataclasses.dataclass(frozen=True)
class LatencyProfile:
    """Per-layer latencies of one device running one model (see the module docstring)."""

    device: str
    model: dict[str, Any]
    dtype: str
    layers_measured: int
    memory_bytes_total: float
    weight_bytes_per_layer: float
    prefill: tuple[tuple[int, float], ...]  # (tokens, seconds_per_layer), sorted by tokens
    decode: tuple[DecodePoint, ...]  # sorted by batch
    memory_bytes_free_for_kv_per_layer_held: float | None = None

    def __hash__(self) -> int:
        return hash((self.device, self.dtype, self.prefill, self.decode))

    def prefill_seconds_per_layer(self, tokens: int) -> float:
        if tokens <= 0:
            return 0.0
        return _interpolate(tuple((float(t), s) for t, s in self.prefill), float(tokens))

    def decode_seconds_per_layer(self, batch: int) -> float:
        """Seconds per layer for a decode step of `batch` sequences. Where one batch size was
        measured at several contexts, their mean is used (the cost model adds no context term)."""
        if batch <= 0:
            return 0.0
        by_batch: dict[int, list[float]] = {}
        for p in self.decode:
            by_batch.setdefault(p.batch, []).append(p.seconds_per_layer)
        points = tuple((float(b), sum(v) / len(v)) for b, v in sorted(by_batch.items()))
        return _interpolate(points, float(batch))

    # ---- JSON ----
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PROFILE_FORMAT,
            "device": self.device,
            "model": self.model,
            "dtype": self.dtype,
            "layers_measured": self.layers_measured,
            "memory_bytes_total": self.memory_bytes_total,
            "memory_bytes_free_for_kv_per_layer_held": self.memory_bytes_free_for_kv_per_layer_held,
            "weight_bytes_per_layer": self.weight_bytes_per_layer,
            "prefill": [{"tokens": t, "seconds_per_layer": s} for t, s in self.prefill],
            "decode": [
                {"batch": p.batch, "context_tokens": p.context_tokens, "seconds_per_layer": p.seconds_per_layer} for p in self.decode
            ],
        }

    @classmethod
    def from_dict(cls, raw: Any, source: str = "profile") -> "LatencyProfile":
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: a profile must be a JSON object, got {type(raw).__name__}")
        if raw.get("format") != PROFILE_FORMAT:
            raise ConfigError(f"{source}: field 'format' must be {PROFILE_FORMAT!r}, got {raw.get('format')!r}")
        try:
            prefill = tuple(sorted((int(p["tokens"]), float(p["seconds_per_layer"])) for p in raw["prefill"]))
            decode = tuple(
                sorted(
                    (DecodePoint(int(p["batch"]), int(p.get("context_tokens", 0)), float(p["seconds_per_layer"])) for p in raw["decode"]),
                    key=lambda p: (p.batch, p.context_tokens),
                )
            )
            free = raw.get("memory_bytes_free_for_kv_per_layer_held")
            profile = cls(
                device=str(raw.get("device", "unknown")),
                model=dict(raw.get("model") or {}),
                dtype=str(raw.get("dtype", "bfloat16")),
                layers_measured=int(raw.get("layers_measured", 1)),
                memory_bytes_total=float(raw["memory_bytes_total"]),
                weight_bytes_per_layer=float(raw["weight_bytes_per_layer"]),
                prefill=prefill,
                decode=decode,
                memory_bytes_free_for_kv_per_layer_held=None if free is None else float(free),
            )
        except KeyError as exc:
            raise ConfigError(f"{source}: profile is missing the field {exc.args[0]!r}") from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"{source}: profile has a malformed value: {exc}") from None
        profile._check(source)
        return profile

    def _check(self, source: str) -> None:
        if not self.prefill or not self.decode:
            raise ConfigError(f"{source}: profile needs at least one prefill and one decode point")
        if self.memory_bytes_total <= 0 or self.weight_bytes_per_layer <= 0:
            raise ConfigError(f"{source}: memory_bytes_total and weight_bytes_per_layer must be positive")
        if any(t <= 0 or s < 0 for t, s in self.prefill):
            raise ConfigError(f"{source}: prefill points need tokens > 0 and seconds_per_layer >= 0")
        if any(p.batch <= 0 or p.seconds_per_layer < 0 for p in self.decode):
            raise ConfigError(f"{source}: decode points need batch > 0 and seconds_per_layer >= 0")
        if len({t for t, _ in self.prefill}) != len(self.prefill):
            raise ConfigError(f"{source}: prefill lists the same token count twice")

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "LatencyProfile":
        raw = read_json_file(path, "profile", ConfigError)
        return cls.from_dict(raw, source=Path(path).name)
