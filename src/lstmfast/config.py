"""What this build of lstmfast runs on this machine: ``lstmfast.show_config()``."""
from __future__ import annotations

import os
import platform
import re
from typing import Any, Dict, Optional

from . import _kernels
from .threads import get_num_threads

__all__ = ["show_config"]

_ISA_TEXT = {
    "avx512": "x86-64-v4: AVX-512 F/BW/CD/DQ/VL, 64-byte vectors",
    "avx2": "x86-64-v3: AVX2 and FMA, 32-byte vectors",
    "neon": "aarch64: NEON, 16-byte vectors",
    "baseline": "the architecture's baseline (x86-64: SSE2), 16-byte vectors",
}


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        m = re.search(r"^(?:model name|Model|CPU part)\s*:\s*(.+)$", text, re.M)
        if m:
            return m.group(1).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _config() -> Dict[str, Any]:
    from . import __version__
    built = _kernels.compiled_isas()
    isas = ("avx512", "avx2", "neon", "baseline")
    return {
        "lstmfast": __version__,
        "kernels": {
            "selected": _kernels.ISA,
            "reason": _kernels.ISA_REASON,
            "LSTMFAST_ISA": os.environ.get("LSTMFAST_ISA"),
            "compiler": _kernels.compiler(),
            "compiled": {n: {"flags": _ISA_TEXT[n], **_kernels.variant_info(n)} for n in built},
        },
        "cpu": {
            "name": _cpu_name(),
            "machine": platform.machine(),
            "supports": {n: _kernels.cpu_supports(n) for n in isas},
        },
        "blas": {
            "library": "scipy's bundled BLAS (scipy.linalg.cython_blas)",
            **_kernels.blas_info(),
            "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        },
        "threads": {
            "per_call": get_num_threads(),
            "cores_available": len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        },
    }


def show_config(mode: str = "stdout") -> Optional[Dict[str, Any]]:
    """Print (mode="stdout") or return (mode="dicts") the kernel variants this build
    holds, the one selected and why, what the CPU supports, the BLAS library with its
    version and core, and the threads a call may use.

    The variant is chosen at import: the widest one that is compiled and that the CPU
    and OS support, unless ``LSTMFAST_ISA=avx512|avx2|neon|baseline`` forces one.
    """
    if mode not in ("stdout", "dicts"):
        raise ValueError(f"mode must be 'stdout' or 'dicts', got {mode!r}")
    cfg = _config()
    if mode == "dicts":
        return cfg
    k, cpu, blas, th = cfg["kernels"], cfg["cpu"], cfg["blas"], cfg["threads"]
    lines = [f"lstmfast {cfg['lstmfast']}",
             f"kernels:  {k['selected']} ({k['reason']}); built by {k['compiler']}"]
    for name, v in k["compiled"].items():
        mark = "*" if name == k["selected"] else " "
        lines.append(f"  {mark} {name:<9} {v['flags']}; tiles of {v['tile_rows']} rows; "
                     f"{'runs here' if cpu['supports'][name] else 'not on this CPU'}")
    lines.append(f"cpu:      {cpu['name']} ({cpu['machine']}); supports "
                 + ", ".join(n for n, ok in cpu["supports"].items() if ok))
    lines.append(f"blas:     {blas['config'] or 'not OpenBLAS (no version known)'}"
                 + (f"; core {blas['core']}" if blas["core"] else "")
                 + (f"; OPENBLAS_CORETYPE={blas['OPENBLAS_CORETYPE']}"
                    if blas["OPENBLAS_CORETYPE"] else ""))
    lines.append(f"threads:  up to {th['per_call']} per call; {th['cores_available']} cores "
                 "available")
    print("\n".join(lines))
    return None
