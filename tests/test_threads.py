"""Thread-count control: results agree across thread counts and are deterministic."""
import gc
import multiprocessing
import os
import warnings

import numpy as np
import pytest

import lstmfast


@pytest.fixture
def restore_threads():
    yield
    lstmfast.set_num_threads(None)


def _run(kind, threads, dtype, **kw):
    lstmfast.set_num_threads(threads)
    rng = np.random.default_rng(0)
    # large enough (B*H_out*G*H per step, times T) for the kernels to use a team of
    # threads (lf_team_size in csrc/recurrence.c)
    layer = getattr(lstmfast, kind)(24, 80, 2, bidirectional=True, dtype=dtype, seed=1, **kw)
    x = rng.standard_normal((30, 12, 24))
    y, _ = layer(x, lengths=[30, 3, 17, 30, 1, 25, 30, 29, 8, 30, 12, 30])
    dx, _ = layer.backward(rng.standard_normal(y.shape))
    y_eval, _ = layer.eval()(x, lengths=[30, 3, 17, 30, 1, 25, 30, 29, 8, 30, 12, 30])
    return [y, dx, y_eval] + [layer.grads[k] for k in sorted(layer.grads)]


@pytest.mark.parametrize("kind,kw", [("LSTM", {}), ("LSTM", {"proj_size": 40}), ("GRU", {}),
                                     ("RNN", {})], ids=["lstm", "lstm_proj", "gru", "rnn"])
def test_thread_counts_agree(restore_threads, kind, kw):
    one = _run(kind, 1, np.float64, **kw)
    for threads in (2, 3):
        many = _run(kind, threads, np.float64, **kw)
        # the training forward (narrow input: no BLAS) computes every element the same
        # way whichever thread takes its chunk of units; inference at this H (80: chunks
        # of 32 units do not share out evenly) splits the batch between the threads,
        # whose row tiles then differ (rounding only, checked below)
        np.testing.assert_array_equal(one[0], many[0])
        for a, b in zip(one, many):
            # float64; only the BLAS row split differs between thread counts
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)
        again = _run(kind, threads, np.float64, **kw)
        for a, b in zip(many, again):
            np.testing.assert_array_equal(a, b)   # deterministic for a fixed count


def test_float32_thread_counts_agree(restore_threads):
    one = _run("LSTM", 1, np.float32)
    two = _run("LSTM", 2, np.float32)
    for a, b in zip(one, two):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_set_num_threads_validates(restore_threads):
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="positive int"):
            lstmfast.set_num_threads(bad)
    lstmfast.set_num_threads(3)
    assert lstmfast.get_num_threads() == 3
    lstmfast.set_num_threads(np.int64(2))  # numpy integers too, as every size argument
    assert lstmfast.get_num_threads() == 2 and type(lstmfast.get_num_threads()) is int
    for bad in (np.float64(2), np.True_):
        with pytest.raises(ValueError, match="positive int"):
            lstmfast.set_num_threads(bad)
    lstmfast.set_num_threads(None)
    assert lstmfast.get_num_threads() >= 1


def test_set_num_threads_refuses_what_the_kernels_cannot_take(restore_threads):
    """The kernels take the count as a C int: a larger one was accepted and then made
    every layer call fail with OverflowError."""
    with pytest.raises(ValueError, match="at most 2\\*\\*31-1"):
        lstmfast.set_num_threads(2**40)
    lstmfast.set_num_threads(2**31 - 1)  # accepted, and the kernels clamp it
    y, _ = lstmfast.LSTM(3, 4, seed=0)(np.ones((2, 1, 3)))
    assert y.shape == (2, 1, 4)


def _team_layer():
    """An eval layer and input large enough for a team of threads (see _run)."""
    rng = np.random.default_rng(3)
    layer = lstmfast.LSTM(24, 80, seed=2).eval()
    return layer, rng.standard_normal((30, 12, 24))


def _os_threads():
    return len(os.listdir("/proc/self/task"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_helper_threads_are_kept_and_stopped(restore_threads):
    """A layer wakes the same helper threads on every call (none started per call, none
    left running when it is gone), growing its team when allowed more threads."""
    lstmfast.set_num_threads(1)
    layer, x = _team_layer()
    want = layer(x)[0]
    before = _os_threads()
    for threads, helpers in ((2, 1), (2, 1), (3, 2), (2, 2)):
        lstmfast.set_num_threads(threads)
        np.testing.assert_array_equal(layer(x)[0], want)
        assert _os_threads() == before + helpers
    layer.train()
    y, _ = layer(x)
    layer.backward(np.ones_like(y))
    assert _os_threads() == before + 2  # training uses the same helpers
    del layer
    gc.collect()
    assert _os_threads() == before


def _child_output(layer, x, conn):
    conn.send(layer(x)[0])
    conn.close()


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(),
                    reason="needs fork")
def test_forked_child_starts_its_own_helpers(restore_threads):
    """A fork copies the layer but not its helper threads: the child must start its own,
    not wait for the parent's."""
    lstmfast.set_num_threads(2)
    layer, x = _team_layer()
    want = layer(x)[0]
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_output, args=(layer, x, child))
    with warnings.catch_warnings():  # Python >= 3.12 warns of fork in a threaded process
        warnings.simplefilter("ignore", DeprecationWarning)
        proc.start()
    got = parent.recv() if parent.poll(60) else None
    proc.join(10)
    if proc.is_alive():
        proc.kill()
    assert got is not None, "the forked child did not finish its forward"
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(layer(x)[0], want)  # the parent's helpers still work
