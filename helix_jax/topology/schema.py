"""The topology file schema (pydantic): what a file may contain, checked field by field.

Sits at the file boundary (**file** -> topology): load.py validates a parsed document with
`TopologySpec` and turns the first validation error into one readable line. Touches nothing
beyond pydantic; nothing after the loader sees these classes.
"""

from __future__ import annotations

from typing import Any, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class GpuTypeSpec(_Strict):
    memory_gb: float | str | None = None
    memory_bandwidth: float | str | None = None  # bytes/s or string with unit
    tflops: float | None = Field(default=None, gt=0)
    num_gpus: int = Field(default=1, ge=1)
    nic_bandwidth: float | str | None = None
    max_layers: int | None = Field(default=None, ge=1)
    capacity_tokens_per_s: list[float] | None = None
    profile: str | None = None
    max_prompt_tokens_per_step: int | None = Field(default=None, ge=1)  # chunked prefill budget
    based_on: str | None = None  # start from a catalog type and override some fields

    @field_validator("capacity_tokens_per_s")
    @classmethod
    def _positive(cls, v: list[float] | None) -> list[float] | None:
        if v is not None:
            if not v:
                raise ValueError("must list at least one capacity")
            if any(not (x > 0) for x in v):
                raise ValueError(f"every capacity must be positive, got {v}")
        return v


class LinkSpec(_Strict):
    bandwidth: float | str
    latency_ms: float = Field(default=0.0, ge=0)


class RegionPairSpec(LinkSpec):
    regions: tuple[str, str]


class PairSpec(LinkSpec):
    src: str = Field(alias="from")
    dst: str = Field(alias="to")
    one_way: bool = False


class LinksSpec(_Strict):
    default: LinkSpec | None = None
    within_region: dict[str, LinkSpec] = Field(default_factory=dict)
    between_regions: list[RegionPairSpec] = Field(default_factory=list)
    pairs: list[PairSpec] = Field(default_factory=list)


class NodeSpec(_Strict):
    name: str = Field(min_length=1)
    gpu: str
    region: str | None = None
    host: str | None = None
    count: int = Field(default=1, ge=1)  # "count": 4 expands to name-0 .. name-3
    price_per_hour: float | None = Field(default=None, ge=0, allow_inf_nan=False)


class CoordinatorSpec(_Strict):
    region: str | None = None
    host: str | None = None


class TopologySpec(_Strict):
    name: str | None = None
    description: str | None = None
    model: Union[str, dict[str, Any]]
    gpu_types: dict[str, GpuTypeSpec] = Field(default_factory=dict)
    coordinator: CoordinatorSpec = Field(default_factory=CoordinatorSpec)
    nodes: list[NodeSpec] = Field(min_length=1)
    links: LinksSpec = Field(default_factory=LinksSpec)


def pydantic_message(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "file"
    if err["type"] == "extra_forbidden":
        return f"unknown field {where!r}"
    if err["type"] == "missing":
        return f"missing required field {where!r}"
    return f"field {where!r}: {err['msg']} (got {err.get('input')!r})"
