"""The gradient-flow diagnostic: ||dL/dh_t|| per timestep, recorded during backward."""
import numpy as np
import pytest

import lstmfast


def _per_step_grad_norms(cell_cls, params, x, dy, reverse=False):
    """||dL/dh_t|| by explicit BPTT over an LSTMCell/GRUCell/RNNCell loop (the oracle)."""
    T, B, _ = x.shape
    cell = cell_cls(x.shape[2], params["weight_hh"].shape[1], dtype=np.float64)
    cell.load_state_dict(params)
    order = list(reversed(range(T))) if reverse else list(range(T))
    state = None
    for t in order:
        state = cell(x[t], state)
    H = params["weight_hh"].shape[1]
    lstm = cell_cls is lstmfast.LSTMCell
    dh, dc = np.zeros((B, H)), np.zeros((B, H))
    norms = np.zeros(T)
    for t in reversed(order):
        dh = dh + dy[t]
        norms[t] = np.linalg.norm(dh)
        if lstm:
            _, (dh, dc) = cell.backward(dh, dc)
        else:
            _, dh = cell.backward(dh)
    return norms


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_grad_norms_match_explicit_bptt(kind):
    rng = np.random.default_rng(0)
    layer = getattr(lstmfast, kind)(3, 4, bidirectional=True, dtype=np.float64, seed=1)
    layer.record_grad_norms = True
    x = rng.standard_normal((6, 2, 3))
    y, _ = layer(x)
    dy = rng.standard_normal(y.shape)
    layer.backward(dy)
    assert layer.grad_norms.shape == (2, 6)
    cell_cls = getattr(lstmfast, kind + "Cell")
    for d, sfx in enumerate(["_l0", "_l0_reverse"]):
        params = {k[: -len(sfx)]: v for k, v in layer.params.items() if k.endswith(sfx)}
        ref = _per_step_grad_norms(cell_cls, params, x, dy[:, :, d * 4:(d + 1) * 4], d == 1)
        np.testing.assert_allclose(layer.grad_norms[d], ref, rtol=1e-12)


def test_grad_norms_off_by_default_and_vanish_for_rnn():
    layer = lstmfast.RNN(2, 8, dtype=np.float64, seed=0)
    x = np.random.default_rng(1).standard_normal((40, 4, 2))
    y, _ = layer(x)
    layer.backward(np.zeros_like(y))
    assert layer.grad_norms is None
    layer.record_grad_norms = True
    y, _ = layer(x)
    dy = np.zeros_like(y)
    dy[-1] = 1.0                       # loss on the last step only
    layer.backward(dy)
    n = layer.grad_norms[0]
    assert n[-1] == pytest.approx(np.sqrt(4 * 8))
    assert n[0] < 1e-3 * n[-1]         # small weights: the gradient vanishes going back
