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
tensors in 0.75 s, and cuts each array of strings or numbers into the same per-item parts in one
pass (the string lengths read with `struct`, not one small array each): 0.17 s. Its fields equal
the stock reader's part for part (tests/test_gguf_checkpoint.py).

The cache is keyed by the resolved path, size and modification time, so a file rewritten in
place is parsed again; a file that fails to parse raises and is not cached. Readers are only
read from, so sharing one between callers is safe.
"""

from __future__ import annotations

import functools
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np


@functools.cache
def _plain_reader_class() -> type:
    from gguf.constants import GGUFValueType
    from gguf.gguf_reader import GGUFReader  # the class itself, even where a caller rebinds gguf.GGUFReader

    class _PlainReader(GGUFReader):
        """GGUFReader whose `data` is a plain ndarray over the memory map, and whose arrays of
        strings and numbers are cut into the same per-item parts in one pass (see the module doc)."""

        @property  # type: ignore[override]
        def data(self) -> np.ndarray:
            return self._plain

        @data.setter
        def data(self, value: np.ndarray) -> None:
            self._plain = value.view(np.ndarray)

        def _get_field_parts(self, orig_offs: int, raw_type: int) -> tuple[int, list[np.ndarray], list[int], list[Any]]:
            if raw_type != GGUFValueType.ARRAY:
                return super()._get_field_parts(orig_offs, raw_type)
            raw_itype = self._get(orig_offs, np.uint32)
            alen = self._get(orig_offs + 4, np.uint64)
            itype, count, offs = GGUFValueType(raw_itype[0]), int(alen[0]), orig_offs + 12
            parts: list[np.ndarray] = [raw_itype, alen]
            scalar = self.gguf_scalar_to_np.get(itype)
            if itype == GGUFValueType.STRING and count:
                lengths = self._get(offs, np.uint64)[:0]  # an empty array of the reader's length dtype
                fmt = struct.Struct(lengths.dtype.str[0] + "Q")  # "<u8" or ">u8": the file's byte order
                data = self.data
                buf = data.data  # the buffer under the array: struct reads the lengths straight from it
                for _ in range(count):
                    size = fmt.unpack_from(buf, offs)[0]
                    parts += (data[offs : offs + 8].view(lengths.dtype), data[offs + 8 : offs + 8 + size])
                    offs += 8 + size
                return offs - orig_offs, parts, list(range(3, 2 + 2 * count, 2)), [GGUFValueType.ARRAY, itype]
            if scalar is not None and count:
                values = self._get(offs, scalar, count)
                parts += (values[i : i + 1] for i in range(count))
                return offs + values.nbytes - orig_offs, parts, list(range(2, 2 + count)), [GGUFValueType.ARRAY, itype]
            return super()._get_field_parts(orig_offs, raw_type)  # nested arrays, empty arrays

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
