"""The pytest-benchmark suite: lstmfast next to its peers, one group per case.

A group is (cell, operation, shape, dtype); the implementation is the parameter, so
pytest-benchmark's table shows the peers side by side, and every benchmark carries its
GFLOP count and the case in ``extra_info``. Run

    pytest bench/ --benchmark-only                       # the tables, a few minutes
    pytest bench/ --benchmark-only --benchmark-autosave  # keep the run in .benchmarks/
    pytest bench/ --benchmark-only --benchmark-compare   # against the last saved run

Environment: LSTMFAST_BENCH_THREADS (default: all cores), LSTMFAST_BENCH_PAUSE (seconds of
idle before each benchmark, default 0.3), LSTMFAST_BENCH_TIME (target seconds of timing
per benchmark, default 0.5). Benchmarks are data, not tests: nothing here asserts a speed.
A peer that is not installed is skipped with the reason; a peer whose result differs from
lstmfast's fails (its wrapper in lstmfast/bench/peers.py has a bug, or lstmfast does).
"""
import importlib.util
import os
import sys
import time

import pytest

THREADS = int(os.environ.get("LSTMFAST_BENCH_THREADS") or len(os.sched_getaffinity(0)))
PAUSE = float(os.environ.get("LSTMFAST_BENCH_PAUSE", "0.3"))
TARGET = float(os.environ.get("LSTMFAST_BENCH_TIME", "0.5"))
if importlib.util.find_spec("threadpoolctl") is None:
    # Only read when numpy loads OpenBLAS, i.e. below, on the first import.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(THREADS))

import numpy as np  # noqa: E402

from lstmfast.bench import peers as _peers  # noqa: E402
from lstmfast.bench import _CpuMeter, shape_name  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))   # for `from cases import`

_HOW = _peers.set_threads(THREADS)
_meter = _CpuMeter()        # how busy the rest of the machine was while we timed
_problems = {}
_results = []       # (group, impl, median s, gflop) for the summary at the end


def pytest_report_header(config):
    env = {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                                          "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    lines = [f"lstmfast bench: {THREADS} threads ({_HOW}); {PAUSE} s pause before each "
             f"benchmark; ~{TARGET} s of timing each",
             "  env: " + (", ".join(f"{k}={v}" for k, v in env.items() if v) or
                          "no OPENBLAS_*/OMP_* variables set")]
    for name, cls in _peers.PEERS.items():
        ok, why = cls.available()
        lines.append(f"  {name}: {why if ok else 'MISSING (' + why + ')'}")
    return lines


def _problem(cell, shape, dtype):
    key = (cell, shape, np.dtype(dtype).name)
    if key not in _problems:
        _problems.clear()           # tests run group by group: keep only the current one
        _problems[key] = _peers.Problem(cell, *shape, dtype=dtype)
    return _problems[key]


@pytest.fixture
def run_case(benchmark):
    """run_case(cell, mode, shape, dtype, impl): verify the peer, then benchmark it."""

    def run(cell, mode, shape, dtype, impl):
        cls = _peers.PEERS[impl]
        ok, why = cls.available()
        if not ok:
            pytest.skip(f"{impl} is not installed: {why}")
        problem = _problem(cell, shape, dtype)
        problem.reference(mode)
        peer = cls()
        peer.setup(problem, mode, THREADS)
        try:
            err = _peers.verify(peer, problem, mode)       # the warm-up call as well
        except _peers.PeerMismatch as e:
            pytest.fail(str(e), pytrace=False)
        fn = peer.infer if mode == "infer" else peer.train_step
        # the call's time, for the rounds below: the median of three warm calls (the first
        # call, or one right after another peer's, can take several times longer, which
        # gave that peer fewer iterations per round than the others)
        time.sleep(PAUSE)
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        t = float(np.median(times))
        # Modest rounds: ~TARGET seconds per benchmark, at least 3 rounds; calls under
        # 20 ms are repeated within a round so the timer's resolution does not matter.
        iterations = max(1, int(0.02 / t))
        rounds = min(20, max(3, int(TARGET / (t * iterations))))
        work = problem.gflop(mode)
        benchmark.group = f"{cell} {mode} {shape_name(shape)} {np.dtype(dtype).name}"
        benchmark.extra_info.update(
            gflop=work, cell=cell, mode=mode, T=shape[0], B=shape[1], I=shape[2], H=shape[3],
            dtype=np.dtype(dtype).name, impl=impl, threads=THREADS, max_error_vs_lstmfast=err)
        time.sleep(PAUSE)           # let the previous peer's spinning threads go idle
        benchmark.pedantic(fn, rounds=rounds, iterations=iterations,
                           warmup_rounds=1 if t < 0.1 else 0)
        stats = getattr(benchmark, "stats", None)
        if stats is not None and getattr(stats, "stats", None) is not None:
            median = stats.stats.median
            benchmark.extra_info["gflops"] = work / median
            _results.append((benchmark.group, impl, median, work))
        peer.close()

    return run


def pytest_terminal_summary(terminalreporter):
    if not _results:
        return
    tr = terminalreporter
    tr.section("lstmfast: GFLOP/s per group (median), speed vs the fastest peer")
    tr.write_line(_meter.report())
    groups = {}
    for group, impl, median, work in _results:
        groups.setdefault(group, []).append((impl, median, work))
    for group, rows in groups.items():
        peers = [m for i, m, _ in rows if i != "lstmfast"]
        tr.write_line(group)
        for impl, median, work in sorted(rows, key=lambda r: r[1]):
            vs = f"{min(peers) / median:6.2f}x" if peers else "      -"
            tr.write_line(f"  {impl:<12}{median * 1e3:10.2f} ms {work / median:8.1f} GFLOP/s"
                          f"  {vs} vs best peer")
