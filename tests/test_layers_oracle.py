"""lstmfast's LSTM / GRU / RNN layers against the float64 numpy oracle (tests/reference.py).

Every test runs one forward and one backward of the layer with the loss
sum(y * gy) + sum(h_n * gh) [+ sum(c_n * gc)] and compares the outputs, the final states,
dx, d(initial state) and every parameter gradient with the oracle's. The eval-mode forward
(a different code path in the kernels: no cache, the input projection in chunks, c kept
in place) is compared too.

Problems are float32-exact (see layer_helpers.f32_exact), so the float32 layer and the
float64 oracle start from identical numbers and one oracle run serves both dtypes and both
layouts; the whole product below therefore costs little and is run for float32 as well.
"""
import functools
import itertools

import numpy as np
import pytest

import lstmfast

from layer_helpers import (
    MODE_IDS, Case, assert_close, assert_results_close, layer_state, make_layer,
    make_problem, oracle, run_layer, to_layout,
)
from reference import numerical_grad

# float64 against float64: only the order of summation differs (BLAS blocking, the merged
# weight-gradient GEMMs), so errors are a few ulps times the depth; measured <= 2e-15.
F64_RTOL = 1e-10
# float32 against the float64 oracle: unit roundoff 6e-8 grows over T*num_layers steps and
# GEMM sums of <= ~40 terms to ~1e-6 of the array's scale (measured <= 7e-7 here).
F32_RTOL = 1e-5
RTOL = {np.float32: F32_RTOL, np.float64: F64_RTOL}
DTYPES = [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")]

# Every problem is drawn from this seed (not from a per-test rng fixture) so that it can be
# cached and shared by the variants of one configuration.
SEED = 20240611


@functools.lru_cache(maxsize=None)
def problem_and_oracle(case):
    """Cached: the float32/float64 and time-major/batch-first variants share one oracle run."""
    prob = make_problem(case, SEED)
    return prob, oracle(case, prob)


def check_case(case, dtype, batch_first):
    prob, ref = problem_and_oracle(case)
    m = make_layer(case, dtype, batch_first)
    m.load_state_dict(prob["params"])
    ours = run_layer(m, case, prob, batch_first)
    rtol = RTOL[dtype]

    # shapes and dtypes as documented
    T, B, LD = case.T, case.B, case.num_layers * case.D
    assert ours["y"].dtype == dtype and ours["dx"].dtype == dtype
    assert ours["y"].shape == (T, B, case.D * case.H_out)
    assert ours["h_n"].shape == (LD, B, case.H_out)
    if case.is_lstm:
        assert ours["c_n"].shape == (LD, B, case.H)
    assert_results_close(ours, ref, case, rtol)

    if case.lengths is not None:
        # past each sequence's end the output is constant zero, so both y and dx are exactly 0
        pad = np.arange(T)[:, None] >= np.asarray(case.lengths)[None, :]      # [T, B]
        assert np.all(ours["y"][pad] == 0), "outputs past a sequence's length must be 0"
        assert np.all(ours["dx"][pad] == 0), "dx past a sequence's length must be 0"

    # the inference path gives the same forward
    m.eval()
    y, state = m(to_layout(prob["x"], batch_first), layer_state(case, prob), prob["lengths"])
    h_n, c_n = state if case.is_lstm else (state, None)
    assert_close(y.transpose(1, 0, 2) if batch_first else y, ref["y"], rtol, "eval y")
    assert_close(h_n, ref["h_n"], rtol, "eval h_n")
    if case.is_lstm:
        assert_close(c_n, ref["c_n"], rtol, "eval c_n")


# ---------------------------------------------------------------------------------------------
# The full product: mode x layers x directions x layout x lengths x initial state x dtype
# ---------------------------------------------------------------------------------------------
# T=4, B=3, I=5, H=3 (proj 2): none a multiple of 8, so every vector loop has a tail.
# lengths (2, 4, 1) is unsorted, has the longest in the middle, and one of length 1.

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_state", [False, True], ids=["zero_state", "given_state"])
@pytest.mark.parametrize("lengths", [None, (2, 4, 1)], ids=["full", "lengths"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2, 3], ids=["L1", "L2", "L3"])
@pytest.mark.parametrize("mode", MODE_IDS)
def test_layer_matches_oracle(mode, num_layers, bidirectional, batch_first, lengths,
                              with_state, dtype):
    case = Case(mode, num_layers, bidirectional, lengths=lengths, with_state=with_state)
    check_case(case, dtype, batch_first)


# ---------------------------------------------------------------------------------------------
# Edge shapes
# ---------------------------------------------------------------------------------------------

def edge_case(name, mode):
    proj = mode == "lstm_proj"
    cases = {
        # every size 1 (a projection needs H >= 2: H=2, proj 1)
        "T1_B1_I1_H1": Case(mode, 2, True, T=1, B=1, I=1, H=2 if proj else 1, with_state=True),
        "T1_lengths": Case(mode, 2, True, T=1, B=3, I=2, H=2, lengths=(1, 1, 1)),
        "B1_lengths": Case(mode, 2, True, T=6, B=1, I=2, H=2, lengths=(4,), with_state=True),
        "I1_H1_L3": Case(mode, 3, False, T=5, B=2, I=1, H=2 if proj else 1, with_state=True),
        "proj_1": Case(mode, 2, True, T=3, B=2, I=2, H=4, proj_size=1, with_state=True),
        # no sequence reaches T, with ties: the trailing steps have no rows at all
        "max_len_below_T_ties": Case(mode, 2, True, T=6, B=4, I=2, H=2, lengths=(3, 1, 3, 2),
                                     with_state=True),
        "lengths_all_T": Case(mode, 2, True, T=3, B=3, I=2, H=2, lengths=(3, 3, 3)),
        "lengths_ascending": Case(mode, 1, True, T=4, B=3, I=2, H=2, lengths=(1, 2, 4),
                                  with_state=True),
        "odd_sizes": Case(mode, 2, True, T=3, B=9, I=17, H=9, proj_size=5,
                          lengths=(3, 1, 2, 3, 3, 1, 2, 2, 1), with_state=True),
        "wide": Case(mode, 1, True, T=2, B=2, I=33, H=20, proj_size=7, with_state=True),
        "no_bias": Case(mode, 2, True, T=4, B=3, I=3, H=3, lengths=(2, 4, 3),
                        with_state=True, bias=False),
        # inputs wider than 512: many rows go to BLAS (split between threads when the
        # step is big enough for two), a few to the kernel's own tiles
        "wide_input_many_rows": Case(mode, 1, True, T=20, B=8, I=520, H=8, with_state=True),
        "wide_input_threads": Case(mode, 1, False, T=32, B=32, I=520, H=64,
                                   proj_size=40, with_state=True),
        "wide_input_few_rows": Case(mode, 2, True, T=5, B=3, I=520, H=9,
                                    lengths=(5, 2, 4), with_state=True),
        # big weight gradients (1/M + 1/N below 0.01 but for the RNN's dW_hh): BLAS
        # computes them, our packed A^T B tiles the rest
        "big_weight_gradients": Case(mode, 1, True, T=3, B=3, I=1100, H=160,
                                     lengths=(3, 1, 2), with_state=True),
    }
    return cases[name]


EDGE_NAMES = ["T1_B1_I1_H1", "T1_lengths", "B1_lengths", "I1_H1_L3", "proj_1",
              "max_len_below_T_ties", "lengths_all_T", "lengths_ascending", "odd_sizes", "wide",
              "no_bias", "wide_input_many_rows", "wide_input_threads", "wide_input_few_rows",
              "big_weight_gradients"]


EDGE_PARAMS = [pytest.param(mode, name, id=f"{mode}-{name}")
               for mode, name in itertools.product(MODE_IDS, EDGE_NAMES)
               if name != "proj_1" or mode == "lstm_proj"]    # proj_size exists for LSTM only


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode, name", EDGE_PARAMS)
def test_edge_shapes_match_oracle(mode, name, dtype):
    check_case(edge_case(name, mode), dtype, batch_first=False)


@pytest.mark.parametrize("mode", MODE_IDS)
def test_lengths_all_T_equals_no_lengths(mode):
    """lengths = [T]*B takes the packed path, and must give what no lengths gives."""
    case = Case(mode, 2, True, T=3, B=3, I=2, H=2, with_state=True)
    prob, _ = problem_and_oracle(case)
    outs = []
    for lengths in (None, [3, 3, 3]):
        m = make_layer(case)
        m.load_state_dict(prob["params"])
        outs.append(run_layer(m, case, dict(prob, lengths=lengths)))
    for key in ("y", "h_n", "c_n", "dx", "dh0", "dc0"):
        if outs[0][key] is not None:
            assert_close(outs[1][key], outs[0][key], F64_RTOL, key)
    for name in outs[0]["grads"]:
        assert_close(outs[1]["grads"][name], outs[0]["grads"][name], F64_RTOL, name)


# ---------------------------------------------------------------------------------------------
# Eval mode over several input-projection chunks
# ---------------------------------------------------------------------------------------------
# Inference projects the input 512 // B steps at a time; B = 130 makes that 3 steps, so
# T = 7 spans three chunks, the last one partial, in both directions.

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("mode", MODE_IDS)
def test_eval_forward_over_several_chunks(mode, with_lengths, dtype):
    B, T = 130, 7
    lengths = None
    if with_lengths:
        lengths = tuple(int(v) for v in np.random.default_rng(SEED).integers(1, T + 1, B))
    _check_eval_forward(Case(mode, 2, True, T=T, B=B, I=3, H=3, lengths=lengths,
                             with_state=True), dtype)


def _check_eval_forward(case, dtype, threads=None):
    """An eval-mode layer's output and final state against the oracle's."""
    prob, ref = problem_and_oracle(case)
    m = make_layer(case, dtype).eval()
    m.load_state_dict(prob["params"])
    with lstmfast.threads.thread_limit(threads):
        y, state = m(prob["x"], layer_state(case, prob), prob["lengths"])
    h_n, c_n = state if case.is_lstm else (state, None)
    rtol = RTOL[dtype]
    assert_close(y, ref["y"], rtol, "y")
    assert_close(h_n, ref["h_n"], rtol, "h_n")
    if case.is_lstm:
        assert_close(c_n, ref["c_n"], rtol, "c_n")


# Inference whose step has fewer chunks of units than threads (32 units of an LSTM or
# GRU, 64 of an RNN) splits the batch: each thread runs its own rows (8 and 8 with 2
# threads) through every step of a chunk of steps (B = 16: 32 steps, so T = 40 makes two
# chunks); lengths make a thread's rows run out before the other's, and in reverse start
# late.

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODE_IDS)
def test_eval_forward_with_the_batch_split_between_threads(mode, dtype):
    lengths = (40, 40, 39, 17, 12, 40, 3, 1, 25, 40, 8, 33, 2, 40, 21, 5)
    case = Case(mode, 2, True, T=40, B=16, I=5, H=64 if mode.startswith("rnn") else 32,
                lengths=lengths, with_state=True, proj_size=20 if mode == "lstm_proj" else 0)
    _check_eval_forward(case, dtype, threads=2)


# ---------------------------------------------------------------------------------------------
# dstate: None, or either element None, means zero
# ---------------------------------------------------------------------------------------------

DSTATES = {
    "none": lambda gh, gc: None,
    "h_only": lambda gh, gc: (gh, None),
    "c_only": lambda gh, gc: (None, gc),
    "list": lambda gh, gc: [gh, gc],
}


@pytest.mark.parametrize("kind", list(DSTATES))
@pytest.mark.parametrize("mode", ["lstm", "lstm_proj"])
def test_lstm_partial_dstate(mode, kind):
    case = Case(mode, 2, True, lengths=(2, 4, 1), with_state=True)
    prob, _ = problem_and_oracle(case)
    dstate = DSTATES[kind](prob["gh"], prob["gc"])
    zeros_h, zeros_c = np.zeros_like(prob["gh"]), np.zeros_like(prob["gc"])
    expected_prob = dict(prob, gh=zeros_h if kind in ("none", "c_only") else prob["gh"],
                         gc=zeros_c if kind in ("none", "h_only") else prob["gc"])
    ref = oracle(case, expected_prob)
    m = make_layer(case)
    m.load_state_dict(prob["params"])
    m(prob["x"], (prob["h0"], prob["c0"]), prob["lengths"])
    dx, (dh0, dc0) = m.backward(prob["gy"], dstate)
    assert_close(dx, ref["dx"], F64_RTOL, "dx")
    assert_close(dh0, ref["dh0"], F64_RTOL, "dh0")
    assert_close(dc0, ref["dc0"], F64_RTOL, "dc0")
    for name, g in ref["grads"].items():
        assert_close(m.grads[name], g, F64_RTOL, name)


@pytest.mark.parametrize("mode", ["gru", "rnn_tanh", "rnn_relu"])
def test_h_only_dstate_none(mode):
    case = Case(mode, 2, True, lengths=(2, 4, 1), with_state=True)
    prob, _ = problem_and_oracle(case)
    ref = oracle(case, dict(prob, gh=np.zeros_like(prob["gh"])))
    m = make_layer(case)
    m.load_state_dict(prob["params"])
    m(prob["x"], prob["h0"], prob["lengths"])
    dx, dh0 = m.backward(prob["gy"])
    assert_close(dx, ref["dx"], F64_RTOL, "dx")
    assert_close(dh0, ref["dh0"], F64_RTOL, "dh0")
    for name, g in ref["grads"].items():
        assert_close(m.grads[name], g, F64_RTOL, name)


# ---------------------------------------------------------------------------------------------
# Dropout between layers
# ---------------------------------------------------------------------------------------------
# The documented contract: the layer's rng is np.random.default_rng(seed); it first draws
# every parameter, in order, from U(-1/sqrt(H), 1/sqrt(H)); then each training forward
# draws, for every layer k >= 1, keep = rng.random(inp.shape) >= p over the layer's *packed*
# input [N, D*H_out] (N = sum(lengths); packed rows are time-major and, within a step,
# ordered by decreasing length, ties in batch order, as torch packs with enforce_sorted=False).
# The tests below replay that stream (checking the replay against the initial parameters),
# unpack the masks to [T, B, F] for the oracle, and compare everything. A black-box check
# of the same thing is the finite-difference test after it.

DROPOUT_P = 0.4


def packed_rows(T, B, lengths):
    """(t, b) of every packed row, in packed order."""
    if lengths is None:
        return [(t, b) for t in range(T) for b in range(B)]
    order = sorted(range(B), key=lambda b: -lengths[b])   # sorted() is stable
    return [(t, b) for t in range(T) for b in order if lengths[b] > t]


def replay_dropout_masks(m, case, seed, forwards):
    """The masks of the next `forwards` training forwards of a fresh layer made with `seed`,
    as the oracle wants them: one list of num_layers-1 arrays [T, B, D*H_out] per forward."""
    rng = np.random.default_rng(seed)
    bound = 1.0 / np.sqrt(case.H)
    for name, p in m.params.items():
        replayed = rng.uniform(-bound, bound, p.shape)
        assert np.array_equal(replayed.astype(m.dtype), p), \
            f"the replay of the init stream disagrees at {name}: the masks would be wrong too"
    rows = packed_rows(case.T, case.B, case.lengths)
    F = case.D * case.H_out
    all_masks = []
    for _ in range(forwards):
        masks = []
        for _k in range(1, case.num_layers):
            keep = rng.random((len(rows), F)) >= DROPOUT_P
            full = np.ones((case.T, case.B, F))    # padded positions: irrelevant, outputs are 0
            for r, (t, b) in enumerate(rows):
                full[t, b] = keep[r] / (1.0 - DROPOUT_P)
            masks.append(full)
        all_masks.append(masks)
    return all_masks


DROPOUT_CASES = [
    pytest.param(Case("lstm", 2, True, lengths=(2, 4, 1), with_state=True), id="lstm_2l_bi_len"),
    pytest.param(Case("lstm_proj", 3, True, with_state=True), id="lstm_proj_3l_bi"),
    pytest.param(Case("gru", 3, False, lengths=(3, 1, 4), with_state=True), id="gru_3l_len"),
    pytest.param(Case("rnn_tanh", 2, True, B=5, lengths=(2, 4, 2, 1, 4)), id="rnn_tanh_2l_bi_len"),
    pytest.param(Case("rnn_relu", 3, True), id="rnn_relu_3l_bi"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", DROPOUT_CASES)
def test_dropout_matches_oracle_with_replayed_masks(case, dtype):
    seed = 77
    prob = make_problem(case, SEED)
    m = make_layer(case, dtype, dropout=DROPOUT_P, seed=seed)
    # the default-initialised parameters (the replay checks them), as float64 for the oracle
    prob["params"] = {k: v.astype(np.float64) for k, v in m.params.items()}
    masks = replay_dropout_masks(m, case, seed, forwards=2)
    for i in range(2):     # the second forward draws fresh masks from the same stream
        m.zero_grad()
        ours = run_layer(m, case, prob)
        assert_results_close(ours, oracle(case, prob, dropout_masks=masks[i]), case, RTOL[dtype])
    # eval mode: no dropout (and no draws: the eval output is the mask-free oracle's)
    m.eval()
    y, _ = m(prob["x"], layer_state(case, prob), prob["lengths"])
    assert_close(y, oracle(case, prob)["y"], RTOL[dtype], "eval y")


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_dropout_one_drops_everything_between_layers(mode):
    """dropout=1 (torch accepts it): layer 1 sees zeros, so it gives what it gives with
    its input weights at zero, and no gradient reaches x."""
    cls = {"lstm": lstmfast.LSTM, "gru": lstmfast.GRU}[mode]
    rng = np.random.default_rng(5)
    x = rng.standard_normal((5, 3, 4))
    a = cls(4, 6, num_layers=2, dropout=1.0, dtype=np.float64, seed=2)
    b = cls(4, 6, num_layers=2, dtype=np.float64, seed=2)
    b.params["weight_ih_l1"][...] = 0
    ya, _ = a(x)
    yb, _ = b(x)
    np.testing.assert_array_equal(ya, yb)
    dx, _ = a.backward(np.ones_like(ya))
    assert np.all(dx == 0) and np.all(a.grads["weight_ih_l1"] == 0)
    assert np.any(a.grads["weight_hh_l1"] != 0)


@pytest.mark.parametrize("case", DROPOUT_CASES[:3])
def test_dropout_same_seed_same_result(case):
    prob = make_problem(case, SEED)
    results = []
    for seed in (5, 5, 6):
        m = make_layer(case, dropout=DROPOUT_P, seed=seed)
        m.load_state_dict(prob["params"])
        results.append(run_layer(m, case, prob))
    same, other = results[1], results[2]
    for key in ("y", "h_n", "dx", "dh0"):
        assert np.array_equal(results[0][key], same[key]), f"{key}: same seed, different result"
    for name in same["grads"]:
        assert np.array_equal(results[0]["grads"][name], same["grads"][name]), name
    # same parameters, another seed: other masks, so another output
    assert not np.allclose(results[0]["y"], other["y"])


@pytest.mark.parametrize("case", [DROPOUT_CASES[0], DROPOUT_CASES[1], DROPOUT_CASES[2]])
def test_dropout_gradient_finite_differences(case):
    """Black box: a fresh layer with the same seed per evaluation draws the same masks, so
    the loss is a smooth function of x and the parameters and its central differences must
    equal the backward of a training forward."""
    seed, prob = 31, make_problem(case, SEED)
    params = {k: v.copy() for k, v in prob["params"].items()}   # perturbed in place below
    x = prob["x"].copy()

    def fresh():
        m = make_layer(case, dropout=DROPOUT_P, seed=seed)
        m.load_state_dict(params)
        return m

    def loss():
        y, state = fresh()(x, layer_state(case, prob), prob["lengths"])
        h_n, c_n = state if case.is_lstm else (state, None)
        total = np.sum(y * prob["gy"]) + np.sum(h_n * prob["gh"])
        return total + (np.sum(c_n * prob["gc"]) if case.is_lstm else 0.0)

    m = fresh()
    ours = run_layer(m, case, dict(prob, x=x))
    # eps = 1e-6: truncation ~eps^2 ~1e-12, rounding ~1e-16/eps ~1e-10 of the loss' scale
    fd_rtol = 1e-6
    assert_close(ours["dx"], numerical_grad(loss, x), fd_rtol, "dx")
    for name, p in params.items():
        assert_close(ours["grads"][name], numerical_grad(loss, p), fd_rtol, name)
    # and the masks are really in play: without dropout the gradient differs
    plain = make_layer(case)
    plain.load_state_dict(params)
    assert not np.allclose(run_layer(plain, case, dict(prob, x=x))["dx"], ours["dx"])
