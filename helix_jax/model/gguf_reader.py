"""Opening GGUF files: one parsed `gguf.GGUFReader` per file and process, parsed quickly.

Owns `open_reader(path)`, which every GGUF reader of the model runtime goes through
(`GGUFFile` for the config and a stage's tensors, `read_gguf_vocab` for the tokenizer), so a
worker that reads a checkpoint's config, its vocabulary and its layers parses the file once.
Sits at the bottom of the checkpoint path; imports numpy and gguf only, never jax.

Why: `GGUFReader` parses every metadata field on open, and a LLaMA-family file's vocabulary is
~100k strings (tokens and merges). The reader slices its data one item at a time, and on the
`numpy.memmap` it keeps that costs a memmap object per slice: SmolLM2-135M's file took 3.4 s to
open on the 2-core test machine. `_PlainReader` hands the reader a plain ndarray view of the
same mapping (no copy: the pages stay on disk until read), which parses the same fields and
tensors in 0.85 s.

The cache is keyed by the resolved path, size and modification time, so a file rewritten in
place is parsed again; a file that fails to parse raises and is not cached. Readers are only
read from, so sharing one between callers is safe.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np


@functools.cache
def _plain_reader_class() -> type:
    from gguf.gguf_reader import GGUFReader  # the class itself, even where a caller rebinds gguf.GGUFReader

    class _PlainReader(GGUFReader):
        """GGUFReader whose `data` is a plain ndarray over the memory map (see the module doc)."""

        @property  # type: ignore[override]
        def data(self) -> np.ndarray:
            return self._plain

        @data.setter
        def data(self, value: np.ndarray) -> None:
            self._plain = value.view(np.ndarray)

    return _PlainReader


@functools.lru_cache(maxsize=4)
def _open(path: str, size: int, mtime_ns: int) -> Any:
    return _plain_reader_class()(path, "r")


def open_reader(path: str | Path) -> Any:
    """The parsed `gguf.GGUFReader` of `path` (read-only), shared within this process.
    Raises what GGUFReader raises for a file that is not GGUF or is cut off (callers turn it
    into a CheckpointError naming the file), OSError for a missing one."""
    real = os.path.realpath(path)
    st = os.stat(real)
    return _open(real, st.st_size, st.st_mtime_ns)
