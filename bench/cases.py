"""Parameters for the benchmark groups: (shape, implementation) pairs a peer can run.

Peers that cannot run a case at all (onnxruntime has no training step and no float64
kernels) are left out; peers that are merely not installed stay in and are skipped at run
time with the reason.
"""
import numpy as np
import pytest

from lstmfast.bench.peers import PEERS
from lstmfast.bench import shape_name


def cases(cell, mode, shapes, dtype=np.float32):
    return [pytest.param(shape, impl, id=f"{shape_name(shape)}-{impl}")
            for shape in shapes for impl, cls in PEERS.items()
            if cls.supports(cell, mode, dtype)]
