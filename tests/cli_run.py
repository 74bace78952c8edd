"""Run the `helix-jax` command as the tests need it.

`run_cli(*args)`: in this process, as `python -m helix_jax.cli.main ARGS` would, for CLI tests that
need its exit code, stdout and stderr but not a process of their own (a child process costs
seconds of imports on 2 cores). `main()`'s own handling is kept: a HelixError prints one
`error: ...` line and exits 2.

`Deploy(args)`: `helix-jax deploy ARGS` as a user runs it, in a child process whose printed lines
the test waits for (tests/test_deploy_cli.py, tests/test_ray_deploy.py).
"""

from __future__ import annotations

import contextlib
import io
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from unittest import mock


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """Exit code, stdout and stderr of `helix-jax ARGS` (250 columns wide, as the tests' children were:
    each command makes its console when it runs, so COLUMNS set here is the width it prints at)."""
    from helix_jax.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    code: int | str | None = 0
    with contextlib.ExitStack() as stack:
        stack.enter_context(contextlib.redirect_stdout(out))
        stack.enter_context(contextlib.redirect_stderr(err))
        stack.enter_context(mock.patch.object(sys, "argv", ["helix-jax", *args]))
        stack.enter_context(mock.patch.dict(os.environ, {"COLUMNS": "250"}))
        try:
            main()
        except SystemExit as exc:
            code = exc.code
    if not isinstance(code, int):
        if code is not None:
            err.write(f"{code}\n")
        code = 0 if code is None else 1
    return subprocess.CompletedProcess(["helix-jax", *args], code, out.getvalue(), err.getvalue())


class Deploy:
    """`helix-jax deploy ARGS --http-port 0` in a child process, its output read line by line."""

    def __init__(self, args: list[str]) -> None:
        env = dict(os.environ, COLUMNS="250", JAX_PLATFORMS="cpu")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "helix_jax.cli.main", "deploy", *args, "--http-port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,  # a process group of its own, as a shell gives a command it runs
        )
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, pattern: str, timeout_s: float = 240) -> str:
        """The first group of `pattern` in the next printed line that matches it."""
        deadline = time.monotonic() + timeout_s
        while True:
            line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line is not None, "deploy exited early:\n" + "".join(self.seen)
            self.seen.append(line)
            if found := re.search(pattern, line):
                return found.group(1)

    def interrupt(self) -> str:
        """Ctrl-C pressed twice in deploy's terminal: SIGINT to its whole process group, twice in a
        row; asserts a clean exit and returns what it printed after the last wait_for."""
        for _ in range(2):
            os.killpg(self.proc.pid, signal.SIGINT)
        code = self.proc.wait(timeout=60)
        rest = []
        while (line := self.lines.get(timeout=10)) is not None:
            rest.append(line)
        assert code == 0, f"deploy exited with {code} after Ctrl-C:\n" + "".join(rest)
        return "".join(rest)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
