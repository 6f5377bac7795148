"""Ctrl-C (or any signal handler that raises) stops a long forward or backward within a
fraction of a second, raises in the caller, and leaves the layer as it was: parameters,
gradients, the cache of the last forward (a later backward gives the uninterrupted
answer) and the carried state."""
import os
import signal
import threading
import time

import numpy as np
import pytest

import lstmfast

LATENCY = 0.5  # s from the signal to the exception: the kernels poll every 20 ms


@pytest.fixture(autouse=True)
def ctrl_c_raises():
    """Python's own SIGINT handler, whatever the process started with: a process started
    in the background of a shell without job control ignores SIGINT, and Python then
    leaves it ignored (no KeyboardInterrupt)."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def _interrupt_after(delay, sig=signal.SIGINT):
    """Send sig to this process after delay seconds; returns a list that receives the
    time it was sent."""
    sent = []

    def fire():
        sent.append(time.perf_counter())
        os.kill(os.getpid(), sig)

    t = threading.Timer(delay, fire)
    t.start()
    return sent, t


def _interrupted(fn, delay=0.2, exc=KeyboardInterrupt, sig=signal.SIGINT):
    """Run fn, interrupted after delay; the seconds from the signal to the exception."""
    sent, timer = _interrupt_after(delay, sig)
    try:
        with pytest.raises(exc):
            fn()
    finally:
        timer.cancel()
    assert sent, "the call ended before the signal was sent"
    return time.perf_counter() - sent[0]


def _state(layer):
    return ({k: v.copy() for k, v in layer.params.items()},
            {k: v.copy() for k, v in layer.grads.items()})


def _assert_same(a, b):
    for da, db in zip(a, b):
        assert da.keys() == db.keys()
        for k in da:
            np.testing.assert_array_equal(da[k], db[k])


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_ctrl_c_stops_a_long_forward(training):
    layer = lstmfast.LSTM(512, 512, seed=0, stateful=True).train(training)
    x = np.random.default_rng(0).standard_normal((1200, 32, 512)).astype(np.float32)
    layer(x[:3])  # a cache and a carried state the interrupted call must not replace
    carry = [s.copy() for s in layer._carry]
    cache = layer._cache
    before = _state(layer)
    t0 = time.perf_counter()
    latency = _interrupted(lambda: layer(x))
    took = time.perf_counter() - t0
    assert latency < LATENCY
    _assert_same(_state(layer), before)
    assert layer._cache is cache
    for a, b in zip(layer._carry, carry):
        np.testing.assert_array_equal(a, b)
    # the call it stopped was a long one: the same call runs to its end in far longer
    t0 = time.perf_counter()
    layer.reset_state()
    layer(x)
    assert time.perf_counter() - t0 > 2 * took or time.perf_counter() - t0 > 1.0


@pytest.mark.parametrize("layers, bidirectional, dropout", [(1, False, 0.0), (2, True, 0.3)],
                         ids=["1", "2bi-dropout"])
def test_ctrl_c_in_backward_leaves_gradients_and_cache(layers, bidirectional, dropout):
    """Stopped in the recurrence (almost always: it is most of a backward), the layer is as
    before and its cache still good; a Ctrl-C that lands in the last part, the weight
    gradients, lets the backward finish first. Never anything in between."""
    rng = np.random.default_rng(1)
    make = lambda: lstmfast.LSTM(256, 384, layers, bidirectional=bidirectional,  # noqa: E731
                                 dropout=dropout, seed=0)
    x = rng.standard_normal((2000, 8, 256)).astype(np.float32)
    earlier = {k: rng.standard_normal(v.shape).astype(np.float32)
               for k, v in make().params.items()}
    # the uninterrupted answer, from a twin (same seed: same weights and dropout masks)
    twin = make()
    twin.record_grad_norms = True
    y, _ = twin(x)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    for k, g in twin.grads.items():
        g[...] = earlier[k]
    dx_want, _ = twin.backward(dy)

    layer = make()
    layer.record_grad_norms = True
    y2, _ = layer(x)
    np.testing.assert_array_equal(y2, y)
    for k, g in layer.grads.items():
        g[...] = earlier[k]
    layer.grad_norms = "earlier"
    before = _state(layer)
    assert _interrupted(lambda: layer.backward(dy), delay=0.15) < LATENCY
    if layer.grad_norms == "earlier":  # stopped: as before, and the cache is good
        _assert_same(_state(layer), before)
        dx, _ = layer.backward(dy)
        np.testing.assert_array_equal(dx, dx_want)
    for k in layer.grads:  # either way, the uninterrupted backward's gradients now
        np.testing.assert_array_equal(layer.grads[k], twin.grads[k])
    np.testing.assert_array_equal(layer.grad_norms, twin.grad_norms)
    with pytest.raises(RuntimeError, match="must follow a training-mode forward"):
        layer.backward(dy)  # consumed by the backward that completed


def test_any_signal_handler_that_raises_stops_the_call():
    class Timeout(Exception):
        pass

    def handler(signum, frame):
        raise Timeout

    old = signal.signal(signal.SIGALRM, handler)
    try:
        layer = lstmfast.GRU(512, 512, seed=0).eval()
        x = np.zeros((1500, 32, 512), np.float32)
        assert _interrupted(lambda: layer(x), exc=Timeout, sig=signal.SIGALRM) < LATENCY
    finally:
        signal.signal(signal.SIGALRM, old)


def test_handlers_that_do_not_raise_let_the_call_finish():
    calls = []
    old = signal.signal(signal.SIGALRM, lambda s, f: calls.append(s))
    try:
        layer = lstmfast.LSTM(64, 128, seed=0).eval()
        x = np.random.default_rng(0).standard_normal((3000, 16, 64)).astype(np.float32)
        want, _ = layer(x)
        signal.setitimer(signal.ITIMER_REAL, 0.01, 0.01)
        try:
            got, _ = layer(x)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        np.testing.assert_array_equal(got, want)
        assert calls
    finally:
        signal.signal(signal.SIGALRM, old)


def test_ctrl_c_in_the_torch_dropin():
    torch = pytest.importorskip("torch")
    import lstmfast.torch as lt

    m = lt.LSTM(256, 384, num_layers=2)
    x = torch.randn(2000, 8, 256, requires_grad=True)
    # torch imports modules on first use (y.backward(grad) imports sympy, ~1 s): a
    # Ctrl-C there would leave them half-imported, whoever calls. Not the kernels' part.
    warm, _ = m(x[:2])
    warm.backward(torch.ones_like(warm))
    m.zero_grad()
    x.grad = None
    with torch.no_grad():
        assert _interrupted(lambda: m(x)) < LATENCY
    y, _ = m(x)
    dy = torch.randn(y.shape)
    assert _interrupted(lambda: y.backward(dy, retain_graph=True), delay=0.15) < LATENCY
    assert all(p.grad is None for p in m.parameters()) and x.grad is None
    y.backward(dy)  # the recurrence's cache is recomputed: the same gradients
    ref = torch.nn.LSTM(256, 384, num_layers=2)
    ref.load_state_dict(m.state_dict())
    x2 = x.detach().clone().requires_grad_()
    yr, _ = ref(x2)
    yr.backward(dy)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(m.weight_hh_l0.grad, ref.weight_hh_l0.grad, rtol=1e-3,
                               atol=1e-4)
