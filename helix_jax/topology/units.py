"""Units in topology files: bandwidths ("10 Gbit/s") and memory sizes ("24 GB") to bytes.

Sits at the file boundary of the data flow (**file** -> topology -> cost model): the schema
(schema.py) and the loader (load.py) call these on the raw strings and numbers of a file.
Pure functions; touches nothing but the errors.
"""

from __future__ import annotations

import re
from typing import Any

from helix_jax.errors import TopologyError

_UNIT_BYTES = {
    "b/s": 1.0,
    "bytes/s": 1.0,
    "byte/s": 1.0,
    "bps": 0.125,
    "kb/s": 1e3,
    "mb/s": 1e6,
    "gb/s": 1e9,
    "tb/s": 1e12,
    "kib/s": 1024.0,
    "mib/s": 1024.0**2,
    "gib/s": 1024.0**3,
    "kbit/s": 1e3 / 8,
    "mbit/s": 1e6 / 8,
    "gbit/s": 1e9 / 8,
    "tbit/s": 1e12 / 8,
    "kbps": 1e3 / 8,
    "mbps": 1e6 / 8,
    "gbps": 1e9 / 8,
}
_BANDWIDTH_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-z/]+)?\s*$")


def parse_bandwidth(value: Any, field: str = "bandwidth") -> float:
    """Bytes per second from a number (bytes/s) or a string with a unit ("10 Gbit/s").

    Units: B/s, KB/s, MB/s, GB/s, TB/s (powers of 1000 bytes), KiB/s.. (powers of 1024),
    Kbit/s, Mbit/s, Gbit/s (bits; also kbps/Mbps/Gbps). A bare number is bytes/s.
    """
    if isinstance(value, bool):
        raise TopologyError(f"{field} must be a number of bytes/s or a string with a unit, got {value!r}")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        match = _BANDWIDTH_RE.match(value)
        if not match:
            raise TopologyError(f'{field} {value!r} is not a bandwidth (e.g. "10 Gbit/s", "1.25 GB/s")')
        number = float(match.group(1))
        unit = (match.group(2) or "B/s").lower()
        if unit not in _UNIT_BYTES:
            raise TopologyError(
                f"{field} {value!r} has an unknown unit {match.group(2)!r}; use B/s, KB/s, MB/s, GB/s, KiB/s, Mbit/s, Gbit/s, ..."
            )
        number *= _UNIT_BYTES[unit]
    else:
        raise TopologyError(f"{field} must be a number of bytes/s or a string with a unit, got {value!r}")
    if not number > 0 or number == float("inf"):
        raise TopologyError(f"{field} must be positive and finite, got {value!r}")
    return number


def parse_memory_bytes(value: Any, field: str) -> float:
    """Bytes from a number of GB (1e9) or a string like "24 GB" / "16 GiB"."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value <= 0:
            raise TopologyError(f"{field} must be positive, got {value!r}")
        return float(value) * 1e9
    if isinstance(value, str):
        match = re.match(r"^\s*([0-9]*\.?[0-9]+)\s*(GB|GiB|MB|MiB|TB)?\s*$", value, re.I)
        if match:
            scale = {"gb": 1e9, "gib": 1024.0**3, "mb": 1e6, "mib": 1024.0**2, "tb": 1e12}
            return float(match.group(1)) * scale[(match.group(2) or "GB").lower()]
    raise TopologyError(f'{field} {value!r} is not a memory size (e.g. 24 or "24 GB")')
