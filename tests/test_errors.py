"""Every bad input raises a clear exception, and a failed call changes nothing.

Each case asserts the exception type and a message fragment that names what was expected.

"Changes nothing" is checked black-box against a deep copy taken before the failing call:
  * params and grads are bitwise equal;
  * a backward that was pending before the failing call (forward or backward) still works
    and gives bitwise the twin's results: a bad call must not cost the caller the cache
    of a good forward (a failed backward leaves it pending too, so it can be retried with
    a corrected dy);
  * the next forward with state=None gives bitwise the twin's output, so the carried state
    of a stateful layer and the dropout rng (the layers here use dropout) are untouched.
"""
import copy

import numpy as np
import pytest

import lstmfast

T, B, I, H, P, L = 4, 3, 5, 4, 3, 2      # LSTM with projection: h is [.., P], c is [.., H]
D = 2
LD = L * D


@pytest.fixture
def rng():
    return np.random.default_rng(2468)


class Arrays:
    """Valid arguments for the pending layers below."""

    def __init__(self, rng, mode):
        out = P if mode == "lstm_proj" else H
        self.x = rng.standard_normal((T, B, I))
        self.x2 = rng.standard_normal((T, B, I))
        self.h0 = rng.standard_normal((LD, B, out))
        self.c0 = rng.standard_normal((LD, B, H))
        self.dy = rng.standard_normal((T, B, D * out))
        self.gh = rng.standard_normal((LD, B, out))
        self.gc = rng.standard_normal((LD, B, H))
        self.lstm = mode == "lstm_proj"

    @property
    def state(self):
        return (self.h0, self.c0) if self.lstm else self.h0

    @property
    def dstate(self):
        return (self.gh, self.gc) if self.lstm else self.gh


def make(mode, **kw):
    common = dict(bidirectional=True, dtype=np.float64, seed=0, **kw)
    if mode == "lstm_proj":
        return lstmfast.LSTM(I, H, L, proj_size=P, **common)
    if mode == "gru":
        return lstmfast.GRU(I, H, L, **common)
    return lstmfast.RNN(I, H, L, nonlinearity="relu", **common)


MODES = ["lstm_proj", "gru", "rnn_relu"]


def pending_layer(mode, rng):
    """A stateful training layer with dropout, a carried state, non-zero grads and a
    pending backward."""
    m = make(mode, stateful=True, dropout=0.3)
    a = Arrays(rng, mode)
    m(a.x, a.state)
    m.backward(a.dy, a.dstate)
    m(a.x2)                     # from the carry; its backward is pending
    return m, a


def continuation(m, a):
    """What the layer does next: the pending backward (if any), then a forward from the carry."""
    out = []
    try:
        dx, ds = m.backward(a.dy, a.dstate)
        out += [dx, *(ds if isinstance(ds, tuple) else (ds,))]
    except RuntimeError as e:
        out.append(f"RuntimeError: {e}")
    y, s = m(a.x)
    out += [y, *(s if isinstance(s, tuple) else (s,))]
    return out + [g.copy() for g in m.grads.values()]


def assert_unchanged(m, twin, a):
    assert list(m.params) == list(twin.params)
    for k in twin.params:
        assert np.array_equal(m.params[k], twin.params[k]), f"params[{k!r}] changed"
        assert np.array_equal(m.grads[k], twin.grads[k]), f"grads[{k!r}] changed"
    for got, want in zip(continuation(m, a), continuation(twin, a)):
        if isinstance(want, str):
            assert got == want
        else:
            assert np.array_equal(got, want), "the layer behaves differently after the failure"


def check_fails_cleanly(m, a, call, exc, match):
    twin = copy.deepcopy(m)
    with pytest.raises(exc, match=match):
        call(m, a)
    assert_unchanged(m, twin, a)


# ---------------------------------------------------------------------------------------------
# forward: x, lengths, state
# ---------------------------------------------------------------------------------------------

FORWARD_ERRORS = {
    # x
    "x_1d": (lambda m, a: m(a.x[0, 0]), ValueError, r"x must be 3-d \[T, batch, input_size\]"),
    "x_2d_lengths": (lambda m, a: m(a.x[:, 0], lengths=[1]), ValueError,
                     "lengths are for a batch"),
    "x_4d": (lambda m, a: m(a.x[None]), ValueError, "x must be 3-d"),
    "x_scalar": (lambda m, a: m(1.0), ValueError, "x must be 3-d"),
    "x_features": (lambda m, a: m(np.zeros((T, B, I + 1))), ValueError,
                   f"input_size={I} features"),
    "x_T0": (lambda m, a: m(np.zeros((0, B, I))), ValueError, "at least one timestep"),
    "x_complex": (lambda m, a: m(a.x + 1j), TypeError, "x must hold real numbers"),
    "x_string": (lambda m, a: m(np.full((T, B, I), "a")), TypeError, "x must hold real numbers"),
    "x_object": (lambda m, a: m(np.full((T, B, I), None)), TypeError, "x must hold real numbers"),
    "x_none": (lambda m, a: m(None), (TypeError, ValueError), "x must"),
    # T*B = 2**32 rows: refused before anything is allocated (x is a zero-stride view)
    "x_too_many_rows": (lambda m, a: m(np.broadcast_to(np.zeros(I), (2**16, 2**16, I))),
                        ValueError, "too large"),
    # ... also before x is converted to the layer's dtype (that copy would take 160 GiB)
    "x_too_many_rows_int8": (
        lambda m, a: m(np.broadcast_to(np.zeros(I, np.int8), (2**16, 2**16, I))),
        ValueError, "too large"),
    # T alone beyond 32 bits, with an empty batch (no rows, but T reaches the kernels)
    "x_T_2e31_empty_batch": (lambda m, a: m(np.zeros((2**31, 0, I))), ValueError,
                             "too large"),
    "x_T_2e31_empty_batch_lengths": (lambda m, a: m(np.zeros((2**31, 0, I)), None, []),
                                     ValueError, "too large"),
    # lengths
    "lengths_count": (lambda m, a: m(a.x, None, [T, T]), ValueError,
                      r"lengths must have shape \(3,\)"),
    "lengths_2d": (lambda m, a: m(a.x, None, [[T] * B]), ValueError,
                   r"lengths must have shape \(3,\)"),
    "lengths_scalar": (lambda m, a: m(a.x, None, T), ValueError, r"lengths must have shape"),
    "lengths_zero": (lambda m, a: m(a.x, None, [0, T, 2]), ValueError,
                     rf"lengths must lie in \[1, {T}\]"),
    "lengths_negative": (lambda m, a: m(a.x, None, [-1, T, 2]), ValueError,
                         rf"lengths must lie in \[1, {T}\]"),
    "lengths_above_T": (lambda m, a: m(a.x, None, [T + 1, T, 2]), ValueError,
                        rf"lengths must lie in \[1, {T}\]"),
    "lengths_huge": (lambda m, a: m(a.x, None, np.array([2**63 - 1, 1, 1])), ValueError,
                     rf"lengths must lie in \[1, {T}\]"),
    "lengths_float": (lambda m, a: m(a.x, None, [2.0, 4.0, 1.0]), TypeError,
                      "lengths must be integers"),
    "lengths_fractional": (lambda m, a: m(a.x, None, [2.5, 4, 1]), TypeError,
                           "lengths must be integers"),
    "lengths_bool": (lambda m, a: m(a.x, None, [True] * B), TypeError, "lengths must be integers"),
    "lengths_string": (lambda m, a: m(a.x, None, ["4"] * B), TypeError,
                       "lengths must be integers"),
    "lengths_complex": (lambda m, a: m(a.x, None, np.array([4, 4, 4]) + 0j), TypeError,
                        "lengths must be integers"),
    # stateful: a different batch size while a state is carried
    "batch_change": (lambda m, a: m(a.x[:, :2]), ValueError,
                     r"carries state for batch size 3, got batch size 2; call reset_state"),
}

LSTM_STATE_ERRORS = {
    "state_array": (lambda m, a: m(a.x, a.h0), TypeError,
                    r"state must be a tuple \(h, c\) for LSTM, got ndarray"),
    "state_triple": (lambda m, a: m(a.x, (a.h0, a.c0, a.c0)), TypeError,
                     r"state must be a tuple \(h, c\) for LSTM, got a tuple of 3"),
    "state_single": (lambda m, a: m(a.x, (a.h0,)), TypeError,
                     r"state must be a tuple \(h, c\) for LSTM, got a tuple of 1"),
    "h0_shape": (lambda m, a: m(a.x, (a.c0, a.c0)), ValueError,
                 rf"h0 must have shape \({LD}, {B}, {P}\)"),
    "c0_shape": (lambda m, a: m(a.x, (a.h0, a.h0)), ValueError,
                 rf"c0 must have shape \({LD}, {B}, {H}\)"),
    "h0_batch": (lambda m, a: m(a.x, (a.h0[:, :2], a.c0)), ValueError, "h0 must have shape"),
    "h0_layers": (lambda m, a: m(a.x, (a.h0[:2], a.c0)), ValueError, "h0 must have shape"),
    "h0_complex": (lambda m, a: m(a.x, (a.h0 + 1j, a.c0)), TypeError, "h0 must hold real"),
    "c0_string": (lambda m, a: m(a.x, (a.h0, np.full(a.c0.shape, "x"))), TypeError,
                  "c0 must hold real"),
}

H_STATE_ERRORS = {
    "h0_shape": (lambda m, a: m(a.x, a.h0[:, :, :2]), ValueError,
                 rf"h0 must have shape \({LD}, {B}, {H}\)"),
    "h0_batch": (lambda m, a: m(a.x, a.h0[:, :2]), ValueError, "h0 must have shape"),
    # an LSTM-style (h, c) tuple handed to a GRU / RNN
    "h0_c0_tuple": (lambda m, a: m(a.x, (a.h0, a.h0)), ValueError, "h0 must have shape"),
    "h0_complex": (lambda m, a: m(a.x, a.h0 + 1j), TypeError, "h0 must hold real"),
}


def forward_cases():
    for mode in MODES:
        table = dict(FORWARD_ERRORS)
        extra = LSTM_STATE_ERRORS if mode == "lstm_proj" else H_STATE_ERRORS
        table.update({k: v for k, v in extra.items()})
        for name, (call, exc, match) in table.items():
            yield pytest.param(mode, call, exc, match, id=f"{mode}-{name}")


@pytest.mark.parametrize("mode, call, exc, match", list(forward_cases()))
def test_bad_forward_raises_and_changes_nothing(mode, call, exc, match, rng):
    m, a = pending_layer(mode, rng)
    check_fails_cleanly(m, a, call, exc, match)


# ---------------------------------------------------------------------------------------------
# backward: dy, dstate
# ---------------------------------------------------------------------------------------------

BACKWARD_ERRORS = {
    "dy_shape": (lambda m, a: m.backward(a.dy[:, :, :-1], a.dstate), ValueError,
                 r"dy must have the output's shape \(4, 3, "),
    "dy_T": (lambda m, a: m.backward(a.dy[:-1], a.dstate), ValueError,
             "dy must have the output's shape"),
    "dy_2d": (lambda m, a: m.backward(a.dy[0], a.dstate), ValueError,
              "dy must have the output's shape"),
    "dy_complex": (lambda m, a: m.backward(a.dy + 1j, a.dstate), TypeError,
                   "dy must hold real numbers"),
    "dy_string": (lambda m, a: m.backward(np.full(a.dy.shape, "a"), a.dstate), TypeError,
                  "dy must hold real numbers"),
    "dh_n_shape": (lambda m, a: m.backward(
        a.dy, (a.gh[:, :2], a.gc) if a.lstm else a.gh[:, :2]), ValueError,
        r"dh_n must have shape \(4, 3, "),
    "dh_n_complex": (lambda m, a: m.backward(
        a.dy, (a.gh + 1j, a.gc) if a.lstm else a.gh + 1j), TypeError, "dh_n must hold real"),
}

LSTM_BACKWARD_ERRORS = {
    "dstate_array": (lambda m, a: m.backward(a.dy, a.gh), TypeError,
                     r"dstate must be a tuple \(h, c\)"),
    "dc_n_shape": (lambda m, a: m.backward(a.dy, (a.gh, a.gh)), ValueError,
                   rf"dc_n must have shape \({LD}, {B}, {H}\)"),
    "dh_n_is_c_shaped": (lambda m, a: m.backward(a.dy, (a.gc, a.gc)), ValueError,
                         rf"dh_n must have shape \({LD}, {B}, {P}\)"),
}


def backward_cases():
    for mode in MODES:
        table = dict(BACKWARD_ERRORS)
        if mode == "lstm_proj":
            table.update(LSTM_BACKWARD_ERRORS)
        for name, (call, exc, match) in table.items():
            yield pytest.param(mode, call, exc, match, id=f"{mode}-{name}")


@pytest.mark.parametrize("mode, call, exc, match", list(backward_cases()))
def test_bad_backward_raises_and_keeps_the_backward_pending(mode, call, exc, match, rng):
    m, a = pending_layer(mode, rng)
    check_fails_cleanly(m, a, call, exc, match)


# ---------------------------------------------------------------------------------------------
# call order
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_backward_out_of_order(mode, rng):
    a = Arrays(rng, mode)
    m = make(mode)
    with pytest.raises(RuntimeError, match="must follow a training-mode forward"):
        m.backward(a.dy, a.dstate)
    m.eval()
    m(a.x)
    with pytest.raises(RuntimeError, match="eval mode"):
        m.backward(a.dy, a.dstate)
    m.train()
    m(a.x)
    m.backward(a.dy, a.dstate)
    twin = copy.deepcopy(m)
    with pytest.raises(RuntimeError, match="only one backward"):
        m.backward(a.dy, a.dstate)
    for k in m.grads:        # the refused second backward accumulated nothing
        assert np.array_equal(m.grads[k], twin.grads[k])


# ---------------------------------------------------------------------------------------------
# constructor arguments
# ---------------------------------------------------------------------------------------------

CTOR = {"LSTM": lstmfast.LSTM, "GRU": lstmfast.GRU, "RNN": lstmfast.RNN}

SIZE_ERRORS = [
    ("hidden_0", dict(hidden_size=0), ValueError, "hidden_size must be >= 1, got 0"),
    ("hidden_neg", dict(hidden_size=-1), ValueError, "hidden_size must be >= 1, got -1"),
    ("hidden_float", dict(hidden_size=2.5), TypeError, "hidden_size must be an int, got float"),
    ("hidden_integral_float", dict(hidden_size=4.0), TypeError, "hidden_size must be an int"),
    ("hidden_bool", dict(hidden_size=True), TypeError, "hidden_size must be an int, got bool"),
    ("hidden_str", dict(hidden_size="4"), TypeError, "hidden_size must be an int, got str"),
    ("hidden_none", dict(hidden_size=None), TypeError, "hidden_size must be an int"),
    ("hidden_2e40", dict(hidden_size=2**40), ValueError, "too large"),
    # fits an int32 but the weights would not: refused before any allocation
    ("hidden_2e30", dict(hidden_size=2**30), ValueError, "too large|more than 2\\*\\*31-1"),
    ("input_0", dict(input_size=0), ValueError, "input_size must be >= 1"),
    ("input_bool", dict(input_size=False), TypeError, "input_size must be an int"),
    ("input_int_max", dict(input_size=2**31 - 1), ValueError, r"more than 2\*\*31-1 elements"),
    ("layers_0", dict(num_layers=0), ValueError, "num_layers must be >= 1"),
    ("layers_float", dict(num_layers=1.0), TypeError, "num_layers must be an int"),
    ("dropout_neg", dict(dropout=-0.1), ValueError, r"dropout must be a number in \[0, 1\]"),
    ("dropout_above_1", dict(dropout=1.01), ValueError, r"dropout must be a number in \[0, 1\]"),
    ("dropout_2", dict(dropout=2), ValueError, r"dropout must be a number in \[0, 1\]"),
    ("dropout_nan", dict(dropout=float("nan")), ValueError, r"dropout must be a number"),
    ("dropout_str", dict(dropout="0.5"), ValueError, r"dropout must be a number"),
    ("dropout_bool", dict(dropout=True), ValueError, r"dropout must be a number"),
    ("dtype_f16", dict(dtype=np.float16), TypeError, "dtype must be float32 or float64"),
    ("dtype_int", dict(dtype=np.int32), TypeError, "dtype must be float32 or float64"),
    ("dtype_complex", dict(dtype=np.complex128), TypeError, "dtype must be float32 or float64"),
]


@pytest.mark.parametrize("cls", list(CTOR))
@pytest.mark.parametrize("kwargs, exc, match", [pytest.param(*e[1:], id=e[0])
                                                 for e in SIZE_ERRORS])
def test_bad_constructor_arguments(cls, kwargs, exc, match):
    args = dict(input_size=3, hidden_size=4)
    args.update(kwargs)
    I_, H_ = args.pop("input_size"), args.pop("hidden_size")
    with pytest.raises(exc, match=match):
        CTOR[cls](I_, H_, **args)


@pytest.mark.parametrize("kwargs, exc, match", [
    pytest.param(dict(proj_size=4), ValueError, r"proj_size must be smaller than hidden_size \(4\)",
                 id="proj_equal"),
    pytest.param(dict(proj_size=9), ValueError, "proj_size must be smaller than hidden_size",
                 id="proj_above"),
    pytest.param(dict(proj_size=-1), ValueError, "proj_size must be >= 0", id="proj_neg"),
    pytest.param(dict(proj_size=1.5), TypeError, "proj_size must be an int", id="proj_float"),
    pytest.param(dict(hidden_size=2**29), ValueError, "too large", id="lstm_4H_overflows"),
])
def test_bad_lstm_arguments(kwargs, exc, match):
    args = dict(input_size=3, hidden_size=4)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        lstmfast.LSTM(args.pop("input_size"), args.pop("hidden_size"), **args)


def test_bad_nonlinearity():
    with pytest.raises(ValueError, match="nonlinearity must be 'tanh' or 'relu', got 'sigmoid'"):
        lstmfast.RNN(3, 4, nonlinearity="sigmoid")


@pytest.mark.parametrize("make_bad", [
    pytest.param(lambda: lstmfast.LSTM(3, 4, hiden_size=4), id="lstm_typo"),
    pytest.param(lambda: lstmfast.GRU(3, 4, proj_size=2), id="gru_proj"),
    pytest.param(lambda: lstmfast.RNN(3, 4, nonlinearty="relu"), id="rnn_typo"),
    pytest.param(lambda: lstmfast.LSTM(3, 4, 1, True), id="positional_bias"),
])
def test_unknown_or_positional_keyword(make_bad):
    with pytest.raises(TypeError, match="unexpected keyword|positional argument"):
        make_bad()


# ---------------------------------------------------------------------------------------------
# load_state_dict
# ---------------------------------------------------------------------------------------------

def bad_state_dicts(m):
    sd = {k: np.full(v.shape, 0.125) for k, v in m.params.items()}   # differs from m's values
    last = list(sd)[-1]
    missing = dict(sd)
    del missing[last]
    cases = {
        "missing": (missing, KeyError, rf"missing keys \['{last}'\]"),
        "unexpected": ({**sd, "weight_ih_l9": sd["weight_ih_l0"]}, KeyError,
                       r"unexpected keys \['weight_ih_l9'\]"),
        # every earlier key is fine: nothing may be copied before the bad one is seen
        "last_wrong_shape": ({**sd, last: sd[last][:-1]}, ValueError,
                             rf"state_dict\['{last}'\] has shape"),
        "transposed": ({**sd, "weight_ih_l0": sd["weight_ih_l0"].T}, ValueError,
                       r"state_dict\['weight_ih_l0'\] has shape \(5, "),
        "none_value": ({**sd, last: None}, ValueError, rf"state_dict\['{last}'\] has shape"),
        "strings": ({**sd, last: np.full(sd[last].shape, "a")}, TypeError,
                    rf"state_dict\['{last}'\] must hold real numbers"),
        # a complex weight cannot go into a real layer (x, states and dy refuse complex too)
        "complex": ({**sd, last: sd[last] + 1j}, TypeError, rf"state_dict\['{last}'\]"),
        "not_a_mapping": (list(sd.values()), TypeError, "state_dict must be a mapping"),
    }
    return cases


STATE_DICT_CASES = ["missing", "unexpected", "last_wrong_shape", "transposed", "none_value",
                    "strings", "complex", "not_a_mapping"]


@pytest.mark.parametrize("case", STATE_DICT_CASES)
@pytest.mark.parametrize("mode", MODES)
def test_bad_state_dict_raises_and_changes_nothing(mode, case, rng):
    m, a = pending_layer(mode, rng)
    sd, exc, match = bad_state_dicts(m)[case]
    check_fails_cleanly(m, a, lambda m, a: m.load_state_dict(sd), exc, match)


FORWARD_FIELDS = ["x", "w_ih", "w_hh", "h0", "c0", "y", "h_n", "c_n", "aux", "work"]
BACKWARD_FIELDS = ["dy", "dh_n", "dc_n", "dx", "dh0", "dc0", "dw_ih", "dw_hh"]


@pytest.mark.parametrize("field", FORWARD_FIELDS + BACKWARD_FIELDS)
def test_kernel_rejections_name_the_field(field):
    """The C entry points take one argument struct each and reject a bad field with a
    code of its own, which the binding turns into a message naming the field (the
    binding's own checks keep such calls from reaching C; a test hook sends one)."""
    from lstmfast import _kernels
    what = "forward" if field in FORWARD_FIELDS else "backward"
    with pytest.raises(RuntimeError, match=rf"{what} kernel rejected its argument {field} "
                                           rf"\(code -1\d\d\)"):
        _kernels._reject(field)
    _kernels._reject("")  # nothing NULL: both calls succeed


def test_kernel_outputs_sharing_memory_with_inputs_are_refused():
    """The binding refuses an output that overlaps an input or another output (the
    kernels would read what they have overwritten), by the bytes the arrays span; arrays
    side by side in one buffer are fine."""
    from lstmfast import _kernels

    T, B, I, H = 3, 2, 4, 5
    N = T * B
    rng = np.random.default_rng(0)
    w_ih, w_hh = rng.standard_normal((4 * H, I)), rng.standard_normal((4 * H, H))
    h0, c0 = np.zeros((B, H)), np.zeros((B, H))
    x = rng.standard_normal((N, I))

    def run(x, y, y_col=0, h0=h0):
        return _kernels.forward(0, x, w_ih, w_hh, None, None, None, h0, c0, T, None,
                                False, False, y, y_col)

    want = run(x, np.zeros((N, H)))[0]
    flat = np.zeros(N * I + N * H + 1)
    for shift, refused in [(-1, True), (0, False), (1, False)]:  # y ends/starts at x's edge
        xs = flat[:N * I].reshape(N, I)
        xs[...] = x
        ys = flat[N * I + shift:N * I + shift + N * H].reshape(N, H)
        if refused:
            with pytest.raises(ValueError, match="y must not share memory with x"):
                run(xs, ys)
        else:
            np.testing.assert_array_equal(run(xs, ys)[0], want)
    wide = np.zeros((N, H + 3))  # y in columns 3.. of a wider array whose first row is h0
    with pytest.raises(ValueError, match="y must not share memory with h0"):
        run(x, wide, 3, h0=wide.reshape(-1)[:B * H].reshape(B, H))
