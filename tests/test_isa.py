"""Kernel variants: selection at import (LSTMFAST_ISA), show_config, what each variant's
object code may contain, and helpers running in the caller's floating-point mode.
The variants' numbers are checked by the oracle tests, which run once per usable variant
(conftest.py), and by test_variants_c.py for those this CPU cannot run."""
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

import lstmfast
from build_helpers import setup_flags
from lstmfast import _kernels

ROOT = Path(__file__).resolve().parents[1]
ALL = ("avx512", "avx2", "neon", "baseline")


def _run(code, isa):
    env = dict(os.environ)
    env.pop("LSTMFAST_ISA", None)
    if isa is not None:
        env["LSTMFAST_ISA"] = isa
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120)


def test_default_is_the_widest_usable_variant():
    built = _kernels.compiled_isas()
    usable = [n for n in built if _kernels.cpu_supports(n)]
    assert built == [n for n in ALL if n in built]  # widest first
    res = _run("import lstmfast; print(lstmfast.show_config('dicts')['kernels']['selected'])",
               None)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[-1] == usable[0]


@pytest.mark.parametrize("isa", [n for n in ALL if n in _kernels.compiled_isas()
                                 and _kernels.cpu_supports(n)])
def test_forced_variant_runs_and_agrees(isa):
    """A forced variant is the one that runs, and its answer matches the oracle run in
    this process (float64: the variants differ only in rounding)."""
    code = ("import json, numpy as np, lstmfast\n"
            "m = lstmfast.LSTM(7, 19, seed=3, dtype=np.float64)\n"
            "x = np.random.default_rng(0).standard_normal((9, 13, 7))\n"
            "y, _ = m(x)\n"
            "c = lstmfast.show_config('dicts')['kernels']\n"
            "print(json.dumps([c['selected'], c['reason'], y.sum()]))")
    res = _run(code, isa.upper())  # case does not matter
    assert res.returncode == 0, res.stderr
    selected, reason, total = json.loads(res.stdout.splitlines()[-1])
    assert selected == isa and "LSTMFAST_ISA" in reason
    m = lstmfast.LSTM(7, 19, seed=3, dtype=np.float64)
    y, _ = m(np.random.default_rng(0).standard_normal((9, 13, 7)))
    assert abs(total - y.sum()) <= 1e-10 * np.abs(y).sum()


def test_unknown_variant_raises_at_import():
    res = _run("import lstmfast", "sse9")
    assert res.returncode != 0
    assert "ImportError" in res.stderr and "LSTMFAST_ISA='sse9' is not a kernel variant" \
        in res.stderr


def test_unavailable_variant_raises_at_import():
    """Neither a variant the build lacks nor one the CPU cannot run is ever called: the
    import fails with a message saying which."""
    built = _kernels.compiled_isas()
    absent = [n for n in ALL if n not in built]
    assert absent, "a build never holds every variant (neon is aarch64-only, and baseline is not built there)"
    res = _run("import lstmfast", absent[0])
    assert res.returncode != 0 and f"has no {absent[0]} kernels" in res.stderr
    unsupported = [n for n in built if not _kernels.cpu_supports(n)]
    for isa in unsupported:
        res = _run("import lstmfast", isa)
        assert res.returncode != 0 and f"this CPU cannot run the {isa} kernels" in res.stderr
        assert "Fatal" not in res.stderr and res.returncode > 0  # an exception, not SIGILL


def test_show_config(capsys):
    cfg = lstmfast.show_config(mode="dicts")
    k = cfg["kernels"]
    assert k["selected"] == _kernels.ISA and k["selected"] in k["compiled"]
    assert cfg["cpu"]["supports"][k["selected"]]
    assert cfg["cpu"]["supports"]["baseline"] or cfg["cpu"]["supports"]["neon"]
    widths = {"avx512": 64, "avx2": 32, "neon": 16, "baseline": 16}
    for name, v in k["compiled"].items():
        assert v["vector_bytes"] == widths[name]
        assert v["tile_rows"] in (6, 12)
    assert cfg["threads"]["per_call"] == lstmfast.get_num_threads()
    assert lstmfast.show_config() is None
    out = capsys.readouterr().out
    assert f"* {k['selected']}" in out and "blas:" in out and cfg["cpu"]["name"] in out
    with pytest.raises(ValueError, match="mode must be"):
        lstmfast.show_config("json")


def test_fma_peak_measures_something():
    for isa in (n for n in _kernels.compiled_isas() if _kernels.cpu_supports(n)):
        assert _kernels.fma_peak(isa, np.float32, 0.01) > 0.5  # GFLOP/s; any CPU does more
    with pytest.raises(ValueError):
        _kernels.fma_peak("nope", np.float32)


def _vector_registers(obj):
    text = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(obj)],
                          capture_output=True, text=True, check=True).stdout
    return {w for w in ("xmm", "ymm", "zmm") if re.search(rf"%{w}\d", text)}


@pytest.mark.skipif(shutil.which("objdump") is None or shutil.which("nm") is None,
                    reason="binutils not installed")
def test_wide_instructions_stay_in_their_variant(tmp_path):
    """Built with setup.py's flags: zmm registers appear only in the avx512 object, ymm
    only in avx2 and avx512, the shared files (threads, dispatch, BLAS glue) use neither,
    and a variant object exports nothing but its table, so the linker can never take a
    wide function where a baseline one was meant (SIGILL on an older CPU)."""
    if not sysconfig.get_platform().endswith("x86_64"):
        pytest.skip("x86-64 object code")
    cflags, variants = setup_flags()[:2]
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None:
        pytest.skip(f"{cc} not found")

    def build(src, flags, macros=()):
        out = tmp_path / f"{src.stem}_{len(list(tmp_path.iterdir()))}.o"
        cmd = [cc, "-c", *cflags, *flags, *macros, f"-I{ROOT / 'csrc'}",
               f"-I{sysconfig.get_paths()['include']}", str(src), "-o", str(out)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        return out

    expect = {"avx512": {"zmm", "ymm"}, "avx2": {"ymm"}, "baseline": set()}
    for name, flags, _ in variants:
        if name not in expect:
            continue
        obj = build(ROOT / "csrc" / "recurrence.c", flags, [f"-DLF_VARIANT_{name.upper()}"])
        wide = _vector_registers(obj) & {"ymm", "zmm"}
        assert wide == expect[name], f"{name}: {wide}"
        exported = subprocess.run(["nm", "-g", "--defined-only", str(obj)], capture_output=True,
                                  text=True, check=True).stdout.split()
        assert exported[-1] == f"lf_kernels_{name}" and len(exported) == 3, exported
    for shared in ("threads.c", "dispatch.c", "blas.c"):
        obj = build(ROOT / "csrc" / shared, [],
                    [f"-DLF_HAVE_{n.upper()}" for n, _, _ in variants])
        assert not _vector_registers(obj) & {"ymm", "zmm"}, shared


def test_helpers_run_in_the_callers_floating_point_mode():
    """torch.set_flush_denormal switches flush-to-zero in the calling thread only, while
    a layer's helper threads live on between calls: every unit must be computed in the
    caller's mode of the moment, whichever thread computes it. Gate pre-activations
    summed from products of about 1e-39 (subnormal in float32) give exactly 0 everywhere
    when flushed, and nonzero subnormal outputs when not."""
    torch = pytest.importorskip("torch")
    B, T, I, H = 48, 6, 16, 384  # enough work per step that a helper takes its share
    m = lstmfast.LSTM(I, H, bias=False, seed=0)
    w = m.params["weight_ih_l0"]
    w[...] = 1e-19 * np.random.default_rng(1).uniform(0.5, 1, w.shape)
    m.params["weight_hh_l0"][...] = 0
    x = np.full((T, B, I), 1e-20, np.float32)
    before = lstmfast.get_num_threads()
    lstmfast.set_num_threads(2)
    try:
        for training in (False, True):
            m.train(training)
            for flush in (True, False, True, False):  # the first call starts the helpers
                if not torch.set_flush_denormal(flush):
                    pytest.skip("this CPU cannot flush denormals")
                y, _ = m(x)
                if training:
                    m.backward(np.ones_like(y))
                nonzero = np.count_nonzero(y)
                assert nonzero == (0 if flush else y.size), \
                    f"training={training}, flush={flush}: {nonzero} of {y.size} nonzero"
                assert np.abs(y).max() < np.finfo(np.float32).tiny
    finally:
        torch.set_flush_denormal(False)
        lstmfast.set_num_threads(before)
