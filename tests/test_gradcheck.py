"""lstmfast's backward against float64 central finite differences of its own forward.

Independent of the oracle: whatever the forward computes, the backward must be its
derivative. The loss is random-linear in every output,
    L = sum(y * gy) + sum(h_n * gh) [+ sum(c_n * gc)],
and its gradient is checked w.r.t. x, the initial state(s) and every parameter.
"""
import dataclasses

import numpy as np
import pytest

from layer_helpers import Case, assert_close, make_layer, make_problem
from reference import numerical_grad

# eps = 1e-6 (numerical_grad's default): truncation error ~eps^2 * |L'''| ~1e-12 and rounding
# ~1e-16 * |L| / eps ~1e-10, both far below 1e-6 of a gradient's scale.
FD_RTOL = 1e-6

CONFIGS = [
    pytest.param(Case("lstm", 1, False, T=3, B=2, I=3, H=2, with_state=True), id="lstm"),
    pytest.param(Case("lstm_proj", 2, True, T=4, B=3, I=2, H=3, proj_size=2,
                      lengths=(2, 4, 1), with_state=True), id="lstm_proj_2l_bi_len"),
    pytest.param(Case("lstm", 1, True, T=3, B=2, I=2, H=2, with_state=True, bias=False),
                 id="lstm_bi_nobias"),
    pytest.param(Case("gru", 1, False, T=3, B=2, I=3, H=2, with_state=True), id="gru"),
    pytest.param(Case("gru", 2, True, T=3, B=3, I=2, H=2, lengths=(3, 1, 2), with_state=True),
                 id="gru_2l_bi_len"),
    pytest.param(Case("rnn_tanh", 2, False, T=3, B=2, I=3, H=3, with_state=True),
                 id="rnn_tanh_2l"),
    pytest.param(Case("rnn_relu", 1, True, T=4, B=3, I=2, H=4, lengths=(4, 2, 3),
                      with_state=True), id="rnn_relu_bi_len"),
]


@pytest.fixture
def rng():
    return np.random.default_rng(4321)


@pytest.mark.parametrize("case", CONFIGS)
def test_backward_matches_finite_differences(case, rng):
    prob = make_problem(case, int(rng.integers(2**31)))
    m = make_layer(case, np.float64)
    m.load_state_dict(prob["params"])      # relu configs get the +0.3 bias: few dead units
    x, h0, c0 = prob["x"], prob["h0"], prob["c0"]

    def loss():
        state = (h0, c0) if case.is_lstm else h0
        y, out = m(x, state, prob["lengths"])
        h_n, c_n = out if case.is_lstm else (out, None)
        total = np.sum(y * prob["gy"]) + np.sum(h_n * prob["gh"])
        return total + (np.sum(c_n * prob["gc"]) if case.is_lstm else 0.0)

    loss()     # forward, then the analytic backward, before anything is perturbed
    dx, dinit = m.backward(prob["gy"], (prob["gh"], prob["gc"]) if case.is_lstm else prob["gh"])
    dh0, dc0 = dinit if case.is_lstm else (dinit, None)
    grads = {k: g.copy() for k, g in m.grads.items()}

    # numerical_grad perturbs these very arrays in place; each loss() call reads them
    assert_close(dx, numerical_grad(loss, x), FD_RTOL, "dx")
    assert_close(dh0, numerical_grad(loss, h0), FD_RTOL, "dh0")
    if case.is_lstm:
        assert_close(dc0, numerical_grad(loss, c0), FD_RTOL, "dc0")
    for name, p in m.params.items():       # the layer's live parameter arrays
        assert_close(grads[name], numerical_grad(loss, p), FD_RTOL, name)
    assert all(np.any(g != 0) for g in grads.values()), "a parameter got no gradient at all"


@pytest.mark.parametrize("case", CONFIGS[:2])
def test_backward_with_default_state_matches_finite_differences(case, rng):
    """state=None (zeros) and dstate=None: still the derivative of what forward computed."""
    case = dataclasses.replace(case, with_state=False)
    prob = make_problem(case, int(rng.integers(2**31)))
    m = make_layer(case, np.float64)
    m.load_state_dict(prob["params"])
    x = prob["x"]

    def loss():
        y, _ = m(x, None, prob["lengths"])
        return np.sum(y * prob["gy"])

    loss()
    dx, _ = m.backward(prob["gy"])
    grads = {k: g.copy() for k, g in m.grads.items()}
    assert_close(dx, numerical_grad(loss, x), FD_RTOL, "dx")
    for name, p in m.params.items():
        assert_close(grads[name], numerical_grad(loss, p), FD_RTOL, name)
