"""How many threads lstmfast's kernels may use (its own, and BLAS inside its calls)."""
from __future__ import annotations

import operator
import os
from typing import Optional

import numpy as np

__all__ = ["set_num_threads", "get_num_threads"]

_requested: Optional[int] = None  # None: every core this process may run on


def set_num_threads(n: Optional[int]) -> None:
    """Let each kernel call use at most n threads; n=None restores the default (all cores).

    Like ``torch.set_num_threads``, this is a process-wide setting. The BLAS calls
    inside lstmfast's kernels always run on these threads: while a kernel runs, scipy's
    OpenBLAS pool is held at one thread (and restored afterwards). The threads of a call
    wait for each other at every timestep by spinning, so when several Python threads run
    layers at the same time, give each call fewer threads (e.g. 1) than there are cores.
    """
    global _requested
    if n is not None:
        try:  # any integer type (numpy's too), not a float or a bool
            value = operator.index(n)
        except TypeError:
            value = None
        if isinstance(n, (bool, np.bool_)) or value is None or value < 1:
            raise ValueError(f"the number of threads must be a positive int, got {n!r}")
        if value > 2**31 - 1:  # the kernels take an int (and use at most 64 threads)
            raise ValueError(f"the number of threads must be at most 2**31-1, got {n!r}")
        n = value
    _requested = n


def get_num_threads() -> int:
    """The threads a kernel call may use: set_num_threads's value, else every core this
    process may run on."""
    if _requested is not None:
        return _requested
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
