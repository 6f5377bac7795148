"""Shared pieces of the layer tests: the layer modes, a problem generator, the oracle call
and a relative-to-scale comparison. Imported by the test_* files (tests/ is on sys.path).

Every problem uses the loss  sum(y * gy) + sum(h_n * gh) [+ sum(c_n * gc)]  with random
gy, gh, gc, so dL/dy = gy and dL/d(final state) = (gh, gc) and every output and every
gradient is exercised by one backward call.
"""
from dataclasses import dataclass

import numpy as np

import lstmfast
from reference import init_params, rnn_backward, rnn_forward

# id -> (oracle mode, nonlinearity, with projection)
MODES = {
    "lstm": ("LSTM", "tanh", False),
    "lstm_proj": ("LSTM", "tanh", True),
    "gru": ("GRU", "tanh", False),
    "rnn_tanh": ("RNN", "tanh", False),
    "rnn_relu": ("RNN", "relu", False),
}
MODE_IDS = list(MODES)


@dataclass(frozen=True)
class Case:
    """One layer configuration and its (time-major) problem shape."""
    mode: str                   # a key of MODES
    num_layers: int = 1
    bidirectional: bool = False
    T: int = 4
    B: int = 3
    I: int = 5
    H: int = 3
    proj_size: int = 0          # only read for mode "lstm_proj"; 0 there means H - 1
    lengths: tuple = None       # per-sequence lengths, or None
    with_state: bool = False    # pass a random initial state (else None = zeros)
    bias: bool = True

    @property
    def oracle_mode(self):
        return MODES[self.mode][0]

    @property
    def nonlinearity(self):
        return MODES[self.mode][1]

    @property
    def P(self):
        """proj_size handed to the layer (0: no projection)."""
        if not MODES[self.mode][2]:
            return 0
        return self.proj_size or self.H - 1

    @property
    def H_out(self):
        return self.P or self.H

    @property
    def D(self):
        return 2 if self.bidirectional else 1

    @property
    def is_lstm(self):
        return self.oracle_mode == "LSTM"


def make_layer(case, dtype=np.float64, batch_first=False, **kw):
    """The lstmfast layer for `case` (default init; load parameters separately)."""
    common = dict(num_layers=case.num_layers, bias=case.bias, batch_first=batch_first,
                  bidirectional=case.bidirectional, dtype=dtype, **kw)
    if case.oracle_mode == "LSTM":
        return lstmfast.LSTM(case.I, case.H, proj_size=case.P, **common)
    if case.oracle_mode == "GRU":
        return lstmfast.GRU(case.I, case.H, **common)
    return lstmfast.RNN(case.I, case.H, nonlinearity=case.nonlinearity, **common)


def f32_exact(a):
    """float64 values that float32 represents exactly: then a float32 layer and the
    float64 oracle see the same numbers, and only the arithmetic differs."""
    return np.asarray(a, np.float32).astype(np.float64)


def make_problem(case, seed):
    """Random parameters, inputs, initial state and loss weights (all time-major, float64,
    float32-exact)."""
    rng = np.random.default_rng(seed)
    params = init_params(case.oracle_mode, case.I, case.H, case.num_layers, case.bidirectional,
                         case.P, case.bias, rng)
    if case.nonlinearity == "relu" and case.bias:
        # with the default init about half the units of a tiny relu layer are off at every
        # step, and a dead unit tests nothing; a positive bias keeps most on (some stay off)
        for name in params:
            if name.startswith("bias_"):
                params[name] += 0.3
    LD, T, B = case.num_layers * case.D, case.T, case.B
    prob = dict(
        params={k: f32_exact(v) for k, v in params.items()},
        x=f32_exact(rng.standard_normal((T, B, case.I))),
        h0=f32_exact(0.5 * rng.standard_normal((LD, B, case.H_out))) if case.with_state else None,
        c0=(f32_exact(0.5 * rng.standard_normal((LD, B, case.H)))
            if case.with_state and case.is_lstm else None),
        gy=f32_exact(rng.standard_normal((T, B, case.D * case.H_out))),
        gh=f32_exact(rng.standard_normal((LD, B, case.H_out))),
        gc=f32_exact(rng.standard_normal((LD, B, case.H))) if case.is_lstm else None,
        lengths=None if case.lengths is None else np.array(case.lengths),
    )
    return prob


def oracle(case, prob, dropout_masks=None):
    """The oracle's outputs and gradients (time-major), zeros for a state not given."""
    y, h_n, c_n, cache = rnn_forward(
        case.oracle_mode, prob["x"], prob["params"], num_layers=case.num_layers,
        bidirectional=case.bidirectional, proj_size=case.P, h0=prob["h0"], c0=prob["c0"],
        lengths=prob["lengths"], nonlinearity=case.nonlinearity, dropout_masks=dropout_masks)
    dx, dh0, dc0, grads = rnn_backward(cache, prob["gy"], prob["gh"], prob["gc"])
    return dict(y=y, h_n=h_n, c_n=c_n, dx=dx, dh0=dh0, dc0=dc0, grads=grads)


def layer_state(case, prob):
    """The state argument for the layer: None, h0, or (h0, c0)."""
    if not case.with_state:
        return None
    return (prob["h0"], prob["c0"]) if case.is_lstm else prob["h0"]


def to_layout(a, batch_first):
    """time-major [T, B, F] -> the layer's layout (a copy, C-contiguous)."""
    return np.ascontiguousarray(a.transpose(1, 0, 2) if batch_first else a)


def run_layer(m, case, prob, batch_first=False):
    """Forward then backward of `m` on `prob`; results time-major, like oracle()."""
    x = to_layout(prob["x"], batch_first)
    y, state = m(x, layer_state(case, prob), prob["lengths"])
    h_n, c_n = state if case.is_lstm else (state, None)
    dstate = (prob["gh"], prob["gc"]) if case.is_lstm else prob["gh"]
    dx, dinit = m.backward(to_layout(prob["gy"], batch_first), dstate)
    dh0, dc0 = dinit if case.is_lstm else (dinit, None)
    back = (lambda a: a.transpose(1, 0, 2)) if batch_first else (lambda a: a)
    return dict(y=back(y), h_n=h_n, c_n=c_n, dx=back(dx), dh0=dh0, dc0=dc0,
                grads={k: g.copy() for k, g in m.grads.items()})


def assert_close(actual, expected, rtol, what):
    """max |actual - expected| <= rtol * max |expected|.

    The scale is the whole array's, not each element's: rounding errors are relative to
    the magnitudes that were summed, and an element that is small because of cancellation
    carries the error of the large terms. An all-zero expectation demands exact zeros.
    """
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert np.all(np.isfinite(actual)), f"{what}: non-finite values"
    err = np.max(np.abs(actual - expected), initial=0.0)
    scale = np.max(np.abs(expected), initial=0.0)
    assert err <= rtol * scale, (f"{what}: max abs error {err:.3e} > {rtol:.0e} * scale "
                                 f"{scale:.3e} (ratio {err / scale if scale else np.inf:.2e})")


def assert_results_close(ours, ref, case, rtol):
    """Every output and gradient of run_layer() against oracle()."""
    for key in ("y", "h_n", "dx", "dh0") + (("c_n", "dc0") if case.is_lstm else ()):
        assert_close(ours[key], ref[key], rtol, key)
    if not case.is_lstm:
        assert ours["c_n"] is None and ours["dc0"] is None
    assert sorted(ours["grads"]) == sorted(ref["grads"])
    for name, g in ref["grads"].items():
        assert_close(ours["grads"][name], g, rtol, f"grad {name}")
