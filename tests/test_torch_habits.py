"""The numpy API where a PyTorch user's habits lead: parameters() and named_parameters()
as in torch (with the gradient beside each parameter), optimizers over parameters,
load_state_dict(strict=), zero_grad(set_to_none=), unbatched 2-d input, forget_bias."""
import numpy as np
import pytest

import lstmfast
from lstmfast import optim
from lstmfast.nn import Linear



def _layer(**kw):
    return lstmfast.LSTM(3, 4, seed=0, dtype=np.float64, **kw)


def test_parameters_and_named_parameters_as_torch():
    m = _layer(num_layers=2)
    pairs = list(m.named_parameters())
    assert [n for n, _ in pairs] == list(m.params)
    for (name, p), q in zip(pairs, m.parameters()):
        assert isinstance(p, np.ndarray) and np.shares_memory(p, m.params[name])
        assert p.grad is m.grads[name]
        np.testing.assert_array_equal(p, q)
    name, p = pairs[0]
    p[...] = 1.5  # writes the layer's parameter
    assert np.all(m.params[name] == 1.5)
    assert type(p * 2) is np.ndarray  # arithmetic gives values, not parameters
    assert dict(m.named_grads()) == m.grads


def test_optimizers_take_parameters_like_torch():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 2, 3))
    a, b = _layer(), _layer()
    opt_a = optim.Adam(a.parameters(), lr=0.01)
    opt_b = optim.Adam(b, lr=0.01)
    for _ in range(3):
        for m, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad(set_to_none=True)
            y, _ = m(x)
            m.backward(y)
            optim.clip_grad_norm(m.parameters() if m is a else m, 0.5)
            opt.step()
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    # a list mixing modules and parameters; each parameter once
    head = Linear(4, 2, dtype=np.float64, seed=0)
    opt = optim.SGD([a, *head.parameters(), *a.parameters()], lr=0.1)
    assert len(opt.param_list) == len(a.params) + len(head.params)


def test_load_state_dict_strict_false_reports_like_torch():
    m = _layer()
    src = {k: v + 1 for k, v in m.params.items()}
    del src["bias_hh_l0"]
    src["extra"] = np.zeros(3)
    with pytest.raises(KeyError, match="missing keys \\['bias_hh_l0'\\]"):
        m.load_state_dict(src)
    before = m.params["bias_hh_l0"].copy()
    result = m.load_state_dict(src, strict=False)
    assert result.missing_keys == ["bias_hh_l0"] and result.unexpected_keys == ["extra"]
    missing, unexpected = result
    assert missing == ["bias_hh_l0"]
    np.testing.assert_array_equal(m.params["weight_ih_l0"], src["weight_ih_l0"])
    np.testing.assert_array_equal(m.params["bias_hh_l0"], before)
    with pytest.raises(ValueError, match="has shape"):  # shapes are checked either way
        m.load_state_dict({"weight_ih_l0": np.zeros((2, 2))}, strict=False)


def test_zero_grad_takes_set_to_none():
    m = _layer()
    y, _ = m(np.ones((2, 1, 3)))
    m.backward(np.ones_like(y))
    m.zero_grad(set_to_none=False)
    assert all(np.all(g == 0) for g in m.grads.values())
    m.zero_grad(set_to_none=True)
    assert all(isinstance(g, np.ndarray) for g in m.grads.values())


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_unbatched_input_as_torch(kind, batch_first):
    """x [T, input_size] and state [L*D, F]: the batched answer for a batch of one,
    whatever batch_first says (as torch)."""
    rng = np.random.default_rng(1)
    m = getattr(lstmfast, kind)(3, 4, 2, bidirectional=True, batch_first=batch_first,
                                dtype=np.float64, seed=0)
    x = rng.standard_normal((5, 3))
    shape = (4, 4)
    state = (rng.standard_normal(shape), rng.standard_normal(shape)) if kind == "LSTM" \
        else rng.standard_normal(shape)
    y, fin = m(x, state)
    xb = x[None] if batch_first else x[:, None]
    sb = tuple(s[:, None] for s in state) if kind == "LSTM" else state[:, None]
    yb, finb = m(xb, sb)
    assert y.shape == (5, 8)
    np.testing.assert_array_equal(y, yb[0] if batch_first else yb[:, 0])
    for a, b in zip(fin if kind == "LSTM" else [fin], finb if kind == "LSTM" else [finb]):
        assert a.shape == (4, 4)
        np.testing.assert_array_equal(a, b[:, 0])
    dy = rng.standard_normal(y.shape)
    m.zero_grad()
    m(x, state)
    dx, dstate = m.backward(dy)
    g1 = {k: v.copy() for k, v in m.grads.items()}
    m.zero_grad()
    m(xb, sb)
    dxb, _ = m.backward(dy[None] if batch_first else dy[:, None])
    assert dx.shape == x.shape
    np.testing.assert_array_equal(dx, dxb[0] if batch_first else dxb[:, 0])
    for k in g1:
        np.testing.assert_array_equal(g1[k], m.grads[k])
    with pytest.raises(ValueError, match="lengths are for a batch"):
        m(x, lengths=[5])
    with pytest.raises(ValueError, match="must be 2-d"):
        m(x, sb)


def test_unbatched_matches_torch():
    torch = pytest.importorskip("torch")
    ref = torch.nn.LSTM(3, 4, dtype=torch.float64)
    m = lstmfast.LSTM.from_torch(ref)
    x = np.random.default_rng(2).standard_normal((6, 3))
    y, (h, c) = m(x)
    ty, (th, tc) = ref(torch.from_numpy(x))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12, atol=1e-13)
    assert h.shape == tuple(th.shape) == (1, 4)


def test_forget_bias_option():
    plain = _layer(num_layers=2, bidirectional=True)
    raised = _layer(num_layers=2, bidirectional=True, forget_bias=1.0)
    H = 4
    for k in plain.params:
        want = plain.params[k].copy()
        if k.startswith("bias_hh"):
            want[H:2 * H] += 1.0
        np.testing.assert_array_equal(raised.params[k], want)
    with pytest.raises(ValueError, match="needs bias=True"):
        _layer(bias=False, forget_bias=1.0)
    with pytest.raises(ValueError, match="finite"):
        _layer(forget_bias=float("nan"))
