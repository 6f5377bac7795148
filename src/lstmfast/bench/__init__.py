"""How fast lstmfast is next to its peers, on this machine: ``python -m lstmfast.bench``.

For each shape and mode it prints a table: implementation, median milliseconds per call,
GFLOP/s, speed relative to the fastest peer, and the share of this machine's own GEMM rate
(numpy's float GEMM on 2048x2048 operands with the same threads, sampled once per round
inside every case; numpy's and scipy's OpenBLAS are also timed at the start and the end).
Peers are lstmfast, a plain numpy layer, torch.nn and onnxruntime's operators (see
bench/peers.py); missing ones are listed as missing. Every peer is checked against lstmfast on
the same weights before it is timed.

Timing: implementations are interleaved (round-robin, a 0.2 s pause before each sample,
the starting peer rotated every round) so drifts in clock speed or a noisy neighbour hit
all of them alike; a sample repeats a call until it lasts >= 50 ms; the median of the
samples is reported, with the interquartile spread. The CPU time other processes used
during the run is reported at the end: above a few percent, rerun.

    python -m lstmfast.bench                            LSTM, float32, the default shapes
    python -m lstmfast.bench --cell gru --modes train
    python -m lstmfast.bench --shapes 25,16,512,512 T150_B32_I256_H256 --repeat 9
    python -m lstmfast.bench --memory --json run.json --plot run.png

The pytest-benchmark suite in bench/ uses the same shapes and peers.
"""
import argparse
import gc
import json
import os
import platform
import re
import subprocess
import sys
import time

import numpy as np

import lstmfast

from .. import _kernels
from . import peers as _peers
from ..apps.common import cannot_write
from .peers import PEERS, PeerMismatch, Problem, gflop, set_threads, verify

__all__ = ["LSTM_SHAPES", "LSTM_INFER_SHAPES", "FLOAT64_SHAPES", "GRU_SHAPES", "RNN_SHAPES",
           "shape_name", "parse_shape", "main"]

# (T, B, I, H). Training and inference:
LSTM_SHAPES = [(150, 32, 256, 256), (25, 16, 512, 512), (25, 64, 512, 512),
               (25, 32, 1024, 1024), (50, 8, 1536, 1536), (100, 64, 125, 320)]
# Inference at small batch, where the per-step GEMM streams W_hh from cache and memory:
LSTM_INFER_SHAPES = [(25, 1, 512, 512), (25, 4, 1024, 1024), (150, 1, 256, 256),
                     (100, 1, 128, 128)]
FLOAT64_SHAPES = [(150, 32, 256, 256), (25, 16, 512, 512)]
GRU_SHAPES = [(187, 32, 512, 512), (187, 32, 1024, 1024)]
RNN_SHAPES = [(50, 16, 1760, 1760)]

IMPLS = list(PEERS)            # lstmfast first; the others are "peers"
MODES = ("train", "infer")
MODE_TITLE = {"train": "training step", "infer": "inference"}
PAUSE = 0.2                    # s before each sample: idle-spinning threads of the previous
                               # peer go to sleep meanwhile. Measured on the 2-core Zen3: after
                               # numpy's OpenBLAS the next peer ran 1.5-2.5x slow at 0.1 s,
                               # at full speed from 0.15 s.
MIN_SAMPLE = 0.05              # s; short calls are repeated within one sample


def shape_name(shape):
    T, B, I, H = shape
    return f"T{T}_B{B}_I{I}_H{H}"


_GROUPS = {"lstm": LSTM_SHAPES, "small": LSTM_INFER_SHAPES, "float64": FLOAT64_SHAPES,
           "gru": GRU_SHAPES, "rnn": RNN_SHAPES}


def parse_shape(text):
    """'T150_B32_I256_H256', '150,32,256,256' or a group name -> list of (T, B, I, H)."""
    if text in _GROUPS:
        return list(_GROUPS[text])
    m = re.fullmatch(r"T(\d+)_B(\d+)_I(\d+)_H(\d+)", text) or \
        re.fullmatch(r"(\d+),(\d+),(\d+),(\d+)", text)
    if not m:
        raise argparse.ArgumentTypeError(
            f"shape {text!r}: expected T,B,I,H (e.g. 25,16,512,512), a name like "
            f"T25_B16_I512_H512, or a group: {', '.join(_GROUPS)}")
    shape = tuple(int(v) for v in m.groups())
    if min(shape) < 1:
        raise argparse.ArgumentTypeError(f"shape {text!r}: sizes must be positive")
    return [shape]


def default_plan(cell, dtype):
    """[(shape, modes)] run when --shapes is not given."""
    if cell == "gru":
        return [(s, MODES) for s in GRU_SHAPES]
    if cell == "rnn":
        return [(s, MODES) for s in RNN_SHAPES]
    if np.dtype(dtype) == np.float64:
        return [(s, MODES) for s in FLOAT64_SHAPES]
    return [(s, MODES) for s in LSTM_SHAPES] + [(s, ("infer",)) for s in LSTM_INFER_SHAPES]


# --- the machine -----------------------------------------------------------------------
class GemmCall:
    """One n x n x n GEMM through numpy (its bundled OpenBLAS): the machine's own rate,
    sampled inside every case's round-robin so that noise hits it as it hits the peers."""

    def __init__(self, dtype, n=2048):
        rng = np.random.default_rng(1)
        self.a = rng.standard_normal((n, n)).astype(dtype)
        self.b = rng.standard_normal((n, n)).astype(dtype)
        self.gflop = 2.0 * n ** 3 / 1e9

    def __call__(self):
        return self.a @ self.b


def gemm_rates(dtype, n=2048, repeat=5):
    """GFLOP/s of an n x n x n GEMM through numpy's and through scipy's bundled OpenBLAS
    (lstmfast calls scipy's), interleaved, median of `repeat`."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    calls = {"numpy": lambda: a @ b}
    try:
        from scipy.linalg import blas
        af, bf = np.asfortranarray(a), np.asfortranarray(b)
        gemm = blas.sgemm if np.dtype(dtype) == np.float32 else blas.dgemm
        calls["scipy"] = lambda: gemm(1.0, af, bf)
    except ImportError:
        pass
    samples = {k: [] for k in calls}
    for f in calls.values():
        f()
    for _ in range(repeat):
        for k, f in calls.items():
            time.sleep(PAUSE / 2)
            t0 = time.perf_counter()
            f()
            samples[k].append(time.perf_counter() - t0)
    return {k: 2.0 * n ** 3 / np.median(v) / 1e9 for k, v in samples.items()}


class _CpuMeter:
    """CPU time the rest of the machine used while we ran (a noisy-neighbour check)."""

    def __init__(self):
        self.t0, self.busy0, self.own0 = time.time(), self._busy(), self._own()

    @staticmethod
    def _busy():
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
            return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")    # minus idle, iowait
        except (OSError, ValueError, IndexError):
            return None

    @staticmethod
    def _own():
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def report(self):
        busy = self._busy()
        if busy is None or self.busy0 is None:
            return "other processes' CPU use: unknown (no /proc/stat)"
        wall = time.time() - self.t0
        other = max(0.0, (busy - self.busy0) - (self._own() - self.own0))
        cores = os.cpu_count() or 1
        share = 100.0 * other / max(wall * cores, 1e-9)
        warn = "  <- results are noisy; rerun on a quiet machine" if share > 5 else ""
        return (f"other processes used {other:.1f} core-seconds during the run "
                f"({share:.1f}% of the machine){warn}")


def _source_revision(module):
    """' (git abc1234+dirty, /path)' when the package runs from a git checkout, else ''."""
    where = os.path.dirname(os.path.abspath(module.__file__))
    try:
        rev = subprocess.run(["git", "-C", where, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", where, "status", "--porcelain", "--", "."],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    if rev.returncode != 0:
        return ""
    return f" (git {rev.stdout.strip()}{'+dirty' if dirty.stdout.strip() else ''}, {where})"


def machine_info(threads):
    config = lstmfast.show_config("dicts")  # CPU, kernel variant, BLAS, cores
    info = {"python": platform.python_version(), "platform": platform.platform(),
            "threads": threads, "cores_available": config["threads"]["cores_available"],
            "cpu": config["cpu"]["name"], "config": config}
    info["env"] = {k: os.environ.get(k) for k in (
        "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
        "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    versions = {}
    for name, cls in PEERS.items():
        ok, why = cls.available()
        versions[name] = why if ok else f"missing: {why}"
    import scipy
    versions["lstmfast"] = f"lstmfast {lstmfast.__version__}{_source_revision(lstmfast)}"
    versions["numpy"] = f"numpy {np.__version__}, scipy {scipy.__version__}"
    info["versions"] = versions
    info["load_average"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    return info


# --- one case ----------------------------------------------------------------------------
def _sample(fn, min_sample):
    """Seconds per call of fn, and the calls: short calls repeat until the sample lasts
    min_sample, for every implementation alike. The first call after a pause is slower
    (threads wake, caches refill); a count fixed from one earlier call gave noisier peers
    fewer calls to spread it over (5 against lstmfast's 54 at 100,1,128: up to 1.2x of
    a ratio)."""
    n, t0 = 0, time.perf_counter()
    while n == 0 or time.perf_counter() - t0 < min_sample:
        fn()
        n += 1
    return (time.perf_counter() - t0) / n, n


def run_case(problem, mode, impls, threads, repeat, gemm, pause=PAUSE, min_sample=MIN_SAMPLE):
    """Time every implementation on one problem and mode, interleaved, with one sample of
    the GEMM reference per round. Returns (rows, GEMM GFLOP/s during this case)."""
    rows, live, gemm_s = [], [], []
    problem.reference(mode)            # lstmfast's result, which verify() compares with
    for name in impls:
        cls = PEERS[name]
        row = {"impl": name, "status": "ok", "note": "", "samples_ms": []}
        rows.append(row)
        ok, why = cls.available()
        if not ok:
            row.update(status="missing", note=f"not installed: {why}")
            continue
        if not cls.supports(problem.cell, mode, problem.dtype):
            why = ("no training step" if mode not in cls.modes else
                   f"no {problem.dtype.name} kernels" if problem.dtype not in
                   [np.dtype(d) for d in cls.dtypes] else f"no {problem.cell}")
            row.update(status="n/a", note=why)
            continue
        peer = cls()
        peer.setup(problem, mode, threads)
        fn = peer.infer if mode == "infer" else peer.train_step
        try:
            row["check"] = verify(peer, problem, mode)   # also the warm-up call
        except PeerMismatch as e:
            row.update(status="DISAGREES", note=str(e))
            peer.close()
            continue
        row["calls"] = []
        live.append((row, peer, fn))
    for r in range(repeat):
        time.sleep(pause)
        t0 = time.perf_counter()
        gemm()
        gemm_s.append(time.perf_counter() - t0)
        k = r % max(len(live), 1)
        for row, peer, fn in live[k:] + live[:k]:
            time.sleep(pause)
            per_call, n = _sample(fn, min_sample)
            row["samples_ms"].append(per_call * 1e3)
            row["calls"].append(n)
    for row, peer, _ in live:
        row["calls_per_sample"] = int(np.median(row.pop("calls")))
        peer.close()
    gc.collect()
    work = problem.gflop(mode)
    for row in rows:
        if row["samples_ms"]:
            s = np.asarray(row["samples_ms"])
            q1, med, q3 = np.percentile(s, [25, 50, 75])
            row.update(ms=float(med), spread=float((q3 - q1) / med), gflops=work / med * 1e3)
    peers = [row["ms"] for row in rows if "ms" in row and row["impl"] != "lstmfast"]
    gemm_rate = gemm.gflop / float(np.median(gemm_s))
    for row in rows:
        if "ms" in row:
            row["pct_gemm"] = row["gflops"] / gemm_rate
            if peers:
                row["vs_best_peer"] = min(peers) / row["ms"]
    return rows, gemm_rate


# --- memory ------------------------------------------------------------------------------
def _proc_status_kib(field):
    with open("/proc/self/status") as f:
        m = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M)
    return int(m.group(1))


def _memory_child(spec):
    """In a fresh process: peak memory of one training step. Prints one JSON line.

    rss_mib: growth of the resident set during the step, VmHWM (reset just before via
    /proc/self/clear_refs) minus VmRSS before; counts everything the process touches
    (allocator, library workspaces, retained caches), after a T=1 warm-up step so one-time
    library set-up is excluded. Weights, x and dy exist before and are not counted.
    traced_mib (lstmfast, numpy): peak bytes of Python/numpy allocations live during a
    second step, by tracemalloc; torch and onnxruntime allocate outside its view.
    """
    import tracemalloc
    set_threads(spec["threads"])
    cls = PEERS[spec["impl"]]
    T, B, I, H = spec["shape"]
    warm = cls()
    warm.setup(Problem(spec["cell"], 1, B, I, H, spec["dtype"]), "train", spec["threads"])
    warm.train_step()
    warm.close()
    del warm
    peer = cls()
    peer.setup(Problem(spec["cell"], T, B, I, H, spec["dtype"]), "train", spec["threads"])
    gc.collect()
    out = {}
    try:
        rss0 = _proc_status_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")                     # reset the peak (VmHWM) to the current RSS
        peer.train_step()
        out["rss_mib"] = (_proc_status_kib("VmHWM") - rss0) / 1024
    except OSError as e:
        out["rss_note"] = f"no /proc peak-RSS reset ({e})"
        peer.train_step()
    if spec["impl"] in ("lstmfast", "numpy"):
        gc.collect()
        tracemalloc.start()
        peer.train_step()
        out["traced_mib"] = tracemalloc.get_traced_memory()[1] / 2 ** 20
        tracemalloc.stop()
    print(json.dumps(out))


def measure_memory(problem, impl, threads, timeout=600):
    spec = {"cell": problem.cell, "shape": problem.shape, "dtype": problem.dtype.name,
            "impl": impl, "threads": threads}
    proc = subprocess.run([sys.executable, "-m", "lstmfast.bench", "--memory-child",
                           json.dumps(spec)], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        return {"rss_note": f"child failed: {proc.stderr.strip().splitlines()[-1:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- printing ----------------------------------------------------------------------------
def _fmt(v, spec, width):
    return f"{v:{width}{spec}}" if v is not None else " " * (width - 1) + "-"


def fma_peak(dtype, threads):
    """GFLOP/s ceiling of the kernel variant in use: its register-resident vector FMAs on
    one core (csrc/panel.template.h, fma_peak), times the threads a call may use."""
    return _kernels.fma_peak(_kernels.ISA, dtype) * threads


def print_case(problem, mode, rows, gemm_rate, gemm_label, memory, peak=None, out=sys.stdout):
    T, B, I, H = problem.shape
    print(f"\n{problem.cell.upper()} {MODE_TITLE[mode]}  T={T} B={B} I={I} H={H}  "
          f"{problem.dtype.name}  {problem.gflop(mode):.2f} GFLOP/call  ({gemm_label} "
          f"{gemm_rate:.0f} GFLOP/s meanwhile)", file=out)
    head = (f"  {'implementation':<13}{'median ms':>11}{'spread':>8}{'GFLOP/s':>9}"
            f"{'vs best peer':>14}{'% ' + gemm_label:>9}{'% peak':>8}")
    if memory:
        head += f"{'RSS +MiB':>10}{'numpy MiB':>11}"
    head += "  check"
    print(head, file=out)
    ranked = sorted(rows, key=lambda r: r.get("ms", float("inf")))
    for r in ranked:
        if "ms" not in r:
            print(f"  {r['impl']:<13}{'-':>11}  {r['status']}: {r['note']}", file=out)
            continue
        vs = f"{r['vs_best_peer']:.2f}x" if "vs_best_peer" in r else "-"
        line = (f"  {r['impl']:<13}{r['ms']:11.2f}{100 * r['spread']:7.1f}%{r['gflops']:9.1f}"
                f"{vs:>14}{100 * r['pct_gemm']:8.0f}%"
                + (f"{100 * r['gflops'] / peak:7.0f}%" if peak else f"{'-':>8}"))
        if memory:
            m = r.get("memory", {})
            line += _fmt(m.get("rss_mib"), ".0f", 10) + _fmt(m.get("traced_mib"), ".0f", 11)
        line += "  ref" if r["impl"] == "lstmfast" else f"  {r['check']:.0e}"
        print(line, file=out)
    out.flush()


def print_summary(cases, out=sys.stdout):
    print("\nSummary: lstmfast against the fastest peer (speed ratio; >1 = lstmfast faster)",
          file=out)
    print(f"  {'case':<34}{'lstmfast ms':>12}  {'best peer':<22}{'ratio':>7}", file=out)
    for c in cases:
        rows = {r["impl"]: r for r in c["rows"]}
        lf = rows.get("lstmfast", {})
        peers = [r for r in c["rows"] if r["impl"] != "lstmfast" and "ms" in r]
        best = min(peers, key=lambda r: r["ms"]) if peers else None
        name = f"{c['cell']} {c['mode']:<5} {shape_name(c['shape'])} f{c['dtype'][5:]}"
        lf_ms = f"{lf['ms']:.2f}" if "ms" in lf else lf.get("status", "-")
        bp = f"{best['impl']} {best['ms']:.2f} ms" if best else "none"
        ratio = f"{lf['vs_best_peer']:.2f}x" if "vs_best_peer" in lf else "-"
        print(f"  {name:<34}{lf_ms:>12}  {bp:<22}{ratio:>7}", file=out)


def plot(cases, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    modes = [m for m in MODES if any(c["mode"] == m for c in cases)]
    fig, axes = plt.subplots(len(modes), 1, figsize=(11, 4.2 * len(modes)), squeeze=False)
    for ax, mode in zip(axes[:, 0], modes):
        cs = [c for c in cases if c["mode"] == mode]
        impls = [i for i in IMPLS if any(r["impl"] == i and "ms" in r for c in cs
                                         for r in c["rows"])]
        width = 0.8 / max(len(impls), 1)
        for k, impl in enumerate(impls):
            vals = [next((r["gflops"] for r in c["rows"] if r["impl"] == impl and "ms" in r),
                         0.0) for c in cs]
            ax.bar(np.arange(len(cs)) + (k - (len(impls) - 1) / 2) * width, vals, width,
                   label=impl)
        for dt in sorted({c["dtype"] for c in cs}):
            rate = float(np.median([c["gemm_gflops"] for c in cs if c["dtype"] == dt]))
            ax.axhline(rate, ls="--", c="gray", lw=1)
            ax.text(len(cs) - 0.5, rate, f" {dt} GEMM 2048^3", va="bottom",
                    ha="right", fontsize=8, color="gray")
        ax.set_xticks(np.arange(len(cs)))
        ax.set_xticklabels([f"{c['cell']} {shape_name(c['shape'])}\n{c['dtype']}"
                            for c in cs], fontsize=7, rotation=20, ha="right")
        ax.set_ylabel("GFLOP/s")
        ax.set_title(f"{MODE_TITLE[mode]} (higher is better)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# --- command line ------------------------------------------------------------------------
def run_surface(repeat, pause, threads, out=sys.stdout):
    """The cases of lstmfast/bench/surface.py, interleaved, medians against the fastest peer."""
    from . import surface as _surface

    try:
        import torch
    except ImportError:
        print("--surface compares against torch, which is not installed", file=out)
        return 1
    torch.set_num_threads(threads)
    for build, sample in _surface.CASES:
        fns, title = build()
        times = {name: [] for name in fns}
        for _ in range(max(repeat, 3)):
            for name, fn in fns.items():
                time.sleep(pause)
                times[name].append(_sample(fn, sample or MIN_SAMPLE)[0])
        med = {name: float(np.median(v)) for name, v in times.items()}
        peers = [v for name, v in med.items() if not name.startswith("lstmfast")]
        print(f"\n{title}", file=out)
        for name, v in sorted(med.items(), key=lambda kv: kv[1]):
            print(f"  {name:<22} {v * 1e3:10.3f} ms   {min(peers) / v:5.2f}x the fastest torch",
                  file=out)
    return 0


def _parser():
    p = argparse.ArgumentParser(prog="python -m lstmfast.bench", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    p.add_argument("--threads", type=int, default=cores,
                   help=f"threads for every implementation (default: all {cores} cores)")
    p.add_argument("--cell", choices=sorted(_peers.CELLS), default="lstm")
    p.add_argument("--shapes", nargs="+", type=parse_shape, metavar="SHAPE",
                   help="T,B,I,H or T150_B32_I256_H256 or a group (lstm, small, float64, "
                        "gru, rnn); default: the cell's standard set")
    p.add_argument("--modes", default="train,infer",
                   help="comma-separated: train, infer (default: both)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--impls", default=",".join(IMPLS),
                   help=f"comma-separated subset of {','.join(IMPLS)}")
    p.add_argument("--repeat", type=int, default=4,
                   help="samples per implementation, the median reported (default 4)")
    p.add_argument("--pause", type=float, default=PAUSE,
                   help=f"seconds of idle before each sample (default {PAUSE})")
    p.add_argument("--memory", action="store_true",
                   help="also measure the peak memory of a training step (one subprocess per "
                        "implementation and shape)")
    p.add_argument("--surface", action="store_true",
                   help="instead: variable lengths, the cell step and a 2-layer "
                        "bidirectional LSTM with lengths (numpy layer, lstmfast.torch "
                        "drop-in) against torch")
    p.add_argument("--json", metavar="PATH", help="write all samples and settings as JSON")
    p.add_argument("--plot", metavar="PATH", help="write a GFLOP/s bar chart (needs matplotlib)")
    p.add_argument("--memory-child", help=argparse.SUPPRESS)
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    if args.memory_child:
        _memory_child(json.loads(args.memory_child))
        return 0
    p = _parser()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or set(modes) - set(MODES):
        p.error(f"--modes takes train and/or infer, got {args.modes!r}")
    impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    if not impls or set(impls) - set(IMPLS):
        p.error(f"--impls takes a subset of {','.join(IMPLS)}, got {args.impls!r}")
    if args.threads < 1 or args.repeat < 1:
        p.error("--threads and --repeat must be >= 1")
    if not args.pause >= 0 or args.pause == float("inf"):
        p.error(f"--pause takes seconds >= 0, got {args.pause}")
    for flag, path in (("--json", args.json), ("--plot", args.plot)):
        why = path and cannot_write(path)
        if why:
            p.error(f"{flag} {why}")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            p.error("--plot needs matplotlib, which is not installed "
                    "(pip install matplotlib, or lstmfast[plot])")

    # Without threadpoolctl the BLAS pools can only be sized by environment variables read
    # when numpy loads, which has already happened: run again with them set.
    try:
        import threadpoolctl  # noqa: F401
    except ImportError:
        if os.environ.get("OPENBLAS_NUM_THREADS") != str(args.threads) \
                and not os.environ.get("_LSTMFAST_BENCH_REEXEC"):
            env = dict(os.environ, OPENBLAS_NUM_THREADS=str(args.threads),
                       OMP_NUM_THREADS=str(args.threads), _LSTMFAST_BENCH_REEXEC="1")
            os.execve(sys.executable, [sys.executable, "-m", "lstmfast.bench", *argv], env)

    if args.surface:
        set_threads(args.threads)
        return run_surface(args.repeat, args.pause, args.threads)

    dtype = np.dtype(args.dtype)
    plan = ([(s, tuple(modes)) for group in args.shapes for s in group] if args.shapes else
            [(s, tuple(m for m in ms if m in modes)) for s, ms in default_plan(args.cell, dtype)])
    plan = [(s, ms) for s, ms in plan if ms]

    t_start = time.perf_counter()
    meter = _CpuMeter()
    how = set_threads(args.threads)
    info = machine_info(args.threads)
    print(f"lstmfast benchmark: {info['cpu']}, {info['cores_available']} cores, "
          f"{args.threads} threads ({how})")
    for name, v in info["versions"].items():
        print(f"  {name:<12} {v}")
    env = ", ".join(f"{k}={v}" for k, v in info["env"].items() if v is not None)
    print(f"  environment  {env or 'no OPENBLAS_*/OMP_*/MKL_* variables set'}"
          f" (OPENBLAS_CORETYPE {'set' if info['env']['OPENBLAS_CORETYPE'] else 'not set'}, "
          f"OPENBLAS_L2_SIZE {'set' if info['env']['OPENBLAS_L2_SIZE'] else 'not set'})")
    gemm_label = "SGEMM" if dtype == np.float32 else "DGEMM"
    gemm = {dtype.name: gemm_rates(dtype)}
    gemm_call = GemmCall(dtype)
    print(f"  {gemm_label} 2048^3 at the start: " + ", ".join(
        f"{k} {v:.1f}" for k, v in gemm[dtype.name].items()) + " GFLOP/s (numpy and scipy "
        "each bundle an OpenBLAS; lstmfast calls scipy's)")
    for line in _peers.thread_report():
        print(f"  pool         {line}")
    config = info["config"]
    kern = config["kernels"]
    peak = fma_peak(dtype, args.threads)
    print(f"  kernels      lstmfast's {kern['selected']} variant ({kern['reason']}; built: "
          f"{', '.join(kern['compiled'])}; {config['cpu']['name']} supports "
          f"{', '.join(n for n, ok in config['cpu']['supports'].items() if ok)})")
    print(f"  blas         {config['blas']['config']} (core {config['blas']['core']})")
    print(f"  FMA peak     {peak:.0f} GFLOP/s: the {kern['selected']} variant's register-"
          f"resident {dtype.name} FMAs, {peak / args.threads:.0f} per core x {args.threads} "
          f"threads (% peak below is against it; other implementations may use other "
          f"vector widths)")
    print(f"  ms = median per call; spread = interquartile range / median; vs best peer = "
          f"fastest peer's time / this time (>1 = faster); % {gemm_label} = GFLOP/s / "
          f"numpy's 2048^3 {gemm_label} rate, sampled once per round of the case; check = "
          f"max difference from lstmfast (y absolute, gradients relative to their largest "
          f"entry)")

    cases = []
    for shape, ms in plan:
        problem = Problem(args.cell, *shape, dtype=dtype)
        for mode in ms:
            rows, gemm_rate = run_case(problem, mode, impls, args.threads, args.repeat,
                                       gemm_call, args.pause)
            if args.memory and mode == "train":
                for r in rows:
                    if "ms" in r:
                        r["memory"] = measure_memory(problem, r["impl"], args.threads)
            print_case(problem, mode, rows, gemm_rate, gemm_label, args.memory and
                       mode == "train", peak)
            cases.append({"cell": args.cell, "mode": mode, "shape": list(shape),
                          "dtype": dtype.name, "gflop": gflop(args.cell, mode, *shape),
                          "gemm_gflops": gemm_rate, "rows": rows})
        del problem
        gc.collect()

    print_summary(cases)
    # Measured again at the end: a different rate means the machine changed under the run.
    gemm_end = gemm_rates(dtype)
    drift = max(gemm_end.values()) / max(gemm[dtype.name].values()) - 1
    unsteady = "; the machine was not steady, compare with care" if abs(drift) > 0.1 else ""
    peak_end = fma_peak(dtype, args.threads)
    print(f"\nFMA peak at the end: {peak_end:.0f} GFLOP/s ({100 * (peak_end / peak - 1):+.0f}% "
          f"against the start)")
    print(f"{gemm_label} 2048^3 at the end: " + ", ".join(
        f"{k} {v:.1f}" for k, v in gemm_end.items()) + f" GFLOP/s ({100 * drift:+.0f}% against "
        f"the start{unsteady})")
    bad = [r for c in cases for r in c["rows"] if r["status"] == "DISAGREES"]
    for r in bad:
        print(f"  DISAGREES: {r['note']}")
    elapsed = time.perf_counter() - t_start
    noise = meter.report()
    print(f"{len(cases)} cases in {elapsed:.0f} s; {noise}")
    if args.memory:
        print("memory: RSS +MiB = growth of the resident set during one training step in a "
              "fresh process after a T=1 warm-up (everything the process touches); numpy MiB "
              "= peak numpy/Python allocations in the step by tracemalloc (lstmfast, numpy "
              "only). lstmfast and torch accumulate into gradient buffers that exist before "
              "the step; the numpy peer returns new ones.")

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info,
                       "fma_peak_gflops": {"start": peak, "end": peak_end},
                       "threads_control": how, "gemm_gflops": gemm,
                       "gemm_gflops_end": {dtype.name: gemm_end},
                       "settings": {"repeat": args.repeat, "pause_s": args.pause,
                                    "min_sample_s": MIN_SAMPLE},
                       "cases": cases, "elapsed_s": elapsed, "noise": noise}, f, indent=1)
        print(f"wrote {args.json}")
    if args.plot:
        plot(cases, args.plot)
        print(f"wrote {args.plot}")
    return 1 if bad else 0
