"""Kernel variants this machine's Python cannot load, checked against the numpy oracle
through a C test driver (tests/c/driver.c): the aarch64 NEON variant, cross-compiled
and run under qemu-aarch64; the AVX-512 variant's layout (64-byte vectors, 12-row
tiles) built for AVX2, so that its packing, tiles and edges run on any x86-64 CPU;
and the kernels built against musl. Each problem is one direction of one layer, forward
then backward, as the binding calls them.

A toolchain that is missing skips its test, unless LSTMFAST_REQUIRE_TOOLCHAINS=1 (CI,
which installs them) makes that a failure.
"""
import os
import platform
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from build_helpers import setup_flags
from layer_helpers import assert_close
from reference import init_params, rnn_backward, rnn_forward

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
SOURCES = [ROOT / "tests" / "c" / "driver.c"] + [
    CSRC / f for f in ("recurrence.c", "threads.c", "dispatch.c", "blas.c")]
CFLAGS = ["-O2", "-fno-math-errno", "-fno-trapping-math", "-pthread", "-Wno-psabi",
          f"-I{CSRC}"]
REQUIRED = os.environ.get("LSTMFAST_REQUIRE_TOOLCHAINS") == "1"
X86 = platform.machine() in ("x86_64", "AMD64")

CELLS = {"LSTM": 0, "GRU": 1, "RNN_TANH": 2, "RNN_RELU": 3}
RTOL = {4: 1e-5, 8: 1e-10}  # as the layer oracle tests (test_layers_oracle.py)


def _missing(what):
    if REQUIRED:
        pytest.fail(f"{what} (LSTMFAST_REQUIRE_TOOLCHAINS=1)")
    pytest.skip(what)


def _build(tmp_path, cc, variant, flags=(), run_prefix=()):
    if shutil.which(cc) is None:
        _missing(f"{cc} is not installed")
    exe = tmp_path / f"driver_{variant}"
    cmd = [cc, *CFLAGS, *flags, f"-DLF_VARIANT_{variant.upper()}",
           f"-DLF_HAVE_{variant.upper()}", *map(str, SOURCES), "-o", str(exe), "-lm"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stderr}"
    return [*run_prefix, str(exe)]


def _cases():
    """Sizes straddling every variant's vector width (4 to 16 elements) and tile rows
    (6, 12), every cell, both directions, lengths, projection, 1 and 2 threads."""
    rng = np.random.default_rng(7)
    out = []
    shapes = [(5, 13, 7, 17), (3, 25, 16, 40), (1, 3, 4, 9), (4, 1, 33, 16), (6, 12, 5, 3)]
    for mode in ("LSTM", "LSTM_PROJ", "GRU", "RNN_TANH", "RNN_RELU"):
        for i, (T, B, I, H) in enumerate(shapes):
            lengths = None
            if i % 2 == 0 and T > 1:
                lengths = np.sort(rng.integers(1, T + 1, B))[::-1].astype(np.int32)
                lengths[0] = T
            out.append(dict(mode=mode, T=T, B=B, I=I, H=H, lengths=lengths,
                            reverse=(i + len(mode)) % 2, threads=1 + i % 2,
                            bias=i != 3, P=max(1, H // 2) if mode == "LSTM_PROJ" else H))
    return out


def _problem(case, es, seed):
    """Inputs for the driver and the oracle's answer, for one direction of one layer."""
    rng = np.random.default_rng(seed)
    mode = "LSTM" if case["mode"].startswith("LSTM") else case["mode"].split("_")[0]
    nonlin = "relu" if case["mode"] == "RNN_RELU" else "tanh"
    T, B, I, H, P = case["T"], case["B"], case["I"], case["H"], case["P"]
    proj = P if P != H else 0
    # the oracle runs both directions; the other one gets no gradient, so dx is ours
    params = init_params(mode, I, H, 1, True, proj, case["bias"], rng)
    if nonlin == "relu" and case["bias"]:
        for k in params:
            if k.startswith("bias_"):
                params[k] += 0.3  # keep most relu units on (as layer_helpers does)
    dtype = np.float32 if es == 4 else np.float64
    params = {k: v.astype(dtype).astype(np.float64) for k, v in params.items()}
    x = rng.standard_normal((T, B, I)).astype(dtype).astype(np.float64)
    h0 = (0.5 * rng.standard_normal((2, B, P))).astype(dtype).astype(np.float64)
    c0 = (0.5 * rng.standard_normal((2, B, H))).astype(dtype).astype(np.float64)
    gy = rng.standard_normal((T, B, 2 * P)).astype(dtype).astype(np.float64)
    gh = rng.standard_normal((2, B, P)).astype(dtype).astype(np.float64)
    gc = rng.standard_normal((2, B, H)).astype(dtype).astype(np.float64)
    dr = case["reverse"]
    other = slice(0, P) if dr else slice(P, 2 * P)
    gy[:, :, other] = 0
    gh[1 - dr] = 0
    gc[1 - dr] = 0
    lengths = case["lengths"]
    y, h_n, c_n, cache = rnn_forward(mode, x, params, 1, True, proj, h0,
                                     c0 if mode == "LSTM" else None, lengths, nonlin)
    dx, dh0, dc0, grads = rnn_backward(cache, gy, gh, gc if mode == "LSTM" else None)

    steps = [T] * B if lengths is None else list(lengths)
    def pack(a):  # [T, B, F] -> the packed rows [N, F] (time-major, active prefix)
        return np.concatenate([a[t, [b for b in range(B) if steps[b] > t]] for t in range(T)])

    sfx = "_l0_reverse" if dr else "_l0"
    mine = slice(P, 2 * P) if dr else slice(0, P)
    hdr = [CELLS[case["mode"].replace("LSTM_PROJ", "LSTM")], T, B, I, H, P, dr,
           case["threads"], lengths is not None, case["bias"], es, 1]
    blob = [np.array(hdr, np.int32).tobytes()]
    if lengths is not None:
        blob.append(np.asarray(lengths, np.int32).tobytes())
    ins = [pack(x), params["weight_ih" + sfx], params["weight_hh" + sfx]]
    if case["bias"]:
        ins += [params["bias_ih" + sfx], params["bias_hh" + sfx]]
    if proj:
        ins.append(params["weight_hr" + sfx])
    ins.append(h0[dr])
    if mode == "LSTM":
        ins.append(c0[dr])
    ins += [pack(gy[:, :, mine]), gh[dr]]
    if mode == "LSTM":
        ins.append(gc[dr])
    blob += [np.ascontiguousarray(a, dtype).tobytes() for a in ins]
    expect = [("y", pack(y[:, :, mine])), ("h_n", h_n[dr])]
    if mode == "LSTM":
        expect.append(("c_n", c_n[dr]))
    expect += [("dx", pack(dx)), ("dh0", dh0[dr])]
    if mode == "LSTM":
        expect.append(("dc0", dc0[dr]))
    names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if case["bias"] else [])
    expect += [(f"grad {n}", grads[n + sfx]) for n in names + (["weight_hr"] if proj else [])]
    return b"".join(blob), expect


def _check(cmd, es, min_cases=20):
    """Runs every case through the driver in one process and compares with the oracle."""
    cases = _cases()
    problems = [_problem(c, es, seed) for seed, c in enumerate(cases)]
    res = subprocess.run(cmd, input=b"".join(p[0] for p in problems), capture_output=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr.decode()
    out = memoryview(res.stdout)
    dtype = np.float32 if es == 4 else np.float64
    pos = 0
    for case, (_, expect) in zip(cases, problems):
        status = int(np.frombuffer(out[pos:pos + 4], np.int32)[0])
        pos += 4
        assert status == 0, f"{case}: kernel returned {status}"
        for name, ref in expect:
            n = ref.size * es
            got = np.frombuffer(out[pos:pos + n], dtype).reshape(ref.shape)
            pos += n
            assert_close(got, ref, RTOL[es], f"{case['mode']} {case['T'], case['B'], case['I'], case['H']} "
                                             f"reverse={case['reverse']} {name}")
    assert pos == len(out), "the driver wrote more than expected"
    assert len(cases) >= min_cases
    return res.stderr.decode()


@pytest.mark.parametrize("es", [4, 8], ids=["float32", "float64"])
def test_avx512_layout_built_for_avx2(tmp_path, es):
    """The AVX-512 variant's source with its 64-byte vectors and 12-row tiles, encoded
    with whatever vector instructions this CPU has: every packing path, tile height and
    edge of the wide layout, checked where AVX-512 hardware is not at hand."""
    if not X86:
        pytest.skip("an x86-64 test")
    from lstmfast import _kernels
    march = setup_flags()[2] if _kernels.cpu_supports("avx2") else []
    cmd = _build(tmp_path, "gcc", "avx512",
                 [*march, "-DLF_VEC_BYTES=64", "-DLF_TILE_ROWS=12"])
    assert "avx512 kernels, 64-byte vectors, 12-row tiles" in _check(cmd, es)


@pytest.mark.parametrize("es", [4, 8], ids=["float32", "float64"])
def test_neon_under_qemu(tmp_path, es):
    qemu = shutil.which("qemu-aarch64") or shutil.which("qemu-aarch64-static")
    sysroot = Path("/usr/aarch64-linux-gnu")
    if qemu is None or not sysroot.is_dir():
        _missing("qemu-user or libc6-dev-arm64-cross is not installed")
    cmd = _build(tmp_path, "aarch64-linux-gnu-gcc", "neon", run_prefix=[qemu, "-L", str(sysroot)])
    assert "neon kernels, 16-byte vectors, 12-row tiles" in _check(cmd, es)


@pytest.mark.parametrize("variant", ["baseline", "avx2"])
def test_musl(tmp_path, variant):
    """The C core with musl's libc (Alpine, musllinux): no glibc-only call may remain."""
    if not X86:
        pytest.skip("an x86-64 test")
    from lstmfast import _kernels
    if not _kernels.cpu_supports(variant):
        pytest.skip(f"this CPU cannot run {variant}")
    cmd = _build(tmp_path, "musl-gcc", variant, setup_flags()[2] if variant == "avx2" else [])
    assert f"{variant} kernels" in _check(cmd, 4)
