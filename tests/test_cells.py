"""LSTMCell / GRUCell / RNNCell against the oracle, torch, and the layers."""
import numpy as np
import pytest

import lstmfast
import reference as R

CELLS = [("LSTM", lstmfast.LSTMCell, {}), ("GRU", lstmfast.GRUCell, {}),
         ("RNN", lstmfast.RNNCell, {"nonlinearity": "tanh"}),
         ("RNN", lstmfast.RNNCell, {"nonlinearity": "relu"})]
IDS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def _ref_names(grads):
    return {k: k.replace("weight", "w").replace("bias", "b") for k in grads}


@pytest.mark.parametrize("mode,cls,kw", CELLS, ids=IDS)
@pytest.mark.parametrize("bias", [True, False])
def test_cell_matches_oracle_float64(rng, mode, cls, kw, bias):
    cell = cls(3, 5, bias=bias, dtype=np.float64, seed=0, **kw)
    p = cell.params
    x, h, c = (rng.standard_normal((2, n)) for n in (3, 5, 5))
    lstm = mode == "LSTM"
    out = cell(x, (h, c)) if lstm else cell(x, h)
    hr, cr, cache = R.cell_forward(mode, x, h, c if lstm else None, p["weight_ih"],
                                   p["weight_hh"], p.get("bias_ih"), p.get("bias_hh"),
                                   nonlinearity=kw.get("nonlinearity", "tanh"))
    dh, dc = rng.standard_normal((2, 5)), rng.standard_normal((2, 5))
    if lstm:
        dx, (dh0, dc0) = cell.backward(dh, dc)
        np.testing.assert_allclose(out[1], cr, rtol=1e-12, atol=1e-14)
    else:
        dx, dh0 = cell.backward(dh)
    rdx, rdh, rdc, rg = R.cell_backward(cache, dh, dc if lstm else None)
    # one step in float64: only rounding differences, a few ulps
    np.testing.assert_allclose(out[0] if lstm else out, hr, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dx, rdx, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dh0, rdh, rtol=1e-12, atol=1e-14)
    if lstm:
        np.testing.assert_allclose(dc0, rdc, rtol=1e-12, atol=1e-14)
    for k, rk in _ref_names(cell.grads).items():
        np.testing.assert_allclose(cell.grads[k], rg[rk], rtol=1e-12, atol=1e-14, err_msg=k)


@pytest.mark.parametrize("mode,cls,kw", CELLS[:3], ids=IDS[:3])
def test_cell_loop_bptt_equals_layer(rng, mode, cls, kw):
    """A loop of cell steps, then backward steps in reverse, is the layer's BPTT."""
    layer_cls = {"LSTM": lstmfast.LSTM, "GRU": lstmfast.GRU, "RNN": lstmfast.RNN}[mode]
    cell = cls(4, 6, dtype=np.float64, seed=3, **kw)
    layer = layer_cls(4, 6, dtype=np.float64, seed=3)
    layer.load_state_dict({k + "_l0": v for k, v in cell.params.items()})
    T, B = 5, 3
    x = rng.standard_normal((T, B, 4))
    dy = rng.standard_normal((T, B, 6))
    y, _ = layer(x)
    dx_layer, _ = layer.backward(dy)

    state = (None, None) if mode == "LSTM" else None
    hs = []
    for t in range(T):
        state = cell(x[t], None if t == 0 else state)
        hs.append(state[0] if mode == "LSTM" else state)
    np.testing.assert_allclose(np.stack(hs), y, rtol=1e-12, atol=1e-14)
    dh = np.zeros((B, 6))
    dc = np.zeros((B, 6))
    dxs = [None] * T
    for t in reversed(range(T)):
        if mode == "LSTM":
            dxs[t], (dh, dc) = cell.backward(dh + dy[t], dc)
        else:
            dxs[t], dh = cell.backward(dh + dy[t])
    np.testing.assert_allclose(np.stack(dxs), dx_layer, rtol=1e-11, atol=1e-13)
    for k in cell.grads:
        np.testing.assert_allclose(cell.grads[k], layer.grads[k + "_l0"], rtol=1e-11,
                                   atol=1e-13, err_msg=k)


@pytest.mark.parametrize("mode,cls,kw", CELLS, ids=IDS)
def test_cell_backward_ignores_reused_buffers(rng, mode, cls, kw):
    """A loop that refills one input buffer and one state buffer at every step (as a
    streaming loop does) backpropagates what each step saw, as with fresh arrays."""
    T, B, I, H = 4, 3, 4, 5
    xs, dys = rng.standard_normal((T, B, I)), rng.standard_normal((T, B, H))
    lstm = mode == "LSTM"
    results = []
    for reuse in (False, True):
        cell = cls(I, H, dtype=np.float64, seed=3, **kw)
        xbuf, sbuf = np.empty((B, I)), [np.zeros((B, H)) for _ in range(2 if lstm else 1)]
        state = [np.zeros((B, H)) for _ in sbuf]
        for t in range(T):
            x = xs[t].copy()
            if reuse:
                xbuf[...] = x
                for b, s in zip(sbuf, state):
                    b[...] = s
                x, state = xbuf, sbuf
            new = cell(x, tuple(state) if lstm else state[0])
            state = list(new) if lstm else [new]
        dh, dc = np.zeros((B, H)), np.zeros((B, H))
        dxs = []
        for t in reversed(range(T)):
            if lstm:
                dx, (dh, dc) = cell.backward(dh + dys[t], dc)
            else:
                dx, dh = cell.backward(dh + dys[t])
            dxs.append(dx)
        results.append((dxs, {k: g.copy() for k, g in cell.grads.items()}))
    (dx0, g0), (dx1, g1) = results
    np.testing.assert_array_equal(np.stack(dx1), np.stack(dx0))
    for k in g0:
        np.testing.assert_array_equal(g1[k], g0[k], err_msg=k)


def test_cell_unbatched_input(rng):
    cell = lstmfast.LSTMCell(3, 4, dtype=np.float64, seed=0)
    x = rng.standard_normal(3)
    h, c = cell(x)
    hb, cb = cell(x[None])
    assert h.shape == (4,) and c.shape == (4,)
    np.testing.assert_array_equal(h, hb[0])
    np.testing.assert_array_equal(c, cb[0])


def test_cell_matches_torch(rng):
    torch = pytest.importorskip("torch")
    for mode, cls, tcls in [("LSTM", lstmfast.LSTMCell, torch.nn.LSTMCell),
                            ("GRU", lstmfast.GRUCell, torch.nn.GRUCell),
                            ("RNN", lstmfast.RNNCell, torch.nn.RNNCell)]:
        tc = tcls(5, 7).double()
        cell = cls(5, 7, dtype=np.float64)
        cell.load_state_dict(tc.state_dict())
        x = rng.standard_normal((4, 5))
        h = rng.standard_normal((4, 7))
        c = rng.standard_normal((4, 7))
        tx = torch.tensor(x, requires_grad=True)
        th = torch.tensor(h, requires_grad=True)
        tcs = torch.tensor(c, requires_grad=True)
        dh = rng.standard_normal((4, 7))
        if mode == "LSTM":
            th1, tc1 = tc(tx, (th, tcs))
            dc = rng.standard_normal((4, 7))
            (th1 * torch.tensor(dh) + tc1 * torch.tensor(dc)).sum().backward()
            h1, c1 = cell(x, (h, c))
            dx, (dh0, dc0) = cell.backward(dh, dc)
            np.testing.assert_allclose(c1, tc1.detach().numpy(), rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(dc0, tcs.grad.numpy(), rtol=1e-12, atol=1e-14)
        else:
            th1 = tc(tx, th)
            (th1 * torch.tensor(dh)).sum().backward()
            h1 = cell(x, h)
            dx, dh0 = cell.backward(dh)
        np.testing.assert_allclose(h1, th1.detach().numpy(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(dh0, th.grad.numpy(), rtol=1e-12, atol=1e-14)
        for name, p in tc.named_parameters():
            np.testing.assert_allclose(cell.grads[name], p.grad.numpy(), rtol=1e-12,
                                       atol=1e-14, err_msg=f"{mode} {name}")


@pytest.mark.parametrize("mode,cls,kw", CELLS, ids=IDS)
def test_cell_nan_input_propagates(rng, mode, cls, kw):
    cell = cls(3, 5, dtype=np.float32, seed=0, **kw)
    x = rng.standard_normal((2, 3)).astype(np.float32)
    x[0, 1] = np.nan
    h = cell(x)[0] if mode == "LSTM" else cell(x)
    assert np.all(np.isnan(h[0])) and np.all(np.isfinite(h[1]))


@pytest.mark.parametrize("mode,cls,kw", CELLS, ids=IDS)
def test_cell_empty_batch(mode, cls, kw):
    cell = cls(3, 5, dtype=np.float64, seed=0, **kw)
    out = cell(np.zeros((0, 3)))
    outs = out if mode == "LSTM" else (out,)
    assert all(o.shape == (0, 5) for o in outs)
    back = cell.backward(*([np.zeros((0, 5))] * len(outs)))
    assert back[0].shape == (0, 3)
    assert all(np.all(g == 0) for g in cell.grads.values())


def test_cell_errors(rng):
    cell = lstmfast.LSTMCell(3, 4, seed=0)
    with pytest.raises(ValueError, match=r"\[batch, 3\]"):
        cell(np.zeros((2, 5)))
    with pytest.raises(TypeError, match=r"tuple \(h, c\)"):
        cell(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"h must have shape \(2, 4\)"):
        cell(np.zeros((2, 3)), (np.zeros((3, 4)), np.zeros((2, 4))))
    with pytest.raises(RuntimeError, match="no forward left"):
        cell.backward(np.zeros((2, 4)))
    cell(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"dh must have shape \(2, 4\)"):
        cell.backward(np.zeros((3, 4)))
    dx, _ = cell.backward(np.ones((2, 4)))   # the failed call left the pending step intact
    assert dx.shape == (2, 3)
    cell.eval()
    cell(np.zeros((2, 3)))
    with pytest.raises(RuntimeError, match="eval mode"):
        cell.backward(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="nonlinearity"):
        lstmfast.RNNCell(3, 4, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="hidden_size must be >= 1"):
        lstmfast.GRUCell(3, 0)
