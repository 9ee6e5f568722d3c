"""glibc's allocator set for training: freed memory kept between steps (``keep_freed_memory``) and handed back
between trials (``release_memory``). Apart from torch (for the CUDA cache) it imports nothing heavy, so a probe
of it starts fast."""

from __future__ import annotations

import ctypes
import functools
import gc
import os

import torch


def release_memory() -> bool:
    """Free what earlier work in this process left behind, and hand glibc's freed heap back to the system
    (``malloc_trim``); True where that ran (glibc), False elsewhere.

    A reused trial process calls this before each trial: without it, later trials in one process trained slower
    than its first (measured in ``docs/design.md``)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # a reused process: the last trial's cached blocks back to the GPU's other trials
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
KEEP_FREED_MEMORY_ENV = "TUNER_KEEP_FREED_MEMORY"  # "0" turns keep_freed_memory off (docs/design.md)


@functools.cache
def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for the next step instead of handing it back to the system; True where that
    was set (glibc, not turned off by ``TUNER_KEEP_FREED_MEMORY=0``, read on the first call in a process).

    By default glibc serves every allocation over 32 MB with a fresh ``mmap`` and unmaps it when freed. A training
    step allocates and frees the word-embedding gradient (V x H float32: 47 MB for MiniLM, 89 MB for
    ``bert-base-cased``) every step, so every step page-faults it in again. ``M_MMAP_MAX=0`` serves it from the
    heap and ``M_TRIM_THRESHOLD`` keeps the freed heap for the next step. The process's resident memory stays at its
    peak; ``release_memory`` still hands it back between trials. One limit: in a thread other than the main one
    (Ray Tune runs a trial in one), glibc's heaps hold at most 64 MB per allocation, so a larger gradient
    (``bert-base-cased`` trained on a CPU) is still mapped; on a GPU the gradient is not glibc's at all.
    docs/design.md gives what it measured against the same setting given to the Hugging Face peer."""
    if os.environ.get(KEEP_FREED_MEMORY_ENV, "1") == "0":
        return False
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None) if libc is not None else None
    if mallopt is None or _malloc_trim() is None:  # mallopt alone is not glibc's (musl has a no-op one)
        return False
    # both or neither in practice: glibc refuses neither value (mallopt returns 0 only for out-of-range values)
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


@functools.cache
def _libc():
    """The C library already loaded in this process, or None (Windows)."""
    try:
        return ctypes.CDLL(None)
    except (OSError, TypeError):  # no handle on the process's own symbols
        return None


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim`` from the C library already loaded in this process; None where there is none
    (musl, macOS)."""
    libc = _libc()
    return getattr(libc, "malloc_trim", None) if libc is not None else None
