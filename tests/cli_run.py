"""Run the `helix-jax` command in this process, as `python -m helix_jax.cli.main ARGS` would.

For CLI tests that need its exit code, stdout and stderr but not a process of their own (a
child process costs seconds of imports on 2 cores). `main()`'s own handling is kept: a
HelixError prints one `error: ...` line and exits 2.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from unittest import mock


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """Exit code, stdout and stderr of `helix-jax ARGS` (250 columns wide, as the tests' children were)."""
    from helix_jax.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    code: int | str | None = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
            mock.patch.object(sys, "argv", ["helix-jax", *args]), mock.patch.dict(os.environ, {"COLUMNS": "250"}):
        try:
            main()
        except SystemExit as exc:
            code = exc.code
    if not isinstance(code, int):
        if code is not None:
            err.write(f"{code}\n")
        code = 0 if code is None else 1
    return subprocess.CompletedProcess(["helix-jax", *args], code, out.getvalue(), err.getvalue())
