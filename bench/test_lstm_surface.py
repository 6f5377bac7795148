"""The LSTM surface next to torch (cases in lstmfast/bench/surface.py): training steps of
torch programs with the drop-in or torch.nn.LSTM (a word-level language model, the
standard shapes with a linear head), variable lengths against packed sequences, the
single-step cell, and a 2-layer bidirectional LSTM with lengths through the numpy layer,
the lstmfast.torch drop-in and torch.nn.LSTM."""
import time

import pytest

from conftest import PAUSE, THREADS

torch = pytest.importorskip("torch", reason="torch is not installed: no peer to compare")
from lstmfast.bench import surface as _surface  # noqa: E402

torch.set_num_threads(THREADS)  # the peers of the other cases set it in their setup

_built = {}


def _case(index):
    if index not in _built:
        _built.clear()
        _built[index] = _surface.CASES[index][0]()
    return _built[index]


_LOOPS = 1 + len(_surface._standard_dropin_cases())  # the torch-loop cases come first


@pytest.mark.parametrize("index, impl", [
    *[(i, impl) for i in range(_LOOPS) for impl in ("lstmfast.torch.LSTM", "torch.nn.LSTM")],
    (_LOOPS, "lstmfast (lengths)"), (_LOOPS, "lstmfast (padded)"), (_LOOPS, "torch (packed)"),
    (_LOOPS, "torch (padded)"),
    (_LOOPS + 1, "lstmfast.LSTM"), (_LOOPS + 1, "lstmfast.torch.LSTM"),
    (_LOOPS + 1, "torch.nn.LSTM"),
    (_LOOPS + 2, "lstmfast.LSTMCell"), (_LOOPS + 2, "torch.nn.LSTMCell"),
    (_LOOPS + 3, "lstmfast.LSTMCell"), (_LOOPS + 3, "torch.nn.LSTMCell")])
def test_surface(benchmark, index, impl):
    fns, group = _case(index)
    fns[impl]()
    time.sleep(PAUSE)   # let the previous implementation's idle threads go to sleep
    benchmark.group = group
    benchmark(fns[impl])
