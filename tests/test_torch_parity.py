"""lstmfast against torch.nn.LSTM / GRU / RNN with the very same weights.

The torch module is built with torch's own init and its state_dict is loaded as is
(`m.load_state_dict(tm.state_dict())`). Both run forward and, for the loss
sum(y * gy) + sum(h_n * gh) [+ sum(c_n * gc)], backward (autograd on the torch side);
outputs, final states, dx, d(initial state) and every parameter gradient are compared.
Variable lengths go through pack_padded_sequence(enforce_sorted=False) on the torch side.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

import lstmfast  # noqa: E402
from layer_helpers import assert_close  # noqa: E402

# torch's own note that its oneDNN path has no projection; it falls back and is still torch
pytestmark = pytest.mark.filterwarnings(
    "ignore:LSTM with projections is not supported with oneDNN:UserWarning")

# float64 on both sides: only the summation order differs.
F64_RTOL = 1e-10
# float32 on both sides: each side is ~1e-6 of the scale off the exact result (unit
# roundoff 6e-8 grown over T*num_layers steps and GEMM sums), differently rounded.
F32_RTOL = 1e-5
DTYPES = [pytest.param(np.float32, torch.float32, F32_RTOL, id="f32"),
          pytest.param(np.float64, torch.float64, F64_RTOL, id="f64")]


@pytest.fixture
def rng():
    return np.random.default_rng(777)


def config(mode, num_layers=1, bidirectional=False, proj_size=0, nonlinearity="tanh",
           batch_first=False, bias=True, lengths=None, T=4, B=3, I=5, H=3):
    return dict(mode=mode, num_layers=num_layers, bidirectional=bidirectional,
                proj_size=proj_size, nonlinearity=nonlinearity, batch_first=batch_first,
                bias=bias, lengths=lengths, T=T, B=B, I=I, H=H)


CONFIGS = {
    "lstm": config("LSTM"),
    "lstm_proj": config("LSTM", proj_size=2),
    "gru": config("GRU"),
    "rnn_tanh": config("RNN"),
    "rnn_relu": config("RNN", nonlinearity="relu"),
    "lstm_nobias": config("LSTM", bias=False),
    "lstm_bfirst": config("LSTM", batch_first=True, num_layers=2),
    "gru_bfirst_len": config("GRU", batch_first=True, lengths=[2, 4, 1]),
    "lstm_3l_bi": config("LSTM", num_layers=3, bidirectional=True),
    "lstm_proj_2l_bi": config("LSTM", num_layers=2, bidirectional=True, proj_size=2),
    "gru_2l_bi": config("GRU", num_layers=2, bidirectional=True),
    "rnn_relu_2l_bi": config("RNN", num_layers=2, bidirectional=True, nonlinearity="relu"),
    "lstm_len": config("LSTM", lengths=[2, 4, 1]),
    "lstm_proj_2l_bi_len_bfirst": config("LSTM", num_layers=2, bidirectional=True, proj_size=2,
                                         lengths=[3, 1, 4], batch_first=True),
    "gru_2l_bi_len": config("GRU", num_layers=2, bidirectional=True, lengths=[1, 4, 3]),
    "rnn_tanh_2l_bi_len_nobias": config("RNN", num_layers=2, bidirectional=True,
                                        lengths=[4, 2, 2], bias=False),
    "rnn_relu_bi_len": config("RNN", bidirectional=True, nonlinearity="relu", lengths=[2, 4, 3]),
    "odd_sizes": config("LSTM", num_layers=2, bidirectional=True, proj_size=5, T=5, B=9, I=17,
                        H=9, lengths=[5, 1, 2, 3, 5, 4, 1, 2, 3]),
}
CONFIG_PARAMS = [pytest.param(cfg, id=name) for name, cfg in CONFIGS.items()]


def make_pair(cfg, np_dtype, torch_dtype, seed=0):
    """A torch module with torch's init and the lstmfast layer loaded from its state_dict."""
    torch.manual_seed(seed)
    kw = dict(num_layers=cfg["num_layers"], bias=cfg["bias"], batch_first=cfg["batch_first"],
              bidirectional=cfg["bidirectional"])
    if cfg["mode"] == "LSTM":
        tm = torch.nn.LSTM(cfg["I"], cfg["H"], proj_size=cfg["proj_size"], dtype=torch_dtype, **kw)
        m = lstmfast.LSTM(cfg["I"], cfg["H"], proj_size=cfg["proj_size"], dtype=np_dtype, **kw)
    elif cfg["mode"] == "GRU":
        tm = torch.nn.GRU(cfg["I"], cfg["H"], dtype=torch_dtype, **kw)
        m = lstmfast.GRU(cfg["I"], cfg["H"], dtype=np_dtype, **kw)
    else:
        tm = torch.nn.RNN(cfg["I"], cfg["H"], nonlinearity=cfg["nonlinearity"],
                          dtype=torch_dtype, **kw)
        m = lstmfast.RNN(cfg["I"], cfg["H"], nonlinearity=cfg["nonlinearity"], dtype=np_dtype,
                         **kw)
    if cfg["nonlinearity"] == "relu" and cfg["bias"]:
        with torch.no_grad():      # keep most relu units alive (a dead unit tests nothing)
            for name, p in tm.named_parameters():
                if name.startswith("bias"):
                    p += 0.3
    m.load_state_dict(tm.state_dict())
    return m, tm


def make_inputs(cfg, rng, np_dtype):
    T, B, L, H = cfg["T"], cfg["B"], cfg["num_layers"], cfg["H"]
    D = 2 if cfg["bidirectional"] else 1
    P = cfg["proj_size"] or H
    lead = (B, T) if cfg["batch_first"] else (T, B)
    a = dict(x=rng.standard_normal(lead + (cfg["I"],)),
             h0=0.5 * rng.standard_normal((L * D, B, P)),
             c0=0.5 * rng.standard_normal((L * D, B, H)),
             gy=rng.standard_normal(lead + (D * P,)),
             gh=rng.standard_normal((L * D, B, P)),
             gc=rng.standard_normal((L * D, B, H)))
    return {k: v.astype(np_dtype) for k, v in a.items()}


def torch_run(cfg, tm, a, torch_dtype):
    """torch's outputs and autograd gradients as numpy arrays."""
    leaf = {k: torch.tensor(a[k], dtype=torch_dtype, requires_grad=True)
            for k in ("x", "h0", "c0")}
    lstm = cfg["mode"] == "LSTM"
    hx = (leaf["h0"], leaf["c0"]) if lstm else leaf["h0"]
    if cfg["lengths"] is None:
        y, state = tm(leaf["x"], hx)
    else:
        packed = pack_padded_sequence(leaf["x"], torch.tensor(cfg["lengths"]),
                                      batch_first=cfg["batch_first"], enforce_sorted=False)
        out, state = tm(packed, hx)
        y, _ = pad_packed_sequence(out, batch_first=cfg["batch_first"],
                                   total_length=cfg["T"])
    h_n, c_n = state if lstm else (state, None)
    g = {k: torch.tensor(a[k], dtype=torch_dtype) for k in ("gy", "gh", "gc")}
    loss = (y * g["gy"]).sum() + (h_n * g["gh"]).sum()
    if lstm:
        loss = loss + (c_n * g["gc"]).sum()
    loss.backward()
    n = lambda t: None if t is None else t.detach().numpy()  # noqa: E731
    return dict(y=n(y), h_n=n(h_n), c_n=n(c_n), dx=n(leaf["x"].grad), dh0=n(leaf["h0"].grad),
                dc0=n(leaf["c0"].grad) if lstm else None,
                grads={k: n(p.grad) for k, p in tm.named_parameters()})


def ours_run(cfg, m, a):
    lstm = cfg["mode"] == "LSTM"
    y, state = m(a["x"], (a["h0"], a["c0"]) if lstm else a["h0"], cfg["lengths"])
    h_n, c_n = state if lstm else (state, None)
    dx, dinit = m.backward(a["gy"], (a["gh"], a["gc"]) if lstm else a["gh"])
    dh0, dc0 = dinit if lstm else (dinit, None)
    return dict(y=y, h_n=h_n, c_n=c_n, dx=dx, dh0=dh0, dc0=dc0, grads=dict(m.grads))


@pytest.mark.parametrize("np_dtype, torch_dtype, rtol", DTYPES)
@pytest.mark.parametrize("cfg", CONFIG_PARAMS)
def test_matches_torch(cfg, np_dtype, torch_dtype, rtol, rng):
    m, tm = make_pair(cfg, np_dtype, torch_dtype)
    a = make_inputs(cfg, rng, np_dtype)
    theirs = torch_run(cfg, tm, a, torch_dtype)
    ours = ours_run(cfg, m, a)
    for key in ("y", "h_n", "c_n", "dx", "dh0", "dc0"):
        if theirs[key] is None:
            assert ours[key] is None, key
        else:
            assert ours[key].dtype == np_dtype, key
            assert_close(ours[key], theirs[key], rtol, key)
    assert list(ours["grads"]) == list(theirs["grads"])
    for name, g in theirs["grads"].items():
        assert_close(ours["grads"][name], g, rtol, f"grad {name}")


@pytest.mark.parametrize("cfg", [CONFIGS["lstm_proj_2l_bi"], CONFIGS["gru_2l_bi_len"]],
                         ids=["lstm_proj_2l_bi", "gru_2l_bi_len"])
def test_eval_and_default_state_match_torch(cfg, rng):
    """state=None (zeros) in eval mode against torch under no_grad."""
    m, tm = make_pair(cfg, np.float64, torch.float64)
    m.eval()
    tm.eval()
    a = make_inputs(cfg, rng, np.float64)
    y, state = m(a["x"], None, cfg["lengths"])
    with torch.no_grad():
        x = torch.from_numpy(a["x"])
        if cfg["lengths"] is None:
            ty, tstate = tm(x)
        else:
            out, tstate = tm(pack_padded_sequence(x, torch.tensor(cfg["lengths"]),
                                                  enforce_sorted=False))
            ty, _ = pad_packed_sequence(out, total_length=cfg["T"])
    assert_close(y, ty.numpy(), F64_RTOL, "y")
    for ours, theirs, name in zip(state if isinstance(state, tuple) else (state,),
                                  tstate if isinstance(tstate, tuple) else (tstate,),
                                  ("h_n", "c_n")):
        assert_close(ours, theirs.numpy(), F64_RTOL, name)


# ---------------------------------------------------------------------------------------------
# Parameters: names, order, shapes and the default init
# ---------------------------------------------------------------------------------------------

INIT_CONFIGS = [
    pytest.param(dict(mode="LSTM", num_layers=2, bidirectional=True, proj_size=5), id="lstm_proj"),
    pytest.param(dict(mode="LSTM", num_layers=3, bidirectional=False, proj_size=0, bias=False),
                 id="lstm_nobias"),
    pytest.param(dict(mode="GRU", num_layers=2, bidirectional=True), id="gru"),
    pytest.param(dict(mode="RNN", num_layers=2, bidirectional=False, nonlinearity="relu"),
                 id="rnn_relu"),
]


def build(spec, lib, I, H, **kw):
    spec = dict(spec)
    mode = spec.pop("mode")
    if mode in ("GRU", "RNN"):
        spec.pop("proj_size", None)
    return getattr(lib, mode)(I, H, **spec, **kw)


@pytest.mark.parametrize("spec", INIT_CONFIGS)
def test_parameter_names_order_shapes_equal_torch(spec):
    m = build(spec, lstmfast, 7, 11, seed=0)
    tm = build(spec, torch.nn, 7, 11)
    tsd = tm.state_dict()
    assert list(m.params) == list(tsd)
    assert list(m.state_dict()) == list(tsd)
    assert list(m.grads) == list(tsd)
    for name, t in tsd.items():
        assert m.params[name].shape == tuple(t.shape), name
        assert m.grads[name].shape == tuple(t.shape), name
        assert not np.any(m.grads[name]), f"grads start at zero: {name}"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("spec", INIT_CONFIGS)
def test_default_init_is_torch_uniform(spec, dtype):
    """Every parameter ~ U(-1/sqrt(H), 1/sqrt(H)), as torch's reset_parameters does."""
    scipy_stats = pytest.importorskip("scipy.stats")
    H = 64
    m = build(spec, lstmfast, 48, H, seed=123, dtype=dtype)
    bound = 1 / np.sqrt(H)
    for name, p in m.params.items():
        assert p.dtype == dtype
        assert np.all(np.abs(p) <= bound * (1 + 1e-7)), f"{name} outside the init range"
        # the mean of n uniforms has std bound / sqrt(3 n): allow 5 of them
        assert abs(p.mean()) < 5 * bound / np.sqrt(3 * p.size), name
    allp = np.concatenate([p.ravel() for p in m.params.values()]).astype(np.float64)
    # the extremes of n > 10^4 uniform draws lie within 0.1% of the bounds unless an event of
    # probability 2 * 0.9995^n < 1e-2 happened (and the seed is fixed anyway)
    assert allp.max() > 0.999 * bound and allp.min() < -0.999 * bound
    assert allp.size > 10**4
    # Kolmogorov-Smirnov against U(-bound, bound): a fixed seed, so this is deterministic
    assert scipy_stats.kstest(allp, "uniform", args=(-bound, 2 * bound)).pvalue > 1e-3


def test_seed_controls_init():
    a, b, c = (lstmfast.LSTM(4, 6, 2, seed=s) for s in (3, 3, 4))
    for name in a.params:
        assert np.array_equal(a.params[name], b.params[name])
        assert not np.array_equal(a.params[name], c.params[name])
    d, e = lstmfast.LSTM(4, 6), lstmfast.LSTM(4, 6)     # seed=None: fresh entropy
    assert not np.array_equal(d.params["weight_ih_l0"], e.params["weight_ih_l0"])


def test_torch_state_dict_loads_across_dtypes(rng):
    """A float32 torch state_dict into a float64 layer and back out to torch."""
    tm = torch.nn.LSTM(3, 4, 2, bidirectional=True, proj_size=2)
    m = lstmfast.LSTM(3, 4, 2, bidirectional=True, proj_size=2, dtype=np.float64)
    m.load_state_dict(tm.state_dict())
    for name, t in tm.state_dict().items():
        assert m.params[name].dtype == np.float64
        assert np.array_equal(m.params[name], t.numpy().astype(np.float64)), name
    tm2 = torch.nn.LSTM(3, 4, 2, bidirectional=True, proj_size=2, dtype=torch.float64)
    tm2.load_state_dict({k: torch.from_numpy(v) for k, v in m.state_dict().items()})
    x = rng.standard_normal((3, 2, 3))
    with torch.no_grad():
        ty, _ = tm2(torch.from_numpy(x))
    m.eval()
    assert_close(m(x)[0], ty.numpy(), F64_RTOL, "y")
