"""The persistent XLA compilation cache: compiled step programs kept on disk across processes.

Owns `enable_compile_cache`, which points JAX's persistent compilation cache at
`~/.cache/helix-jax/xla` (`HELIX_COMPILE_CACHE=DIR` moves it, `HELIX_COMPILE_CACHE=off` turns it
off). Every StageEngine calls it before its first compile, so a worker, `generate`, `profile`
and the benches all share it: the step programs of a stage are compiled once per machine and
model shape, and a restarted worker, a second deployment of the same placement or a worker
beside an identical one loads them instead of compiling again (SmolLM2-135M's first step on
a 2-core CPU: 22 s cold, 3 s from the cache).

Sits under the model runtime; touches only JAX's configuration and the cache directory. JAX
keys each entry by the program, the compile options, the device and the JAX version, so a
stale entry is never used; an unreadable entry is recompiled (JAX warns).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

ENV = "HELIX_COMPILE_CACHE"
OFF = frozenset({"off", "0", "none", "false"})
MIN_COMPILE_SECONDS = 0.2  # cache programs that took at least this long to compile (JAX's default: 1 s)

_configured: Path | None | bool = False  # False: not yet decided in this process


def default_dir() -> Path:
    """~/.cache/helix-jax/xla, beside the model cache."""
    return Path.home() / ".cache" / "helix-jax" / "xla"


def enable_compile_cache() -> Path | None:
    """Turn the persistent cache on for this process (once) and return its directory, or None
    when it is off: by HELIX_COMPILE_CACHE=off, because the directory cannot be created, or
    because the user configured JAX's own cache (JAX_COMPILATION_CACHE_DIR), which is kept."""
    global _configured
    if _configured is not False:
        return _configured if isinstance(_configured, Path) else None
    import jax

    setting = os.environ.get(ENV, "").strip()
    own = getattr(jax.config, "jax_compilation_cache_dir", None)
    if own:
        _configured = Path(own)
    elif setting.lower() in OFF:
        _configured = None
    else:
        path = Path(setting).expanduser() if setting else default_dir()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.warning("compile cache off: cannot create %s (%s)", path, exc)
            _configured = None
        else:
            jax.config.update("jax_compilation_cache_dir", str(path))
            if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:  # the user's choice wins
                jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
            _configured = path
    return _configured if isinstance(_configured, Path) else None
