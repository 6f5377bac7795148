"""The LSTM surface next to torch (cases in lstmfast/_surface.py): variable lengths
against packed sequences, the single-step cell, and a 2-layer bidirectional LSTM with
lengths through the numpy layer, the lstmfast.torch drop-in and torch.nn.LSTM."""
import time

import pytest

from conftest import PAUSE, THREADS

torch = pytest.importorskip("torch", reason="torch is not installed: no peer to compare")
from lstmfast import _surface  # noqa: E402

torch.set_num_threads(THREADS)  # the peers of the other cases set it in their setup

_built = {}


def _case(index):
    if index not in _built:
        _built.clear()
        _built[index] = _surface.CASES[index]()
    return _built[index]


@pytest.mark.parametrize("index, impl", [
    (0, "lstmfast (lengths)"), (0, "lstmfast (padded)"), (0, "torch (packed)"),
    (0, "torch (padded)"),
    (1, "lstmfast.LSTM"), (1, "lstmfast.torch.LSTM"), (1, "torch.nn.LSTM"),
    (2, "lstmfast.LSTMCell"), (2, "torch.nn.LSTMCell"),
    (3, "lstmfast.LSTMCell"), (3, "torch.nn.LSTMCell")])
def test_surface(benchmark, index, impl):
    fns, group = _case(index)
    fns[impl]()
    time.sleep(PAUSE)   # let the previous implementation's idle threads go to sleep
    benchmark.group = group
    benchmark(fns[impl])
