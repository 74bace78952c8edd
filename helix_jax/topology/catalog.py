"""The built-in GPU catalog: spec-sheet memory, bandwidth and FLOPs of the GPU types a file
may name without describing them.

Sits at the file boundary (file -> **topology**): load.py starts every file's GPU types from
this catalog; the cost model's roofline reads the figures. Data only.
"""

from __future__ import annotations

from helix_jax.topology.model import GpuType


def _catalog_type(name: str, memory_gb: float, bw_tb_s: float, tflops: float, n: int = 1) -> GpuType:
    return GpuType(name, memory_gb * 1e9 * n, bw_tb_s * 1e12 * n, tflops * n, n)


# Spec-sheet figures (../shared/HELIX.md section 9). Multi-GPU nodes add up their GPUs.
GPU_CATALOG: dict[str, GpuType] = {
    g.name: g
    for g in (
        _catalog_type("A100-40GB", 40, 1.555, 312),
        _catalog_type("A100-80GB", 80, 2.04, 312),
        _catalog_type("H100", 80, 3.35, 989),
        _catalog_type("H200", 141, 4.8, 989),
        _catalog_type("L4", 24, 0.30, 121),
        _catalog_type("T4", 16, 0.32, 65),
        _catalog_type("V100", 16, 0.90, 125),
        _catalog_type("A100-40GBx2", 40, 1.555, 312, 2),
        _catalog_type("L4x2", 24, 0.30, 121, 2),
        _catalog_type("L4x4", 24, 0.30, 121, 4),
        _catalog_type("T4x2", 16, 0.32, 65, 2),
        _catalog_type("T4x4", 16, 0.32, 65, 4),
        _catalog_type("V100x2", 16, 0.90, 125, 2),
        # A host CPU: what the small CPU topology's workers run on.
        GpuType("CPU", 8e9, 20e9, 0.2, 1),
    )
}
GPU_ALIASES = {"A100": "A100-40GB", "A100-40G": "A100-40GB", "A100-80G": "A100-80GB"}
