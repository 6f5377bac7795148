"""Tests of the numpy oracle itself (tests/reference.py), before anything is tested against it.

Two independent checks:
  (a) its hand-written backward against float64 central finite differences of its forward;
  (b) its forward and backward against torch.nn.LSTM / GRU / RNN (and the *Cell classes)
      with the same weights, torch in float64, gradients by autograd.
Both use the loss  sum(y * gy) + sum(h_n * gh) + sum(c_n * gc)  with random gy, gh, gc,
so every output and every gradient is exercised.
"""
import numpy as np
import pytest

from reference import (
    GATES, cell_backward, cell_forward, init_params, numerical_grad, param_names,
    rnn_backward, rnn_forward,
)

FD_RTOL = 1e-6      # finite differences, eps = 1e-6: truncation ~1e-12, rounding ~1e-10
TORCH_RTOL = 1e-10  # float64 against float64: only summation order differs


def assert_close(actual, expected, rtol, what):
    """max |actual - expected| <= rtol * max |expected|  (exact equality when both are zero)."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    err = np.max(np.abs(actual - expected), initial=0.0)
    scale = max(np.max(np.abs(expected), initial=0.0), np.max(np.abs(actual), initial=0.0))
    assert err <= rtol * scale, f"{what}: max abs error {err:.3e}, scale {scale:.3e}"


# ---------------------------------------------------------------------------------------------
# Configurations shared by the finite-difference and the torch tests
# ---------------------------------------------------------------------------------------------

def config(mode, num_layers=1, bidirectional=False, proj_size=0, bias=True, nonlinearity="tanh",
           lengths=None, dropout=False, T=3, B=2, I=3, H=2):
    return dict(mode=mode, num_layers=num_layers, bidirectional=bidirectional,
                proj_size=proj_size, bias=bias, nonlinearity=nonlinearity,
                lengths=lengths, dropout=dropout, T=T, B=B, I=I, H=H)


CONFIGS = {
    "lstm": config("LSTM"),
    "lstm_proj": config("LSTM", proj_size=2, H=3),
    "gru": config("GRU"),
    "rnn_tanh": config("RNN"),
    "rnn_relu": config("RNN", nonlinearity="relu", H=4),
    "lstm_nobias": config("LSTM", bias=False),
    "gru_nobias": config("GRU", bias=False),
    "rnn_nobias": config("RNN", bias=False),
    "lstm_2l_bi": config("LSTM", num_layers=2, bidirectional=True),
    "lstm_proj_2l_bi": config("LSTM", num_layers=2, bidirectional=True, proj_size=2, H=3),
    "gru_2l_bi": config("GRU", num_layers=2, bidirectional=True),
    "rnn_tanh_2l_bi": config("RNN", num_layers=2, bidirectional=True),
    "rnn_relu_2l_bi": config("RNN", num_layers=2, bidirectional=True, nonlinearity="relu", H=4),
    # unsorted lengths, so enforce_sorted=False has to reorder both the batch and the states
    "lstm_len": config("LSTM", lengths=[2, 3, 1], B=3),
    "lstm_2l_bi_len": config("LSTM", num_layers=2, bidirectional=True, lengths=[2, 3, 1], B=3),
    "lstm_proj_2l_bi_len": config("LSTM", num_layers=2, bidirectional=True, proj_size=2, H=3,
                                  lengths=[1, 3, 2], B=3),
    "gru_2l_bi_len": config("GRU", num_layers=2, bidirectional=True, lengths=[2, 3, 1], B=3),
    "rnn_relu_bi_len": config("RNN", bidirectional=True, nonlinearity="relu", H=4,
                              lengths=[3, 1, 2], B=3),
    "rnn_tanh_2l_len_nobias": config("RNN", num_layers=2, lengths=[1, 3, 3], B=3, bias=False),
    "lstm_2l_bi_dropout": config("LSTM", num_layers=2, bidirectional=True, dropout=True),
    "lstm_proj_3l_dropout": config("LSTM", num_layers=3, proj_size=2, H=3, dropout=True),
    "gru_3l_dropout": config("GRU", num_layers=3, dropout=True),
    "rnn_relu_2l_bi_dropout": config("RNN", num_layers=2, bidirectional=True,
                                     nonlinearity="relu", H=4, dropout=True),
    "lstm_2l_bi_len_dropout": config("LSTM", num_layers=2, bidirectional=True,
                                     lengths=[2, 3, 1], B=3, dropout=True),
}

CONFIG_PARAMS = [pytest.param(cfg, id=name) for name, cfg in CONFIGS.items()]


def make_problem(cfg, seed=1234):
    """Random inputs, weights, states, dropout masks and loss weights for one config."""
    rng = np.random.default_rng(seed)
    mode, L, T, B, I, H, P = (cfg["mode"], cfg["num_layers"], cfg["T"], cfg["B"], cfg["I"],
                              cfg["H"], cfg["proj_size"])
    D = 2 if cfg["bidirectional"] else 1
    H_out = P if P else H
    params = init_params(mode, I, H, L, cfg["bidirectional"], P, cfg["bias"], rng)
    if cfg["nonlinearity"] == "relu" and cfg["bias"]:
        # with PyTorch's init about half the relu units of a tiny layer are off at every step,
        # and a dead unit tests nothing; a positive bias keeps most on (some stay off: good)
        for name in params:
            if name.startswith("bias_"):
                params[name] += 0.3
    prob = dict(
        x=rng.standard_normal((T, B, I)),
        params=params,
        h0=0.5 * rng.standard_normal((L * D, B, H_out)),
        c0=0.5 * rng.standard_normal((L * D, B, H)) if mode == "LSTM" else None,
        lengths=None if cfg["lengths"] is None else np.array(cfg["lengths"]),
        masks=None,
        gy=rng.standard_normal((T, B, D * H_out)),
        gh=rng.standard_normal((L * D, B, H_out)),
        gc=rng.standard_normal((L * D, B, H)) if mode == "LSTM" else None,
    )
    if cfg["dropout"]:
        p = 0.3
        prob["masks"] = [(rng.random((T, B, D * H_out)) >= p) / (1.0 - p) for _ in range(L - 1)]
    return prob


def oracle_forward(cfg, prob):
    return rnn_forward(cfg["mode"], prob["x"], prob["params"], num_layers=cfg["num_layers"],
                       bidirectional=cfg["bidirectional"], proj_size=cfg["proj_size"],
                       h0=prob["h0"], c0=prob["c0"], lengths=prob["lengths"],
                       nonlinearity=cfg["nonlinearity"], dropout_masks=prob["masks"])


def oracle_loss(cfg, prob):
    y, h_n, c_n, _ = oracle_forward(cfg, prob)
    loss = np.sum(y * prob["gy"]) + np.sum(h_n * prob["gh"])
    if c_n is not None:
        loss += np.sum(c_n * prob["gc"])
    return loss


def oracle_forward_backward(cfg, prob):
    y, h_n, c_n, cache = oracle_forward(cfg, prob)
    dx, dh0, dc0, grads = rnn_backward(cache, prob["gy"], prob["gh"], prob["gc"])
    return dict(y=y, h_n=h_n, c_n=c_n, dx=dx, dh0=dh0, dc0=dc0, grads=grads)


# ---------------------------------------------------------------------------------------------
# (a) finite differences
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg", CONFIG_PARAMS)
def test_layer_gradients_match_finite_differences(cfg):
    prob = make_problem(cfg)
    ours = oracle_forward_backward(cfg, prob)

    def f():
        return oracle_loss(cfg, prob)

    # numerical_grad perturbs these very arrays in place; rnn_forward reads them each call
    assert_close(ours["dx"], numerical_grad(f, prob["x"]), FD_RTOL, "dx")
    assert_close(ours["dh0"], numerical_grad(f, prob["h0"]), FD_RTOL, "dh0")
    if cfg["mode"] == "LSTM":
        assert_close(ours["dc0"], numerical_grad(f, prob["c0"]), FD_RTOL, "dc0")
    else:
        assert ours["dc0"] is None
    assert list(ours["grads"]) == list(prob["params"])
    for name, p in prob["params"].items():
        assert_close(ours["grads"][name], numerical_grad(f, p), FD_RTOL, name)


CELL_CONFIGS = [
    pytest.param("LSTM", "tanh", True, 0, id="lstm"),
    pytest.param("LSTM", "tanh", False, 0, id="lstm_nobias"),
    pytest.param("LSTM", "tanh", True, 2, id="lstm_proj"),
    pytest.param("GRU", "tanh", True, 0, id="gru"),
    pytest.param("GRU", "tanh", False, 0, id="gru_nobias"),
    pytest.param("RNN", "tanh", True, 0, id="rnn_tanh"),
    pytest.param("RNN", "relu", True, 0, id="rnn_relu"),
    pytest.param("RNN", "relu", False, 0, id="rnn_relu_nobias"),
]


def make_cell_problem(mode, bias, proj_size, seed=99, B=3, I=4, H=3):
    rng = np.random.default_rng(seed)
    G = GATES[mode]
    H_out = proj_size if proj_size else H
    bound = 1.0 / np.sqrt(H)
    arrays = dict(
        x_t=rng.standard_normal((B, I)),
        h=rng.standard_normal((B, H_out)),
        c=rng.standard_normal((B, H)) if mode == "LSTM" else None,
        w_ih=rng.uniform(-bound, bound, (G * H, I)),
        w_hh=rng.uniform(-bound, bound, (G * H, H_out)),
        b_ih=rng.uniform(-bound, bound, G * H) if bias else None,
        b_hh=rng.uniform(-bound, bound, G * H) if bias else None,
        w_hr=rng.uniform(-bound, bound, (proj_size, H)) if proj_size else None,
    )
    loss_weights = dict(gh=rng.standard_normal((B, H_out)),
                        gc=rng.standard_normal((B, H)) if mode == "LSTM" else None)
    return arrays, loss_weights


def run_cell(mode, nonlinearity, a):
    return cell_forward(mode, a["x_t"], a["h"], a["c"], a["w_ih"], a["w_hh"], a["b_ih"],
                        a["b_hh"], a["w_hr"], nonlinearity=nonlinearity)


@pytest.mark.parametrize("mode, nonlinearity, bias, proj_size", CELL_CONFIGS)
def test_cell_gradients_match_finite_differences(mode, nonlinearity, bias, proj_size):
    a, lw = make_cell_problem(mode, bias, proj_size)

    def f():
        h_new, c_new, _ = run_cell(mode, nonlinearity, a)
        loss = np.sum(h_new * lw["gh"])
        if c_new is not None:
            loss += np.sum(c_new * lw["gc"])
        return loss

    _, _, cache = run_cell(mode, nonlinearity, a)
    dx_t, dh, dc, grads = cell_backward(cache, lw["gh"], lw["gc"])
    analytic = dict(x_t=dx_t, h=dh, c=dc, **grads)
    for name, arr in a.items():
        if arr is None:
            assert analytic.get(name) is None, name
            continue
        assert_close(analytic[name], numerical_grad(f, arr), FD_RTOL, name)


def test_numerical_grad_is_exact_enough_and_restores_the_array():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 4))
    before = a.copy()
    g = numerical_grad(lambda: np.sum(np.sin(a) * a), a)
    assert np.array_equal(a, before)
    assert_close(g, np.cos(a) * a + np.sin(a), 1e-9, "d/da sum(a sin a)")


# ---------------------------------------------------------------------------------------------
# Direct checks of the variable-length and init semantics
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", [n for n in CONFIGS if CONFIGS[n]["lengths"] is not None])
def test_padded_positions_are_exactly_zero(name):
    cfg = CONFIGS[name]
    prob = make_problem(cfg)
    ours = oracle_forward_backward(cfg, prob)
    for b, L in enumerate(cfg["lengths"]):
        assert np.all(ours["y"][L:, b] == 0.0)
        assert np.all(ours["dx"][L:, b] == 0.0)
        if cfg["nonlinearity"] != "relu":   # relu outputs may be zero legitimately
            assert np.all(ours["y"][:L, b] != 0.0)


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_full_lengths_equal_no_lengths(mode):
    cfg = dict(CONFIGS["lstm_2l_bi"], mode=mode)
    prob = make_problem(cfg)
    without = oracle_forward_backward(cfg, prob)
    prob["lengths"] = np.full(cfg["B"], cfg["T"])
    with_full = oracle_forward_backward(cfg, prob)
    for key in ["y", "h_n", "c_n", "dx", "dh0", "dc0"]:
        if without[key] is None:
            continue
        assert np.array_equal(without[key], with_full[key]), key


def test_init_params_shapes_and_bounds():
    rng = np.random.default_rng(0)
    p = init_params("LSTM", 5, 4, num_layers=2, bidirectional=True, proj_size=3, bias=True,
                    rng=rng)
    assert list(p) == param_names("LSTM", 2, True, 3, True)
    assert p["weight_ih_l0"].shape == (16, 5)
    assert p["weight_hh_l0"].shape == (16, 3)
    assert p["weight_hr_l0_reverse"].shape == (3, 4)
    assert p["weight_ih_l1"].shape == (16, 6)          # D * proj_size
    assert p["bias_hh_l1_reverse"].shape == (16,)
    assert all(v.dtype == np.float64 and np.all(np.abs(v) <= 0.5) for v in p.values())
    p = init_params("GRU", 5, 4, num_layers=1, bias=False, rng=rng)
    assert list(p) == ["weight_ih_l0", "weight_hh_l0"]
    with pytest.raises(ValueError):
        init_params("GRU", 5, 4, proj_size=2)


# ---------------------------------------------------------------------------------------------
# (b) against PyTorch
# ---------------------------------------------------------------------------------------------

def torch_module(mode, input_size, cfg, num_layers):
    torch = pytest.importorskip("torch")
    kw = dict(num_layers=num_layers, bias=cfg["bias"], bidirectional=cfg["bidirectional"])
    if mode == "LSTM":
        m = torch.nn.LSTM(input_size, cfg["H"], proj_size=cfg["proj_size"], **kw)
    elif mode == "GRU":
        m = torch.nn.GRU(input_size, cfg["H"], **kw)
    else:
        m = torch.nn.RNN(input_size, cfg["H"], nonlinearity=cfg["nonlinearity"], **kw)
    return m.double()


def torch_run(module, mode, x, hx, lengths):
    """Run a torch RNN module on padded x [T, B, I], packing it when lengths are given."""
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    if lengths is None:
        y, state = module(x, hx)
    else:
        packed = pack_padded_sequence(x, torch.as_tensor(lengths), enforce_sorted=False)
        out, state = module(packed, hx)
        y, _ = pad_packed_sequence(out, total_length=x.shape[0])
    if mode == "LSTM":
        return y, state[0], state[1]
    return y, state, None


def torch_forward_backward(cfg, prob, stack_layers_by_hand=False):
    """torch's outputs and autograd gradients for the oracle's loss.

    With stack_layers_by_hand, each layer is its own one-layer torch module and the oracle's
    dropout masks multiply the input of layers k >= 1 (torch's own dropout is random; see
    test_dropout_masks_match_torch_dropout for that one).
    """
    torch = pytest.importorskip("torch")
    mode, L = cfg["mode"], cfg["num_layers"]
    D = 2 if cfg["bidirectional"] else 1

    def leaf(a):
        return None if a is None else torch.tensor(a, dtype=torch.float64, requires_grad=True)

    x, h0, c0 = leaf(prob["x"]), leaf(prob["h0"]), leaf(prob["c0"])
    weights = {name: torch.from_numpy(p.copy()) for name, p in prob["params"].items()}

    named = {}
    if not stack_layers_by_hand:
        assert prob["masks"] is None
        module = torch_module(mode, cfg["I"], cfg, L)
        module.load_state_dict(weights)
        y, h_n, c_n = torch_run(module, mode, x, (h0, c0) if mode == "LSTM" else h0,
                                prob["lengths"])
        named.update(module.named_parameters())
    else:
        layer_in, hs, cs = x, [], []
        for k in range(L):
            if k > 0 and prob["masks"] is not None:
                layer_in = layer_in * torch.from_numpy(prob["masks"][k - 1])
            module = torch_module(mode, layer_in.shape[2], cfg, 1)
            # this one-layer module calls its parameters *_l0*; they are the stack's *_l{k}*
            module.load_state_dict({n: weights[n.replace("_l0", f"_l{k}")]
                                    for n in module.state_dict()})
            h0_k = h0[k * D:(k + 1) * D]
            hx = (h0_k, c0[k * D:(k + 1) * D]) if mode == "LSTM" else h0_k
            layer_in, h_k, c_k = torch_run(module, mode, layer_in, hx, prob["lengths"])
            hs.append(h_k)
            cs.append(c_k)
            named.update({n.replace("_l0", f"_l{k}"): p for n, p in module.named_parameters()})
        y = layer_in
        h_n = torch.cat(hs)
        c_n = torch.cat(cs) if mode == "LSTM" else None

    loss = (y * torch.from_numpy(prob["gy"])).sum() + (h_n * torch.from_numpy(prob["gh"])).sum()
    if mode == "LSTM":
        loss = loss + (c_n * torch.from_numpy(prob["gc"])).sum()
    loss.backward()

    def np_(t):
        return None if t is None else t.detach().numpy()

    return dict(y=np_(y), h_n=np_(h_n), c_n=np_(c_n), dx=np_(x.grad), dh0=np_(h0.grad),
                dc0=np_(None if c0 is None else c0.grad),
                grads={name: np_(named[name].grad) for name in prob["params"]})


def compare_to_torch(ours, theirs, params):
    for key in ["y", "h_n", "c_n", "dx", "dh0", "dc0"]:
        if theirs[key] is None:
            assert ours[key] is None, key
        else:
            assert_close(ours[key], theirs[key], TORCH_RTOL, key)
    assert set(ours["grads"]) == set(params)
    for name in params:
        assert_close(ours["grads"][name], theirs["grads"][name], TORCH_RTOL, name)


@pytest.mark.parametrize("cfg", CONFIG_PARAMS)
def test_layer_matches_torch(cfg):
    pytest.importorskip("torch")
    prob = make_problem(cfg)
    ours = oracle_forward_backward(cfg, prob)
    theirs = torch_forward_backward(cfg, prob, stack_layers_by_hand=cfg["dropout"])
    compare_to_torch(ours, theirs, prob["params"])


@pytest.mark.parametrize("name", ["lstm_2l_bi", "lstm_proj_2l_bi_len", "gru_2l_bi_len",
                                  "rnn_relu_2l_bi"])
def test_stacking_one_layer_torch_modules_matches_torch_multilayer(name):
    """Checks the by-hand stack used for the dropout configs against torch's own stack."""
    pytest.importorskip("torch")
    cfg = CONFIGS[name]
    prob = make_problem(cfg)
    whole = torch_forward_backward(cfg, prob, stack_layers_by_hand=False)
    stacked = torch_forward_backward(cfg, prob, stack_layers_by_hand=True)
    compare_to_torch(stacked, whole, prob["params"])


@pytest.mark.parametrize("mode, nonlinearity", [("LSTM", "tanh"), ("GRU", "tanh"),
                                                ("RNN", "tanh"), ("RNN", "relu")])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_dropout_masks_match_torch_dropout(mode, nonlinearity, bidirectional):
    """torch (CPU) draws one bernoulli(1-p) mask [T, B, D*H_out] per layer boundary, scaled
    by 1/(1-p), in layer order; replaying its generator gives the oracle the same masks."""
    torch = pytest.importorskip("torch")
    cfg = config(mode, num_layers=3, bidirectional=bidirectional, nonlinearity=nonlinearity,
                 T=4, B=3, I=3, H=4)
    prob = make_problem(cfg)
    D = 2 if bidirectional else 1
    p = 0.4
    module = torch_module(mode, cfg["I"], cfg, cfg["num_layers"])
    module.dropout = p
    module.load_state_dict({n: torch.from_numpy(v.copy()) for n, v in prob["params"].items()})
    module.train()
    torch.manual_seed(7)
    y, _ = module(torch.from_numpy(prob["x"]))
    torch.manual_seed(7)
    masks = [torch.empty(cfg["T"], cfg["B"], D * cfg["H"], dtype=torch.float64)
             .bernoulli_(1 - p).div_(1 - p).numpy() for _ in range(cfg["num_layers"] - 1)]
    y_ours, _, _, _ = rnn_forward(mode, prob["x"], prob["params"], cfg["num_layers"],
                                  bidirectional, nonlinearity=nonlinearity, dropout_masks=masks)
    assert_close(y_ours, y.detach().numpy(), TORCH_RTOL, "y")


@pytest.mark.parametrize("mode, nonlinearity, bias, proj_size", CELL_CONFIGS)
def test_cell_matches_torch(mode, nonlinearity, bias, proj_size):
    torch = pytest.importorskip("torch")
    a, lw = make_cell_problem(mode, bias, proj_size)
    h_new, c_new, cache = run_cell(mode, nonlinearity, a)
    dx_t, dh, dc, grads = cell_backward(cache, lw["gh"], lw["gc"])
    ours = dict(x_t=dx_t, h=dh, c=dc, **grads)

    I = a["x_t"].shape[1]
    H = a["w_ih"].shape[0] // GATES[mode]
    torch_names = dict(w_ih="weight_ih", w_hh="weight_hh", b_ih="bias_ih", b_hh="bias_hh")
    if proj_size:
        # torch has no LSTMCell with projection: one step of a one-layer nn.LSTM is the same
        module = torch.nn.LSTM(I, H, bias=bias, proj_size=proj_size).double()
        torch_names = {k: v + "_l0" for k, v in dict(torch_names, w_hr="weight_hr").items()}
    elif mode == "RNN":
        module = torch.nn.RNNCell(I, H, bias=bias, nonlinearity=nonlinearity).double()
    else:
        module = getattr(torch.nn, mode + "Cell")(I, H, bias=bias).double()
    module.load_state_dict({torch_names[k]: torch.from_numpy(a[k].copy())
                            for k in torch_names if a[k] is not None})
    x_t, h, c = (None if a[k] is None else torch.tensor(a[k], requires_grad=True)
                 for k in ["x_t", "h", "c"])
    if proj_size:
        _, (h_t, c_t) = module(x_t[None], (h[None], c[None]))   # add T = 1, num_layers = 1
        h_t, c_t = h_t[0], c_t[0]
    elif mode == "LSTM":
        h_t, c_t = module(x_t, (h, c))
    else:
        h_t, c_t = module(x_t, h), None

    loss = (h_t * torch.from_numpy(lw["gh"])).sum()
    assert_close(h_new, h_t.detach().numpy(), TORCH_RTOL, "h_new")
    if mode == "LSTM":
        assert_close(c_new, c_t.detach().numpy(), TORCH_RTOL, "c_new")
        loss = loss + (c_t * torch.from_numpy(lw["gc"])).sum()
    else:
        assert c_new is None and dc is None
    loss.backward()

    assert_close(ours["x_t"], x_t.grad.numpy(), TORCH_RTOL, "dx_t")
    assert_close(ours["h"], h.grad.numpy(), TORCH_RTOL, "dh")
    if mode == "LSTM":
        assert_close(ours["c"], c.grad.numpy(), TORCH_RTOL, "dc")
    torch_params = dict(module.named_parameters())
    for k, torch_name in torch_names.items():
        if a[k] is None:
            assert ours[k] is None, k
        else:
            assert_close(ours[k], torch_params[torch_name].grad.numpy(), TORCH_RTOL, k)
