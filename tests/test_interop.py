"""The PyTorch drop-in modules, from_torch/to_torch, and Keras weight import/export."""
import subprocess
import sys

import numpy as np
import pytest

import lstmfast


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def test_import_does_not_need_torch():
    code = "import sys, lstmfast; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_keras_round_trip(rng):
    m = lstmfast.LSTM(3, 5, 2, bidirectional=True, dtype=np.float64, seed=0)
    weights = m.keras_weights()
    assert [w.shape for w in weights[0]] == [(3, 20), (5, 20), (20,)] * 2
    assert [w.shape for w in weights[1]] == [(10, 20), (5, 20), (20,)] * 2
    m2 = lstmfast.LSTM.from_keras_weights(weights, bidirectional=True, dtype=np.float64)
    x = rng.standard_normal((4, 2, 3))
    # the round trip folds bias_hh into bias_ih: equal up to one rounding of the bias sum
    np.testing.assert_allclose(m2(x)[0], m(x)[0], rtol=1e-13, atol=1e-14)
    single = lstmfast.LSTM(3, 4, bias=False, dtype=np.float64, seed=1)
    w = single.keras_weights()[0]
    assert len(w) == 2
    back = lstmfast.LSTM.from_keras_weights(w, dtype=np.float64)
    np.testing.assert_array_equal(back(x)[0], single(x)[0])


def test_keras_weights_follow_keras_equations(rng):
    """kernel [I,4H], recurrent_kernel [H,4H], gates i, f, c, o: Keras' LSTM step by hand."""
    m = lstmfast.LSTM(3, 4, dtype=np.float64, seed=2)
    kernel, recurrent, bias = m.keras_weights()[0]
    x = rng.standard_normal((1, 2, 3))
    z = x[0] @ kernel + bias           # zero initial state
    H = 4
    sig = lambda a: 1 / (1 + np.exp(-a))
    i, c_hat, o = sig(z[:, :H]), np.tanh(z[:, 2 * H:3 * H]), sig(z[:, 3 * H:])
    h = o * np.tanh(i * c_hat)
    np.testing.assert_allclose(m(x)[0][0], h, rtol=1e-12)


def test_keras_bad_weights():
    with pytest.raises(ValueError, match="kernel, recurrent_kernel, bias"):
        lstmfast.LSTM.from_keras_weights([np.zeros((3, 8))])
    with pytest.raises(ValueError, match=r"kernel \[I, 4H\]"):
        lstmfast.LSTM.from_keras_weights([np.zeros((3, 8)), np.zeros((3, 8)), np.zeros(8)])
    with pytest.raises(ValueError, match="projection"):
        lstmfast.LSTM(3, 4, proj_size=2).keras_weights()


# ---------------------------------------------------------------------------- torch
torch = pytest.importorskip("torch")
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

import lstmfast.torch as lt  # noqa: E402

KINDS = [("LSTM", {}), ("LSTM", {"proj_size": 2}), ("GRU", {}), ("RNN", {}),
         ("RNN", {"nonlinearity": "relu"})]
KIND_IDS = ["lstm", "lstm_proj", "gru", "rnn_tanh", "rnn_relu"]


def _pair(kind, kw, dtype, **cfg):
    ours = getattr(lt, kind)(4, 5, **cfg, **kw, dtype=dtype)
    ref = getattr(torch.nn, kind)(4, 5, **cfg, **kw, dtype=dtype)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


def _run(module, x, lengths, batch_first, with_state, gen):
    x = x.clone().requires_grad_(True)
    module.zero_grad()
    inp = x
    if lengths is not None:
        inp = pack_padded_sequence(x, torch.tensor(lengths), batch_first=batch_first,
                                   enforce_sorted=False)
    hx = None
    if with_state:
        D = 2 if module.bidirectional else 1
        B = x.shape[0] if batch_first else x.shape[1]
        P = getattr(module, "proj_size", 0) or module.hidden_size
        h0 = torch.randn(module.num_layers * D, B, P, generator=gen, dtype=x.dtype,
                         requires_grad=True)
        hx = h0
        if isinstance(module, (lt.LSTM, torch.nn.LSTM)):
            c0 = torch.randn(module.num_layers * D, B, module.hidden_size, generator=gen,
                             dtype=x.dtype, requires_grad=True)
            hx = (h0, c0)
    y, st = module(inp, hx)
    if lengths is not None:
        y, _ = pad_packed_sequence(y, batch_first=batch_first)
    finals = st if isinstance(st, tuple) else (st,)
    weight = torch.randn(y.shape, generator=gen, dtype=y.dtype)
    loss = (y * weight).sum() + sum((f * f).sum() for f in finals)
    loss.backward()
    leaves = [x] + (list(hx) if isinstance(hx, tuple) else [hx] if hx is not None else [])
    return ([y.detach()] + [f.detach() for f in finals] + [t.grad for t in leaves] +
            [p.grad for p in module.parameters()])


@pytest.mark.parametrize("kind,kw", KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("layers,bidi", [(1, False), (2, True), (3, False)],
                         ids=["1", "2bi", "3"])
@pytest.mark.parametrize("lengths", [None, [5, 2, 4]], ids=["padded", "packed"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tb", "bt"])
@pytest.mark.parametrize("with_state", [False, True], ids=["nostate", "state"])
def test_dropin_matches_torch_float64(kind, kw, layers, bidi, lengths, batch_first,
                                      with_state):
    ours, ref = _pair(kind, kw, torch.float64, num_layers=layers, bidirectional=bidi,
                      batch_first=batch_first)
    x = torch.randn((3, 5, 4) if batch_first else (5, 3, 4), dtype=torch.float64,
                    generator=torch.Generator().manual_seed(0))
    a = _run(ours, x, lengths, batch_first, with_state, torch.Generator().manual_seed(1))
    b = _run(ref, x, lengths, batch_first, with_state, torch.Generator().manual_seed(1))
    assert len(a) == len(b)
    for u, v in zip(a, b):
        # float64, different summation orders: agreement to ~1e-13 of the values' scale
        torch.testing.assert_close(u, v, rtol=1e-11, atol=1e-12)


def test_dropin_float32_and_unbatched():
    ours, ref = _pair("LSTM", {}, torch.float32, num_layers=2)
    x = torch.randn(6, 4)
    y1, (h1, c1) = ours(x)
    y2, (h2, c2) = ref(x)
    assert y1.shape == (6, 5) and h1.shape == (2, 5)
    # float32 through 2 layers and 6 steps: a few ulps of accumulated rounding
    torch.testing.assert_close(y1, y2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c1, c2, rtol=1e-5, atol=1e-6)


def test_dropin_state_dict_and_names_equal_torch():
    ours, ref = _pair("LSTM", {"proj_size": 3}, torch.float32, num_layers=2,
                      bidirectional=True)
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    assert repr(ours) == repr(ref)


def test_dropin_trains_to_the_same_losses():
    """A model that swaps nn.LSTM for lstmfast.torch.LSTM trains identically."""
    def make(lstm_cls):
        torch.manual_seed(0)
        lstm = lstm_cls(3, 8, num_layers=2, batch_first=True, dtype=torch.float64)
        head = torch.nn.Linear(8, 1, dtype=torch.float64)
        return lstm, head

    def train(lstm, head):
        opt = torch.optim.Adam(list(lstm.parameters()) + list(head.parameters()), lr=3e-2)
        gen = torch.Generator().manual_seed(1)
        losses = []
        for _ in range(30):
            x = torch.randn(4, 7, 3, generator=gen, dtype=torch.float64)
            target = x[:, :, :1].mean(dim=1)
            y, _ = lstm(x)
            loss = ((head(y[:, -1]) - target) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses

    ref = train(*make(torch.nn.LSTM))
    ours_lstm, ours_head = make(lt.LSTM)
    ours_lstm.load_state_dict(make(torch.nn.LSTM)[0].state_dict())
    ours = train(ours_lstm, ours_head)
    assert ref[-1] < ref[0]
    np.testing.assert_allclose(ours, ref, rtol=1e-9)


def test_dropin_dropout_follows_torch_seed():
    m = lt.LSTM(4, 5, num_layers=2, dropout=0.5)
    x = torch.randn(6, 2, 4)
    torch.manual_seed(3)
    y1, _ = m(x)
    torch.manual_seed(3)
    y2, _ = m(x)
    torch.manual_seed(4)
    y3, _ = m(x)
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)
    assert not torch.equal(y1, y3)
    m.eval()
    torch.testing.assert_close(m(x)[0], m(x)[0], rtol=0, atol=0)


def test_dropin_dropout_one_matches_torch():
    ours, ref = _pair("GRU", {}, torch.float64, num_layers=2, dropout=1.0)
    x = torch.randn(6, 2, 4, dtype=torch.float64, requires_grad=True)
    y1, _ = ours(x)
    y2, _ = ref(x)
    torch.testing.assert_close(y1, y2, rtol=1e-12, atol=1e-12)
    y1.sum().backward()
    assert torch.all(x.grad == 0)


@pytest.mark.parametrize("kind, kw", KINDS, ids=KIND_IDS)
def test_dropin_empty_batch_as_torch(kind, kw):
    ours, ref = _pair(kind, kw, torch.float64, num_layers=2, bidirectional=True,
                      batch_first=True)
    x = torch.zeros(0, 5, 4, dtype=torch.float64, requires_grad=True)
    (y1, s1), (y2, s2) = ours(x), ref(x)
    s1 = s1 if isinstance(s1, tuple) else (s1,)
    s2 = s2 if isinstance(s2, tuple) else (s2,)
    assert y1.shape == y2.shape and [a.shape for a in s1] == [b.shape for b in s2]
    (y1.sum() + sum(a.sum() for a in s1)).backward()
    assert x.grad.shape == x.shape
    assert all(p.grad is None or torch.all(p.grad == 0) for p in ours.parameters())


def test_dropin_no_grad_keeps_no_cache():
    m = lt.GRU(4, 5)
    with torch.no_grad():
        y, h = m(torch.randn(3, 2, 4))
    assert not y.requires_grad


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("kind, kw", KINDS, ids=KIND_IDS)
def test_dropin_half_precision_modules_as_torch(kind, kw, dtype):
    """half / bfloat16 modules run (in float32 inside) and train in their own dtype."""
    torch.manual_seed(0)
    ours, ref = _pair(kind, kw, dtype, num_layers=2)
    x = torch.randn(6, 3, 4).to(dtype)
    xo, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    (y1, _), (y2, _) = ours(xo), ref(xr)
    assert y1.dtype == dtype
    # both round to the dtype's 8 or 11 bits along the way, differently. Measured over 40
    # seeds, |a - b| / (1 + |b|): up to 0.7 eps on y; on the gradients 1.7 eps, and 11 for
    # the ReLU in bfloat16, where a pre-activation rounded across 0 flips its derivative
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(y1.float(), y2.float(), rtol=2 * eps, atol=2 * eps)
    y1.float().sum().backward()
    y2.float().sum().backward()
    assert xo.grad.dtype == dtype and ours.weight_hh_l1.grad.dtype == dtype
    torch.testing.assert_close(ours.weight_hh_l1.grad.float(), ref.weight_hh_l1.grad.float(),
                               rtol=16 * eps, atol=16 * eps)


def test_dropin_all_weights_and_flatten_parameters_as_torch():
    ours, ref = _pair("LSTM", {"proj_size": 3}, torch.float32, num_layers=2,
                      bidirectional=True)
    assert ours._all_weights == ref._all_weights
    assert [[tuple(w.shape) for w in g] for g in ours.all_weights] == \
        [[tuple(w.shape) for w in g] for g in ref.all_weights]
    assert ours.all_weights[3][1] is ours.weight_hh_l1_reverse
    x = torch.randn(3, 2, 4)
    y0, _ = ours(x)
    ours.flatten_parameters()
    torch.testing.assert_close(ours(x)[0], y0, rtol=0, atol=0)


def test_bfloat16_tensors_load_and_run_as_float32(rng):
    """numpy has no bfloat16: torch's .numpy() refuses it, so it goes through float32."""
    ref = torch.nn.LSTM(3, 4).to(torch.bfloat16)
    ours = lstmfast.LSTM.from_torch(ref)
    assert ours.dtype == np.float32
    for k, v in ref.state_dict().items():
        np.testing.assert_array_equal(ours.params[k], v.float().numpy())
    again = lstmfast.LSTM(3, 4)
    again.load_state_dict(ref.state_dict())
    x = torch.randn(5, 2, 3).bfloat16()
    np.testing.assert_array_equal(again(x)[0], ours(x.float().numpy())[0])


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_from_torch_to_torch_round_trip(rng, kind):
    kw = {"proj_size": 2} if kind == "LSTM" else {}
    ref = getattr(torch.nn, kind)(3, 4, num_layers=2, bidirectional=True, batch_first=True,
                                  **kw).double()
    ours = getattr(lstmfast, kind).from_torch(ref)
    assert ours.dtype == np.float64 and ours.batch_first and ours.num_layers == 2
    x = rng.standard_normal((2, 5, 3))
    y_ref, _ = ref(torch.tensor(x))
    np.testing.assert_allclose(ours(x)[0], y_ref.detach().numpy(), rtol=1e-12, atol=1e-14)
    back = ours.to_torch()
    assert type(back) is type(ref)
    for (n1, p1), (n2, p2) in zip(back.state_dict().items(), ref.state_dict().items()):
        assert n1 == n2
        torch.testing.assert_close(p1, p2, rtol=0, atol=0)
    with pytest.raises(TypeError, match=f"needs a torch.nn.{kind}"):
        getattr(lstmfast, kind).from_torch(torch.nn.Linear(2, 2))
