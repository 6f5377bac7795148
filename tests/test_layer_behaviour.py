"""Behaviour of the layers beyond the math: stateful carry, determinism, input conversion,
train/eval and the forward/backward protocol, gradient accumulation, state_dict, repr,
threads, and numerical safety for huge inputs.
"""
import threading
import tracemalloc
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import lstmfast
from layer_helpers import (
    MODE_IDS, Case, assert_close, layer_state, make_layer, make_problem, oracle, run_layer,
    to_layout,
)

# float64 against float64 (oracle or the layer on another chunking): summation order only
F64_RTOL = 1e-10


@pytest.fixture
def rng():
    return np.random.default_rng(98765)


def loaded(case, prob, dtype=np.float64, **kw):
    m = make_layer(case, dtype, **kw)
    m.load_state_dict(prob["params"])
    return m


def split_state(case, state):
    return state if case.is_lstm else (state, None)


# ---------------------------------------------------------------------------------------------
# Stateful: chunks of one long sequence
# ---------------------------------------------------------------------------------------------

CHUNKS = [(0, 3), (3, 4), (4, 8)]      # T = 8 in chunks of 3, 1 and 4 steps


@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
@pytest.mark.parametrize("mode", MODE_IDS)
def test_stateful_chunks_equal_one_long_sequence(mode, batch_first, rng):
    case = Case(mode, 2, False, T=8, B=3, I=4, H=3, with_state=True)
    prob = make_problem(case, int(rng.integers(2**31)))
    # the whole sequence at once, from the given initial state
    whole = loaded(case, prob, batch_first=batch_first).eval()
    tm = (lambda a: a.transpose(1, 0, 2)) if batch_first else (lambda a: a)
    y_all, state_all = whole(tm(prob["x"]), layer_state(case, prob))

    m = loaded(case, prob, batch_first=batch_first, stateful=True)
    h0, c0 = prob["h0"], prob["c0"]
    for i, (a, b) in enumerate(CHUNKS):
        chunk = dict(prob, x=prob["x"][a:b], gy=prob["gy"][a:b], h0=h0, c0=c0)
        ccase = Case(mode, 2, False, T=b - a, B=3, I=4, H=3, with_state=True)
        # only the first chunk gets the explicit state; later ones use the carry (state=None)
        m.zero_grad()
        y, state = m(np.ascontiguousarray(tm(chunk["x"])),
                     layer_state(ccase, chunk) if i == 0 else None)
        dstate = (chunk["gh"], chunk["gc"]) if case.is_lstm else chunk["gh"]
        dx, dinit = m.backward(np.ascontiguousarray(tm(chunk["gy"])), dstate)
        dh0, dc0 = split_state(case, dinit)

        assert_close(tm(y), tm(y_all)[a:b], F64_RTOL, f"chunk {i}: y")
        # truncated BPTT: the chunk's gradient is the oracle's for the chunk alone, started
        # from the carried state as a constant
        ref = oracle(ccase, chunk)
        assert_close(tm(dx), ref["dx"], F64_RTOL, f"chunk {i}: dx")
        assert_close(dh0, ref["dh0"], F64_RTOL, f"chunk {i}: d(carried h)")
        if case.is_lstm:
            assert_close(dc0, ref["dc0"], F64_RTOL, f"chunk {i}: d(carried c)")
        for name, g in ref["grads"].items():
            assert_close(m.grads[name], g, F64_RTOL, f"chunk {i}: grad {name}")
        h0, c0 = split_state(case, state)
    for got, want in zip(split_state(case, state), split_state(case, state_all)):
        if want is not None:
            assert_close(got, want, F64_RTOL, "final state")


@pytest.mark.parametrize("mode", MODE_IDS)
def test_stateful_carry_reset_and_override(mode, rng):
    case = Case(mode, 2, True, T=3, B=2, I=3, H=3)
    prob = make_problem(case, int(rng.integers(2**31)))
    x1, x2 = prob["x"], prob["x"][::-1].copy()
    plain = loaded(case, prob).eval()          # not stateful: every call starts from zeros
    m = loaded(case, prob, stateful=True).eval()

    y1, s1 = m(x1)
    assert np.array_equal(y1, plain(x1)[0])
    # mutating what was returned must not touch the carry
    for s in (s1 if case.is_lstm else (s1,)):
        s[...] = 123.0
    y2, _ = m(x2)
    expected, _ = plain(x2, plain(x1)[1])     # x2 from the state x1 ended in
    assert np.array_equal(y2, expected)

    m.reset_state()
    assert np.array_equal(m(x2)[0], plain(x2)[0]), "reset_state() must start from zeros again"

    # an explicit state overrides the carry, and the carry then continues from that call
    other = plain(x2)[1]
    y, s = m(x1, other)
    assert np.array_equal(y, plain(x1, other)[0])
    assert np.array_equal(m(x2)[0], plain(x2, s)[0])

    # without stateful, state=None always means zeros
    assert np.array_equal(plain(x1)[0], plain(x1)[0])


def test_stateful_with_lengths_carries_each_sequences_last_valid_state(rng):
    case = Case("lstm", 1, False, T=4, B=3, I=2, H=3, lengths=(2, 4, 1))
    prob = make_problem(case, int(rng.integers(2**31)))
    m = loaded(case, prob, stateful=True).eval()
    plain = loaded(case, prob).eval()
    _, s = m(prob["x"], None, prob["lengths"])
    x2 = prob["x"][::-1].copy()
    assert np.array_equal(m(x2)[0], plain(x2, s)[0])
    ref = oracle(case, prob)
    assert_close(s[0], ref["h_n"], F64_RTOL, "carried h")


def test_stateful_batch_size_change_after_reset_is_fine(rng):
    m = lstmfast.LSTM(3, 4, stateful=True, seed=0)
    m(rng.standard_normal((2, 5, 3)))
    with pytest.raises(ValueError, match="reset_state"):
        m(rng.standard_normal((2, 4, 3)))
    m.reset_state()
    y, _ = m(rng.standard_normal((2, 4, 3)))
    assert y.shape == (2, 4, 4)


# ---------------------------------------------------------------------------------------------
# Determinism and input conversion
# ---------------------------------------------------------------------------------------------

def forward_backward(m, x, state=None, lengths=None, dy_seed=0, dstate=None, dy_form=None):
    y, s = m(x, state, lengths)
    dy = np.random.default_rng(dy_seed).standard_normal(y.shape)
    if dy_form is not None:
        dy = dy_form(dy)
    m.zero_grad()
    dx, ds = m.backward(dy, dstate)
    flat = lambda t: list(t) if isinstance(t, tuple) else [t]  # noqa: E731
    return [y, *flat(s), dx, *flat(ds)] + [g.copy() for g in m.grads.values()]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("mode", MODE_IDS)
def test_identical_input_gives_bitwise_identical_results(mode, dtype, rng):
    case = Case(mode, 2, True, T=9, B=13, I=21, H=19, lengths=None)
    x = rng.standard_normal((9, 13, 21))
    lengths = rng.integers(1, 10, 13)
    a = make_layer(case, dtype, seed=11)
    b = make_layer(case, dtype, seed=11)
    for lens in (None, lengths):
        first = forward_backward(a, x, lengths=lens)
        again = forward_backward(a, x, lengths=lens)
        other = forward_backward(b, x, lengths=lens)
        for u, v, w in zip(first, again, other):
            assert np.array_equal(u, v) and np.array_equal(u, w)


def variants(a):
    """(name, array-like) forms of the values of `a` that the layer must accept."""
    big = np.zeros((a.shape[0], 2 * a.shape[1], a.shape[2] + 3), a.dtype)
    big[:, ::2, 1:1 + a.shape[2]] = a
    return [
        ("strided", big[:, ::2, 1:1 + a.shape[2]]),
        ("fortran", np.asfortranarray(a)),
        ("transposed_view", np.ascontiguousarray(a.transpose(2, 1, 0)).transpose(2, 1, 0)),
        ("negative_strides", np.ascontiguousarray(a[::-1])[::-1]),
        ("readonly", np.lib.stride_tricks.as_strided(a, writeable=False)),
        ("list", a.tolist()),
    ]


INPUT_KINDS = ["strided", "fortran", "transposed_view", "negative_strides", "readonly", "list"]


@pytest.mark.parametrize("kind", INPUT_KINDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("lengths, batch_first", [((2, 4, 1), False), (None, False),
                                                  (None, True)],
                         ids=["lengths", "full", "full_bfirst"])
@pytest.mark.parametrize("mode", ["lstm_proj", "gru"])
def test_non_contiguous_inputs_equal_contiguous(mode, lengths, batch_first, dtype, kind, rng):
    """x, the initial state, dy and the state's gradient in any memory layout (the paths
    without lengths once passed a Fortran-order copy to the kernels, which refused it)."""
    case = Case(mode, 2, True, T=4, B=3, I=5, H=4, with_state=True, lengths=lengths)
    prob = make_problem(case, int(rng.integers(2**31)))
    conv = {k: (v.astype(dtype) if isinstance(v, np.ndarray) and v.dtype == np.float64 else v)
            for k, v in prob.items()}
    m = loaded(case, prob, dtype, seed=0, batch_first=batch_first)
    x = np.ascontiguousarray(conv["x"].transpose(1, 0, 2)) if batch_first else conv["x"]
    dstate = (conv["gh"], conv["gc"]) if case.is_lstm else conv["gh"]
    want = forward_backward(m, x, layer_state(case, conv), conv["lengths"], dstate=dstate)
    pick = lambda arr: dict(variants(arr))[kind]  # noqa: E731
    state = (pick(conv["h0"]), pick(conv["c0"])) if case.is_lstm else pick(conv["h0"])
    dstate = (pick(conv["gh"]), pick(conv["gc"])) if case.is_lstm else pick(conv["gh"])
    got = forward_backward(m, pick(x), state, conv["lengths"], dstate=dstate, dy_form=pick)
    for u, v in zip(got, want):
        assert np.array_equal(u, v)


@pytest.mark.parametrize("src_dtype", [np.float16, np.float32, np.float64, np.int8, np.int64,
                                       np.uint16, np.bool_])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_other_dtypes_are_converted(dtype, src_dtype, rng):
    m = lstmfast.LSTM(3, 4, 2, bidirectional=True, dtype=dtype, seed=1)
    x = (rng.standard_normal((5, 2, 3)) * 3).astype(src_dtype)
    h0 = (rng.standard_normal((4, 2, 4)) * 3).astype(src_dtype)
    c0 = (rng.standard_normal((4, 2, 4)) * 3).astype(src_dtype)
    got = forward_backward(m, x, (h0, c0))
    want = forward_backward(m, x.astype(dtype), (h0.astype(dtype), c0.astype(dtype)))
    for u, v in zip(got, want):
        assert u.dtype == dtype
        assert np.array_equal(u, v)


@pytest.mark.parametrize("form", ["list", "tuple", "int32", "uint8", "int64_strided",
                                  "mixed_numpy_ints"])
def test_lengths_forms(form, rng):
    m = lstmfast.GRU(3, 4, bidirectional=True, dtype=np.float64, seed=1)
    x = rng.standard_normal((5, 4, 3))
    base = [3, 5, 1, 3]
    lengths = {"list": base, "tuple": tuple(base), "int32": np.array(base, np.int32),
               "uint8": np.array(base, np.uint8),
               "int64_strided": np.array([3, 0, 5, 0, 1, 0, 3, 0], np.int64)[::2],
               # np.asarray makes int64 with uint64 a float array
               "mixed_numpy_ints": [np.int64(3), np.uint64(5), 1, np.int8(3)]}[form]
    want = forward_backward(m, x, lengths=np.array(base))
    got = forward_backward(m, x, lengths=lengths)
    for u, v in zip(got, want):
        assert np.array_equal(u, v)


# ---------------------------------------------------------------------------------------------
# Backward uses what forward saw: later in-place changes to the caller's arrays don't count
# ---------------------------------------------------------------------------------------------
# numpy has no version counter to catch this (torch raises on such a change), so the layer
# must not keep references to the caller's x / state, or hand out its cached y.

def mutate_x(x, h0, c0, y):
    x[...] = 0.5


def mutate_state(x, h0, c0, y):
    h0[...] = 0.5
    if c0 is not None:
        c0[...] = 0.5


def mutate_y(x, h0, c0, y):
    y[...] = 0.5     # e.g. an in-place activation on the output before its backward


@pytest.mark.parametrize("mutate", [mutate_x, mutate_state, mutate_y], ids=["x", "state", "y"])
@pytest.mark.parametrize("B, batch_first", [(3, False), (3, True), (1, True)],
                         ids=["tmajor", "bfirst", "bfirst_b1"])
@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn_tanh"])
def test_backward_ignores_in_place_changes_after_forward(mode, B, batch_first, mutate, rng):
    # batch-first [1, T, F] is contiguous as the transpose of the cached [T, 1, F] output
    case = Case(mode, 2, False, T=4, B=B, I=3, H=3, with_state=True)
    prob = make_problem(case, int(rng.integers(2**31)))
    ref = oracle(case, prob)
    m = loaded(case, prob, batch_first=batch_first)
    x, h0 = to_layout(prob["x"], batch_first), prob["h0"].copy()
    c0 = prob["c0"].copy() if case.is_lstm else None
    y, _ = m(x, (h0, c0) if case.is_lstm else h0)
    mutate(x, h0, c0, y)
    dx, dinit = m.backward(to_layout(prob["gy"], batch_first),
                           (prob["gh"], prob["gc"]) if case.is_lstm else prob["gh"])
    dh0, _ = split_state(case, dinit)
    assert_close(dx.transpose(1, 0, 2) if batch_first else dx, ref["dx"], F64_RTOL, "dx")
    assert_close(dh0, ref["dh0"], F64_RTOL, "dh0")
    for name, g in ref["grads"].items():
        assert_close(m.grads[name], g, F64_RTOL, f"grad {name}")


# ---------------------------------------------------------------------------------------------
# train / eval and the forward-backward protocol
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODE_IDS)
def test_eval_mode_keeps_no_cache_and_backward_raises(mode, rng):
    case = Case(mode, 2, True, T=3, B=2, I=3, H=3)
    m = make_layer(case, seed=0)
    assert m.training
    assert m.eval() is m and not m.training
    x = rng.standard_normal((3, 2, 3))
    y, _ = m(x)
    with pytest.raises(RuntimeError, match="eval"):
        m.backward(np.ones_like(y))
    # a pending training cache is dropped by an eval forward
    assert m.train() is m and m.training
    m(x)
    m.eval()
    m(x)
    m.train()
    with pytest.raises(RuntimeError, match="training-mode forward"):
        m.backward(np.ones_like(y))
    with pytest.raises(ValueError, match="expected to be a bool"):  # as torch.nn.Module
        m.eval().train("False")
    assert not m.training


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_eval_forward_holds_no_per_step_memory(mode):
    """In training the layer keeps the gates; in eval only its kernel work buffer, whose
    size does not depend on the sequence length."""
    case = Case(mode, 1, False, T=2000, B=4, I=8, H=32)
    m = make_layer(case, seed=0)
    held = {}
    for training, T in ((True, 2000), (False, 2000), (False, 8000)):
        m.train(training)
        tracemalloc.start()
        try:
            y, s = m(np.ones((T, 4, 8)))
            del y, s
            held[training, T] = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
    gates_bytes = 2000 * 4 * 32 * 8      # at least [T*B, G*H] float64 with G >= 1
    assert held[True, 2000] > gates_bytes
    # the work buffer: a chunk of steps' gates plus packed weights, the same for any T
    assert held[False, 2000] < gates_bytes / 2
    assert held[False, 8000] <= held[False, 2000], held


def test_backward_twice_raises_and_forward_rearms(rng):
    m = lstmfast.LSTM(3, 4, seed=0, dtype=np.float64)
    x = rng.standard_normal((3, 2, 3))
    y, _ = m(x)
    m.backward(np.ones_like(y))
    with pytest.raises(RuntimeError, match="only one backward"):
        m.backward(np.ones_like(y))
    y, _ = m(x)
    m.backward(np.ones_like(y))


@pytest.mark.parametrize("spoil", ["read-only", "float32", "replaced-shape"])
def test_backward_with_unusable_grads_raises_before_touching_the_cache(rng, spoil):
    """A grads array the kernels cannot write (here layer 0's, reached after layer 1's
    kernel) is refused up front; the cache is intact, so the corrected retry is exact.
    It was refused between the two layers' kernels, after layer 1's had overwritten the
    cache, and the retry returned wrong gradients without an error."""
    make = lambda: lstmfast.LSTM(3, 4, 2, seed=0, dtype=np.float64)
    x, dy = rng.standard_normal((5, 2, 3)), rng.standard_normal((5, 2, 4))
    ref = make()
    ref(x)
    want = ref.backward(dy)[0]
    m = make()
    m(x)
    good = m.grads["weight_ih_l0"]
    if spoil == "read-only":
        good.setflags(write=False)
    else:
        m.grads["weight_ih_l0"] = (good.astype(np.float32) if spoil == "float32"
                                   else np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"grads\['weight_ih_l0'\] must be a writable"):
        m.backward(dy)
    good.setflags(write=True)
    m.grads["weight_ih_l0"] = good
    np.testing.assert_array_equal(m.backward(dy)[0], want)
    for k, g in ref.grads.items():
        np.testing.assert_array_equal(m.grads[k], g, err_msg=k)


class _BlockingArray:
    """An array-like whose conversion waits for an event: it holds a call open."""

    def __init__(self, a, entered, release):
        self.a, self.entered, self.release = a, entered, release

    def __array__(self, dtype=None, copy=None):
        self.entered.set()
        assert self.release.wait(10)
        return self.a


@pytest.mark.parametrize("cell", [False, True], ids=["layer", "cell"])
def test_training_calls_from_two_threads_at_once_are_refused(rng, cell):
    """A training layer keeps one pending forward and adds into its grads: a second
    thread's training call during another's is an error, not mixed-up gradients."""
    m = lstmfast.LSTMCell(3, 4, seed=0) if cell else lstmfast.LSTM(3, 4, seed=0)
    x = rng.standard_normal((2, 3) if cell else (5, 2, 3))
    entered, release = threading.Event(), threading.Event()
    with ThreadPoolExecutor(max_workers=1) as pool:
        first = pool.submit(m, _BlockingArray(x, entered, release))
        assert entered.wait(10)
        with pytest.raises(RuntimeError, match="training-mode call in another thread"):
            m(x)
        with pytest.raises(RuntimeError, match="training-mode call in another thread"):
            m.backward(np.ones((2, 4) if cell else (5, 2, 4)))
        release.set()
        out = first.result()
    m.backward(np.ones_like(out[0]))  # the first call's forward is the pending one
    m.eval()
    entered.clear()
    release.clear()
    with ThreadPoolExecutor(max_workers=1) as pool:  # eval calls may overlap
        first = pool.submit(m, _BlockingArray(x, entered, release))
        assert entered.wait(10)
        m(x)
        release.set()
        first.result()


def test_backward_before_forward_raises():
    m = lstmfast.GRU(3, 4, seed=0)
    with pytest.raises(RuntimeError, match="must follow a training-mode forward"):
        m.backward(np.zeros((1, 1, 4)))


@pytest.mark.parametrize("mode", MODE_IDS)
def test_grads_accumulate_and_zero_grad(mode, rng):
    case = Case(mode, 2, True, T=3, B=2, I=3, H=3, lengths=(3, 1))
    prob = make_problem(case, int(rng.integers(2**31)))
    m = loaded(case, prob)
    once = run_layer(m, case, prob)["grads"]
    twice = run_layer(m, case, prob)["grads"]      # no zero_grad in between: accumulates
    for name in once:
        # adding the same terms again: exact up to the order of the additions
        assert_close(twice[name], 2 * once[name], 1e-14, name)
    grads_before = {k: id(g) for k, g in m.grads.items()}
    m.zero_grad()
    assert all(not np.any(g) for g in m.grads.values())
    assert {k: id(g) for k, g in m.grads.items()} == grads_before, "zero_grad works in place"


# ---------------------------------------------------------------------------------------------
# state_dict and repr
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODE_IDS)
def test_state_dict_round_trip(mode, rng):
    case = Case(mode, 2, True, T=3, B=2, I=3, H=3)
    a = make_layer(case, seed=1)
    b = make_layer(case, seed=2)
    sd = a.state_dict()
    assert list(sd) == list(a.params)
    # a copy: changing it changes nothing in the layer
    first = next(iter(sd))
    sd[first][...] = 42.0
    assert not np.any(a.params[first] == 42.0)
    sd = a.state_dict()

    live = {k: p for k, p in b.params.items()}
    b.load_state_dict(sd)
    assert all(b.params[k] is live[k] for k in live), "load_state_dict must copy in place"
    for k in sd:
        assert np.array_equal(b.params[k], a.params[k])
    x = rng.standard_normal((3, 2, 3))
    for u, v in zip(forward_backward(a, x), forward_backward(b, x)):
        assert np.array_equal(u, v)
    # float32 dict into a float64 layer of the same config: values converted exactly
    c = make_layer(case, np.float64, seed=3)
    c.load_state_dict({k: v.astype(np.float32) for k, v in sd.items()})
    for k in sd:
        assert c.params[k].dtype == np.float64
        assert np.array_equal(c.params[k], sd[k].astype(np.float32))


REPRS = [
    (lambda: lstmfast.LSTM(10, 20), "LSTM(10, 20, dtype=float32)"),
    (lambda: lstmfast.LSTM(10, 20, 2, batch_first=True, bidirectional=True, proj_size=5,
                           dropout=0.25, dtype=np.float64),
     "LSTM(10, 20, num_layers=2, batch_first=True, dropout=0.25, bidirectional=True, "
     "proj_size=5, dtype=float64)"),
    (lambda: lstmfast.GRU(3, 7, 3, bias=False, stateful=True),
     "GRU(3, 7, num_layers=3, bias=False, stateful=True, dtype=float32)"),
    (lambda: lstmfast.RNN(4, 6, nonlinearity="relu"),
     "RNN(4, 6, nonlinearity='relu', dtype=float32)"),
    (lambda: lstmfast.RNN(4, 6), "RNN(4, 6, dtype=float32)"),
]


@pytest.mark.parametrize("make, expected", REPRS, ids=[r[1].split(",")[0] + str(i)
                                                      for i, r in enumerate(REPRS)])
def test_repr_shows_the_config(make, expected):
    assert repr(make()) == expected


# ---------------------------------------------------------------------------------------------
# Threads: two layers at once give exactly the serial results
# ---------------------------------------------------------------------------------------------

def thread_job(cls, dtype, seed, **kw):
    rng = np.random.default_rng(seed)
    m = cls(32, 48, 2, bidirectional=True, dtype=dtype, seed=seed, **kw)
    x = rng.standard_normal((40, 12, 32)).astype(dtype)
    lengths = rng.integers(1, 41, 12)
    dy = rng.standard_normal((40, 12, 2 * (kw.get("proj_size") or 48))).astype(dtype)

    def run():
        m.zero_grad()
        y, _ = m(x, lengths=lengths)
        dx, _ = m.backward(dy)
        return [y, dx] + [g.copy() for g in m.grads.values()]
    return run


def test_two_threads_two_layers_bitwise_equal_serial():
    jobs = [thread_job(lstmfast.LSTM, np.float32, 1, proj_size=16),
            thread_job(lstmfast.GRU, np.float64, 2)]
    serial = [job() for job in jobs]
    with ThreadPoolExecutor(max_workers=2) as pool:
        for _ in range(3):
            results = [f.result() for f in [pool.submit(job) for job in jobs]]
            for job_result, expected in zip(results, serial):
                for got, want in zip(job_result, expected):
                    assert np.array_equal(got, want)


def test_one_eval_layer_shared_by_threads_bitwise_equal_serial():
    """An eval layer keeps its work buffer (and packed weights) between calls; calls from
    several threads at once must each get a buffer of their own (same shapes, so each
    would fit the kept one; a shared buffer fails this test)."""
    m = lstmfast.LSTM(24, 40, 2, bidirectional=True, seed=3).eval()
    rng = np.random.default_rng(4)
    xs = [rng.standard_normal((200, 6, 24)).astype(np.float32) for _ in range(4)]
    serial = [m(x)[0] for x in xs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(5):
            for got, want in zip(pool.map(lambda x: m(x)[0], xs), serial):
                assert np.array_equal(got, want)


# ---------------------------------------------------------------------------------------------
# Numerical safety: huge inputs saturate, they do not overflow
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("mode", MODE_IDS)
def test_nan_input_propagates_like_torch(mode, training, dtype, rng):
    """A NaN in one sequence's input makes that sequence's outputs NaN from its step on,
    and leaves the other sequences alone (torch's behaviour; a ReLU written as
    v > 0 ? v : 0 turned NaN into 0)."""
    case = Case(mode, 1, False, T=4, B=3, I=5, H=6)
    m = make_layer(case, dtype, seed=0).train(training)
    x = rng.standard_normal((4, 3, 5))
    x[1, 0, 2] = np.nan
    y, _ = m(x)
    assert np.all(np.isfinite(y[0])) and np.all(np.isfinite(y[:, 1:]))
    assert np.all(np.isnan(y[1:, 0])), "NaN must reach every unit of row 0 from step 1 on"


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("mode", MODE_IDS)
def test_infinite_inputs_propagate_like_the_oracle(mode, dtype, rng):
    """+-inf in the input and the initial state: the same NaN and inf elements as the
    oracle (and torch), forward and backward. sigmoid(-inf) must be exactly 0, so that
    0 * inf is NaN downstream; it was 1/(1 + e^87) and a GRU turned an inf in h0 into
    finite outputs."""
    case = Case(mode, 2, False, T=4, B=4, I=3, H=3, with_state=True)
    prob = make_problem(case, int(rng.integers(2**31)))
    prob["x"][1, 0, 2] = np.inf
    prob["x"][2, 1, 0] = -np.inf
    prob["h0"][0, 2, 1] = np.inf
    prob["h0"][1, 3, 0] = -np.inf
    with np.errstate(all="ignore"):
        ref = oracle(case, prob)
    m = loaded(case, prob, dtype)
    got = run_layer(m, case, prob)
    for name in ("y", "h_n", "dx", "dh0") + (("c_n",) if case.is_lstm else ()):
        a, b = got[name], ref[name]
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=name)
        np.testing.assert_array_equal(np.isposinf(a), np.isposinf(b), err_msg=name)
        finite = np.isfinite(b)
        assert_close(a[finite], b[finite], 1e-5 if dtype == np.float32 else F64_RTOL, name)
    for k, g in ref["grads"].items():
        np.testing.assert_array_equal(np.isnan(m.grads[k]), np.isnan(g), err_msg=k)


@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
@pytest.mark.parametrize("lengths", [None, []], ids=["full", "lengths"])
@pytest.mark.parametrize("mode", MODE_IDS)
def test_empty_batch_gives_empty_results_like_torch(mode, lengths, batch_first):
    """torch.nn accepts a batch of 0 sequences: empty outputs and states, no gradient."""
    case = Case(mode, 2, True, T=4, B=3, I=5, H=6)
    m = make_layer(case, np.float64, seed=0, batch_first=batch_first)
    x = np.zeros((0, 4, 5) if batch_first else (4, 0, 5))
    Hout, LD = case.H_out, 2 * case.D
    for training in (True, False):
        m.train(training)
        y, state = m(x, None, lengths)
        assert y.shape == ((0, 4, case.D * Hout) if batch_first else (4, 0, case.D * Hout))
        states = state if case.is_lstm else (state,)
        assert [s.shape for s in states] == [(LD, 0, Hout)] + \
            ([(LD, 0, case.H)] if case.is_lstm else [])
    m.train()
    m.zero_grad()
    m.record_grad_norms = True
    y, _ = m(x, None, lengths)
    dx, dstate = m.backward(np.zeros_like(y))
    assert dx.shape == x.shape
    assert all(np.all(g == 0) for g in m.grads.values())
    assert m.grad_norms.shape == (LD, 4) and np.all(m.grad_norms == 0)
    m.record_grad_norms = False
    # and the layer still works on a real batch afterwards
    y2, _ = m(np.ones((4, 2, 5)).transpose(1, 0, 2) if batch_first else np.ones((4, 2, 5)))
    assert np.all(np.isfinite(y2))


HUGE = {np.float32: (1e4, -1e4, 1e30, -1e30, 3e38), np.float64: (1e4, -1e4, 1e300, -1e300)}


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("mode", ["lstm", "lstm_proj", "gru", "rnn_tanh"])
def test_huge_inputs_give_finite_results_without_warnings(mode, dtype, rng):
    case = Case(mode, 2, True, T=4, B=5, I=6, H=3)
    m = make_layer(case, dtype, seed=0)
    x = rng.choice(np.array(HUGE[dtype]), size=(4, 5, 6)) * rng.choice([1, -1], size=(4, 5, 6))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(all="raise"):
            y, state = m(x)
            dx, dinit = m.backward(np.ones_like(y), None)
            m.eval()
            y_eval, _ = m(x)
    for name, a in [("y", y), ("y_eval", y_eval), ("dx", dx)] + \
            [(f"state{i}", s) for i, s in enumerate(state if case.is_lstm else (state,))] + \
            [(f"dstate{i}", s) for i, s in enumerate(dinit if case.is_lstm else (dinit,))] + \
            list(m.grads.items()):
        assert np.all(np.isfinite(a)), f"{name} is not finite"
    if not case.P:
        # sigmoid/tanh outputs: |h| <= 1 (LSTM: o * tanh(c); GRU: a mix of tanh and h0 = 0)
        assert np.all(np.abs(y) <= 1)


@pytest.mark.parametrize("make", [
    lambda dt: lstmfast.LSTM(1024, 1024, dtype=dt, seed=5),
    lambda dt: lstmfast.GRUCell(1024, 1024, dtype=dt, seed=5),
    lambda dt: lstmfast.Linear(1000, 5000, dtype=dt, seed=5),
    lambda dt: lstmfast.Embedding(5000, 1000, dtype=dt, seed=5),
], ids=["LSTM", "GRUCell", "Linear", "Embedding"])
def test_parameters_are_initialised_in_their_own_dtype(make):
    """A float32 module is drawn without a float64 copy of any parameter: the peak of
    the construction stays within its parameters and gradients plus one block of 2**20
    float64 draws (a float64 copy of these 3-5M-element weights would add 24-40 MB),
    and a seed still gives the float64 module's values, rounded."""
    tracemalloc.start()
    try:
        m32 = make(np.float32)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    owned = sum(p.nbytes + m32.grads[k].nbytes for k, p in m32.params.items())
    assert max(p.size for p in m32.params.values()) >= 3 << 20
    assert peak <= owned + 8 * (1 << 20) + (1 << 20), (peak, owned)
    m64 = make(np.float64)
    for k, p in m64.params.items():
        assert m32.params[k].dtype == np.float32
        np.testing.assert_array_equal(m32.params[k], p.astype(np.float32))
