"""Keep freed memory mapped, so that CPU training does not page-fault its activations back in.

Why: glibc's ``malloc`` serves every block above its mmap threshold (32 MiB at most, often
far less) with a fresh ``mmap`` and unmaps it again on ``free``. A training step frees its
activations and gradients and allocates them again in the next step, so each step makes
the kernel map and zero every one of those pages anew: at 320 x 480, batch 8, ~250,000 page
faults and 0.6-0.9 s of system time in a ~3 s step on the project's 2-core CPU
(benchmarks/RESULTS.md, "Freed memory"). PyTorch's CPU performance guide swaps in jemalloc
or tcmalloc with ``LD_PRELOAD`` for this; glibc does the same in-process when told to serve
large blocks from its heap (``M_MMAP_MAX = 0``) and to keep freed heap memory instead of
returning it to the kernel (``M_TRIM_THRESHOLD``). The price: the process keeps its
high-water mark of memory (peak RSS ~20 % higher when training at 320 x 480).

The training commands (``fcnseg train``, ``fcnseg demo``) call :func:`keep_freed_memory`
once at start; the library does not change a process-wide setting on import.
``FCNSEG_MALLOC=system`` turns it off. Inference does not use it: with every block on the
heap, whole passes over large images fragment it, and a 16 MP image's second pass took
9.6 GB instead of 5.3 (benchmarks/RESULTS.md, "Deployment install").
"""

from __future__ import annotations

import ctypes
import os
import sys

# mallopt() parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_NEVER_TRIM = 2**31 - 1  # mallopt takes an int: the largest one, about 2 GiB

OPT_OUT_VARIABLE = "FCNSEG_MALLOC"


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to reuse freed memory; return whether the setting was applied.

    A no-op (returning False) off Linux, on a C library without ``mallopt`` (musl's accepts
    and ignores it) or with ``FCNSEG_MALLOC=system`` in the environment.
    """
    if os.environ.get(OPT_OUT_VARIABLE, "").lower() == "system":
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # Order matters little, but both must hold: with only the mmap limit, free() would still
    # trim the heap's top and hand the pages back.
    return mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM) == 1
