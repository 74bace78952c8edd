"""Reading a user's JSON file with one clear HelixError instead of a traceback.

Sits at the very start of the data flow: **file** -> topology / placement / latency profile.
`load_topology`, `Placement.load` and `LatencyProfile.load` share it, each naming its own kind
of file and raising its own HelixError subclass.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from helix_jax.errors import HelixError


def read_json_file(path: str | Path, what: str, error: type[HelixError]) -> Any:
    """Parsed JSON of `path`; a missing, unreadable or malformed file raises `error` naming it
    (`what` is the kind of file, e.g. "topology")."""
    p = Path(path)
    if not p.is_file():
        raise error(f"{what} file {str(p)!r} does not exist")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{what} file {str(p)!r} cannot be read: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{p.name} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
