"""How many threads lstmfast's kernels may use (its own, and BLAS inside its calls)."""
from __future__ import annotations

import contextlib
import math
import operator
import os
import time
from typing import Iterator, Optional, Tuple

import numpy as np

__all__ = ["set_num_threads", "get_num_threads", "thread_limit"]

_requested: Optional[int] = None  # None: every core this process may run on


def set_num_threads(n: Optional[int]) -> None:
    """Let each kernel call use at most n threads; n=None restores the default (see
    get_num_threads). The torch drop-ins follow torch.get_num_threads() instead.

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


@contextlib.contextmanager
def thread_limit(n: Optional[int]) -> Iterator[None]:
    """``set_num_threads(n)`` for the block, then the setting as it was (None included)."""
    previous = _requested
    set_num_threads(n)
    try:
        yield
    finally:
        set_num_threads(previous)


def get_num_threads() -> int:
    """The threads a kernel call may use: set_num_threads's value, else OMP_NUM_THREADS
    (a positive int, as OpenMP libraries read it), else the cores this process may run
    on: its affinity mask, capped by its container's CPU quota (cgroup)."""
    if _requested is not None:
        return _requested
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env.isdigit() and int(env) > 0:
        return min(int(env), 2**31 - 1)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    quota = _cpu_quota()
    return max(1, min(cores, quota)) if quota else cores


# The container's quota, as last read and when (time.monotonic()): reading the cgroup's
# files took ~100 us, half of a small inference call when done on every call, and the
# quota changes rarely (`docker update`); so it is read again after a second.
_QUOTA_TTL = 1.0
_quota_read: Tuple[float, Optional[int]] = (-math.inf, None)


def _cpu_quota() -> Optional[int]:
    global _quota_read
    when, quota = _quota_read
    now = time.monotonic()
    if not now - when < _QUOTA_TTL:
        quota = _cgroup_cpu_quota()
        _quota_read = (now, quota)
    return quota


def _cgroup_cpu_quota(root: str = "/sys/fs/cgroup") -> Optional[int]:
    """The CPU quota of this process's cgroup in whole cores (rounded up), or None for
    none: cgroup v2's cpu.max ("200000 100000" is 2 cores) or v1's cfs quota / period."""
    def read(*parts):
        try:
            with open(os.path.join(root, *parts)) as f:
                return f.read().split()
        except OSError:
            return None

    v2 = read("cpu.max")
    if v2 and len(v2) == 2 and v2[0] != "max":
        quota, period = v2
    else:
        quota, period = (read("cpu", "cpu.cfs_quota_us") or ["-1"])[0], \
            (read("cpu", "cpu.cfs_period_us") or ["0"])[0]
    try:
        quota_f, period_f = float(quota), float(period)
    except ValueError:
        return None
    if quota_f <= 0 or period_f <= 0:
        return None
    return max(1, math.ceil(quota_f / period_f))
