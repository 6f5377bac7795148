"""Layers keep their kernel work buffer between calls, and in eval mode the packed
weights in it: every later call must still see the weights as they are now."""
import numpy as np
import pytest

import lstmfast

SHAPES = dict(I=24, H=37, T=7, B=3)  # H: whole and torn vectors in the panels


def _layer(kind, proj, dtype, seed=0):
    kw = dict(proj_size=proj) if proj else {}
    cls = {"lstm": lstmfast.LSTM, "gru": lstmfast.GRU, "rnn": lstmfast.RNN}[kind]
    return cls(SHAPES["I"], SHAPES["H"], num_layers=2, bidirectional=True, dtype=dtype,
               seed=seed, **kw)


def _fresh_output(m, x, **kw):
    """The output of a new layer with m's current weights (no kept buffers)."""
    twin = type(m)(m.input_size, m.hidden_size, **_ctor_args(m))
    twin.load_state_dict({k: v.copy() for k, v in m.state_dict().items()})
    twin.eval()
    return twin(x, **kw)[0]


def _ctor_args(m):
    args = dict(num_layers=m.num_layers, bidirectional=m.bidirectional, dtype=m.dtype)
    if m.proj_size:
        args["proj_size"] = m.proj_size
    return args


CASES = [("lstm", 0), ("lstm", 17), ("gru", 0), ("rnn", 0)]


@pytest.mark.parametrize("kind,proj", CASES, ids=[f"{k}-proj{p}" for k, p in CASES])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_in_place_weight_changes_are_seen(kind, proj, dtype):
    rng = np.random.default_rng(1)
    m = _layer(kind, proj, dtype).eval()
    x = rng.standard_normal((SHAPES["T"], SHAPES["B"], SHAPES["I"])).astype(dtype)
    m(x)
    for name in sorted(m.params):
        if not name.startswith("weight"):
            continue
        w = m.params[name]
        # one element anywhere, and the last one (an edge of the packed panels)
        w.flat[rng.integers(w.size)] += dtype(0.5)
        w.flat[-1] = -w.flat[-1]
        got = m(x)[0]
        np.testing.assert_array_equal(got, _fresh_output(m, x), err_msg=name)
    m.params["weight_hh_l1_reverse"][...] = 0.0  # a whole matrix at once
    np.testing.assert_array_equal(m(x)[0], _fresh_output(m, x))


def test_buffers_survive_any_sequence_of_calls():
    """Steps of one, training, eval, other batch sizes, lengths and thread counts in
    between: each call's output equals a new layer's."""
    rng = np.random.default_rng(2)
    m = _layer("lstm", 0, np.float64)
    I = SHAPES["I"]
    calls = [(True, 5, 3, None, 2), (False, 5, 3, None, 2), (False, 1, 3, None, 1),
             (False, 6, 2, [6, 2], 2), (True, 1, 4, None, 2), (False, 9, 4, None, 1),
             (False, 9, 4, None, 2)]
    for training, T, B, lengths, threads in calls:
        lstmfast.set_num_threads(threads)
        try:
            x = rng.standard_normal((T, B, I))
            kw = {} if lengths is None else dict(lengths=lengths)
            m.train(training)
            got = m(x, **kw)[0]
            if training:
                m.backward(np.ones_like(got))
                for p, g in zip(m.params.values(), m.grads.values()):
                    p -= 0.1 * g  # an optimizer step, in place
                m.zero_grad()
                continue
            np.testing.assert_array_equal(got, _fresh_output(m, x, **kw))
        finally:
            lstmfast.set_num_threads(None)


def test_large_training_buffers_are_not_kept(monkeypatch):
    """A training call's work buffer is kept only while small (the backward's holds every
    h_{t-1}: keeping a large one would hold a second set of activations); inference
    keeps its buffer, which holds the packed weights, whatever its size."""
    from lstmfast import _kernels

    def kept(m):
        return {k[0] + ("-train" if k[1] is True else ""): len(v)
                for k, v in m._scratch.items() if k != "pools"}

    x = np.ones((6, 2, 8))
    m = lstmfast.LSTM(8, 16, dtype=np.float64)
    y, _ = m(x)
    m.backward(np.ones_like(y))
    assert kept(m) == {"forward-train": 1, "backward": 1}
    monkeypatch.setattr(_kernels, "KEEP_BYTES", 0)
    m = lstmfast.LSTM(8, 16, dtype=np.float64)
    y, _ = m(x)
    m.backward(np.ones_like(y))
    m.eval()(x)
    assert kept(m) == {"forward-train": 0, "backward": 0, "forward": 1}


def test_copies_and_pickles_leave_the_buffers_out():
    import copy
    import pickle
    rng = np.random.default_rng(5)
    m = _layer("lstm", 0, np.float32).eval()
    x = rng.standard_normal((SHAPES["T"], SHAPES["B"], SHAPES["I"])).astype(np.float32)
    want = m(x)[0]
    assert m._scratch
    for twin in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert twin._scratch == {}
        np.testing.assert_array_equal(twin(x)[0], want)
        twin.params["weight_hh_l0"] *= 2  # the twin's weights are its own
        np.testing.assert_array_equal(m(x)[0], want)


@pytest.mark.parametrize("kind,proj", CASES, ids=[f"{k}-proj{p}" for k, p in CASES])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_frozen_copy_equals_the_layer_and_ignores_its_later_changes(kind, proj, dtype):
    """freeze(): the kept panels are used unchecked, so the copy must be one nobody
    changes: its weights are its own, read-only; the layer it came from moves on."""
    rng = np.random.default_rng(3)
    m = _layer(kind, proj, dtype).eval()
    x = rng.standard_normal((SHAPES["T"], SHAPES["B"], SHAPES["I"])).astype(dtype)
    lengths = np.array([7, 5, 2])
    frozen = m.freeze()
    want, want_len = m(x)[0], m(x, lengths=lengths)[0]
    for _ in range(2):  # the first call packs, the second uses the packed weights
        np.testing.assert_array_equal(frozen(x)[0], want)
        np.testing.assert_array_equal(frozen(x, lengths=lengths)[0], want_len)
    for w in m.params.values():
        w += dtype(0.25)
    assert not np.array_equal(m(x)[0], want)
    np.testing.assert_array_equal(frozen(x)[0], want)
    for name, w in frozen.params.items():
        with pytest.raises(ValueError, match="read-only"):
            w[...] = 0
        assert not np.shares_memory(w, m.params[name])


def test_frozen_copy_refuses_training_and_loading():
    m = _layer("lstm", 0, np.float32)
    x = np.ones((SHAPES["T"], SHAPES["B"], SHAPES["I"]), np.float32)
    m.backward(np.ones_like(m(x)[0]))  # the layer has gradients; the copy starts at zero
    frozen = m.freeze()
    for name, g in frozen.grads.items():
        assert not g.any() and m.grads[name].any() and not np.shares_memory(g, m.grads[name])
    assert m.training and not frozen.training
    with pytest.raises(RuntimeError, match="frozen"):
        frozen.train()
    with pytest.raises(RuntimeError, match="frozen"):
        frozen.load_state_dict(m.state_dict())
    frozen.eval()  # still allowed: it is already in eval mode


def test_frozen_copy_with_its_weights_made_writable_again_checks_them():
    """Whoever undoes the read-only flag and writes gets the new weights' output: the
    packed weights are trusted only while every parameter is the frozen one, read-only."""
    rng = np.random.default_rng(4)
    m = _layer("gru", 0, np.float64)
    x = rng.standard_normal((SHAPES["T"], SHAPES["B"], SHAPES["I"]))
    frozen = m.freeze()
    frozen(x)
    w = frozen.params["weight_hh_l0"]
    w.flags.writeable = True
    w[0, 0] += 1.0
    np.testing.assert_array_equal(frozen(x)[0], _fresh_output(frozen, x))
    frozen.params["weight_ih_l1"] = frozen.params["weight_ih_l1"] * 2  # a new array
    np.testing.assert_array_equal(frozen(x)[0], _fresh_output(frozen, x))


def test_frozen_copy_survives_pickling_and_copies():
    import copy
    import pickle
    rng = np.random.default_rng(5)
    m = _layer("lstm", 17, np.float32)
    x = rng.standard_normal((SHAPES["T"], SHAPES["B"], SHAPES["I"])).astype(np.float32)
    frozen = m.freeze()
    want = frozen(x)[0]
    for twin in (pickle.loads(pickle.dumps(frozen)), copy.deepcopy(frozen)):
        assert all(not p.flags.writeable for p in twin.params.values())
        with pytest.raises(RuntimeError, match="frozen"):
            twin.train()
        np.testing.assert_array_equal(twin(x)[0], want)
        np.testing.assert_array_equal(twin(x)[0], want)


def test_inference_reads_the_input_in_place_and_training_keeps_its_own_copy():
    """An inference call reads x while it runs and copies none of it (a read-only x
    works; the call's peak allocation stays below x's size); a training call keeps a
    copy for its backward, so that changing x in between changes nothing."""
    import tracemalloc

    rng = np.random.default_rng(4)
    m = lstmfast.LSTM(512, 2, seed=0)
    x = rng.standard_normal((200, 8, 512)).astype(np.float32)
    want = m.eval()(x.copy())[0]
    ro = x.copy()
    ro.flags.writeable = False
    m(ro)  # warm: the kept work buffer
    tracemalloc.start()
    try:
        got = m(ro)[0]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(got, want)
    assert peak < x.nbytes / 4, (peak, x.nbytes)

    m.train()
    dy = rng.standard_normal(want.shape).astype(np.float32)
    m(x)
    m.backward(dy)
    grads = {k: g.copy() for k, g in m.grads.items()}
    m.zero_grad()
    m(x)
    x[...] = 0
    m.backward(dy)
    for k, g in m.grads.items():
        np.testing.assert_array_equal(g, grads[k], err_msg=k)
