"""The rest of the LSTM surface next to torch: variable lengths (against torch's packed
sequences), the single-step cell (per-call overhead), and a 2-layer bidirectional LSTM
with lengths through the numpy layer, the lstmfast.torch drop-in and torch.nn.LSTM.
Outputs are checked against torch before timing, as the peers are in _peers.py."""
import time

import numpy as np
import pytest

import lstmfast
from conftest import PAUSE

torch = pytest.importorskip("torch", reason="torch is not installed: no peer to compare")
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

import lstmfast.torch as lt  # noqa: E402


def _bench(benchmark, fn, group, **info):
    fn()
    time.sleep(PAUSE)   # let the previous implementation's idle threads go to sleep
    benchmark.group = group
    benchmark.extra_info.update(info)
    benchmark(fn)


def _close(a, b, tol=1e-4):
    a, b = (np.asarray(v.detach() if hasattr(v, "detach") else v) for v in (a, b))
    assert np.abs(a - b).max() <= tol * max(1.0, np.abs(b).max())


# --- variable lengths: T=500, B=32, H=256, lengths uniform in [1, T] --------------------
T, B, H = 500, 32, 256
_rng = np.random.default_rng(0)
LENGTHS = _rng.integers(1, T + 1, B)
X = _rng.standard_normal((T, B, H)).astype(np.float32)


@pytest.fixture(scope="module")
def length_pair():
    ref = torch.nn.LSTM(H, H)
    ours = lstmfast.LSTM(H, H)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


@pytest.mark.parametrize("impl", ["lstmfast-lengths", "lstmfast-padded", "torch-packed",
                                  "torch-padded"])
def test_lengths_inference(benchmark, length_pair, impl):
    ours, ref = length_pair
    ours.eval()
    tx, tl = torch.from_numpy(X), torch.from_numpy(LENGTHS)

    def torch_packed():
        with torch.inference_mode():
            y, _ = ref(pack_padded_sequence(tx, tl, enforce_sorted=False))
            return pad_packed_sequence(y, total_length=T)[0]

    def torch_padded():
        with torch.inference_mode():
            return ref(tx)[0]

    fns = {"lstmfast-lengths": lambda: ours(X, lengths=LENGTHS)[0],
           "lstmfast-padded": lambda: ours(X)[0],
           "torch-packed": torch_packed, "torch-padded": torch_padded}
    if impl == "lstmfast-lengths":
        _close(fns[impl](), torch_packed())
    _bench(benchmark, fns[impl], "lstm infer lengths T500_B32_H256",
           valid_fraction=float(LENGTHS.sum() / (T * B)))


# --- the single-step cell: per-call overhead ---------------------------------------------
@pytest.mark.parametrize("hidden", [128, 512])
@pytest.mark.parametrize("impl", ["lstmfast", "torch"])
def test_cell_step(benchmark, impl, hidden):
    ref = torch.nn.LSTMCell(hidden, hidden)
    cell = lstmfast.LSTMCell(hidden, hidden)
    cell.load_state_dict(ref.state_dict())
    cell.eval()
    x = np.ones((1, hidden), np.float32)
    state = (np.zeros((1, hidden), np.float32),) * 2
    tx, tstate = torch.from_numpy(x), tuple(torch.from_numpy(s) for s in state)

    def torch_step():
        with torch.inference_mode():
            return ref(tx, tstate)[0]

    fn = (lambda: cell(x, state)[0]) if impl == "lstmfast" else torch_step
    _close(cell(x, state)[0], torch_step())
    _bench(benchmark, fn, f"lstmcell step B1_H{hidden}")


# --- 2-layer bidirectional LSTM with lengths: a training step -----------------------------
@pytest.mark.parametrize("impl", ["lstmfast", "lstmfast.torch", "torch"])
def test_bidirectional_lengths_train(benchmark, impl):
    T2, B2, H2 = 100, 32, 256
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T2, B2, H2)).astype(np.float32)
    lengths = rng.integers(1, T2 + 1, B2)
    ref = torch.nn.LSTM(H2, H2, num_layers=2, bidirectional=True)
    dy = np.zeros((T2, B2, 2 * H2), np.float32)
    for b, n in enumerate(lengths):
        dy[:n, b] = 1.0
    tx, tdy, tl = torch.from_numpy(x), torch.from_numpy(dy), torch.from_numpy(lengths)

    def module_step(module):
        def step():
            module.zero_grad()
            y, _ = module(pack_padded_sequence(tx, tl, enforce_sorted=False))
            y = pad_packed_sequence(y, total_length=T2)[0]
            y.backward(tdy)
            return y
        return step

    if impl == "lstmfast":
        ours = lstmfast.LSTM(H2, H2, 2, bidirectional=True)
        ours.load_state_dict(ref.state_dict())

        def fn():
            ours.zero_grad()
            y, _ = ours(x, lengths=lengths)
            ours.backward(dy)
            return y
    elif impl == "lstmfast.torch":
        dropin = lt.LSTM(H2, H2, num_layers=2, bidirectional=True)
        dropin.load_state_dict(ref.state_dict())
        fn = module_step(dropin)
    else:
        fn = module_step(ref)
    _close(fn(), module_step(ref)())
    _bench(benchmark, fn, "lstm 2-layer bidirectional lengths train T100_B32_H256")
