"""Tests for the training toolkit: nn (Linear, Embedding, losses), optim and checkpoint.

Gradients are checked by float64 central finite differences; optimizers against
hand-computed steps and, when torch is importable, against torch.optim.
"""
import io
import os

import numpy as np
import pytest
from reference import numerical_grad

from lstmfast.checkpoint import load, save
from lstmfast.module import Module
from lstmfast.nn import Embedding, Linear, check_finite, cross_entropy, mse_loss, softmax
from lstmfast.optim import SGD, Adam, clip_grad_norm, clip_grad_value


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def assert_grad_close(analytic, numeric, rtol=1e-7):
    assert analytic.shape == numeric.shape
    err = np.linalg.norm(analytic - numeric) / max(np.linalg.norm(numeric), 1e-12)
    assert err < rtol, f"relative gradient error {err:.3g}"


class Params(Module):
    """A bare Module holding the given float64 arrays, for optimizer tests."""

    def __init__(self, **arrays):
        super().__init__(np.float64)
        for name, value in arrays.items():
            self._add_param(name, np.array(value, dtype=np.float64))  # a copy: _add_param may alias


# ----------------------------------------------------------------------------- Linear


def test_linear_init(rng):
    lin = Linear(400, 30, seed=0)
    assert lin.params["weight"].shape == (30, 400) and lin.params["bias"].shape == (30,)
    assert lin.params["weight"].dtype == np.float32
    bound = 1 / np.sqrt(400)
    w = lin.params["weight"]
    assert np.abs(w).max() <= bound
    assert w.max() > 0.95 * bound and w.min() < -0.95 * bound  # uniform over the whole range
    np.testing.assert_array_equal(w, Linear(400, 30, seed=0).params["weight"])
    assert not np.array_equal(w, Linear(400, 30, seed=1).params["weight"])
    # One seed, the same layer in both dtypes.
    np.testing.assert_allclose(Linear(400, 30, dtype=np.float64, seed=0).params["weight"], w,
                               rtol=1e-7)
    assert set(Linear(3, 2, bias=False).params) == {"weight"}


def test_linear_forward_leading_dims(rng):
    lin = Linear(4, 3, dtype=np.float64, seed=0)
    x = rng.standard_normal((2, 5, 4))
    y = lin(x)
    assert y.shape == (2, 5, 3)
    expected = np.einsum("abi,oi->abo", x, lin.params["weight"]) + lin.params["bias"]
    np.testing.assert_allclose(y, expected, rtol=1e-12)
    assert lin(x[0, 0]).shape == (3,)


def test_linear_converts_input():
    lin = Linear(2, 3, seed=0)
    y = lin([[1, 2], [3, 4]])  # a list of ints
    assert y.dtype == np.float32 and y.shape == (2, 3)
    y64 = lin(np.array([[1.0, 2.0], [3.0, 4.0]]))
    assert y64.dtype == np.float32
    np.testing.assert_array_equal(y, y64)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_linear_gradients(rng, bias):
    lin = Linear(4, 3, bias=bias, dtype=np.float64, seed=0)
    x = rng.standard_normal((2, 5, 4))
    r = rng.standard_normal((2, 5, 3))  # loss = sum(y * r), so dy = r

    def f():
        return float(np.sum(lin(x) * r))

    lin(x)
    dx = lin.backward(r)
    assert_grad_close(dx, numerical_grad(f, x))
    assert_grad_close(lin.grads["weight"], numerical_grad(f, lin.params["weight"]))
    if bias:
        assert_grad_close(lin.grads["bias"], numerical_grad(f, lin.params["bias"]))


def test_linear_backward_accumulates(rng):
    lin = Linear(4, 3, dtype=np.float64, seed=0)
    x, dy = rng.standard_normal((6, 4)), rng.standard_normal((6, 3))
    lin(x)
    lin.backward(dy)
    once = {k: g.copy() for k, g in lin.grads.items()}
    lin(x)
    lin.backward(dy)
    for k in once:
        np.testing.assert_allclose(lin.grads[k], 2 * once[k], rtol=1e-12)
    lin.zero_grad()
    assert all(not g.any() for g in lin.grads.values())


def test_linear_backward_before_forward():
    lin = Linear(4, 3)
    with pytest.raises(RuntimeError, match="forward pass in training mode"):
        lin.backward(np.zeros((2, 3)))


def test_linear_eval_mode_keeps_no_cache(rng):
    lin = Linear(4, 3)
    x = rng.standard_normal((2, 4))
    lin(x)  # training-mode cache ...
    lin.eval()
    lin(x)  # ... dropped by the eval forward
    with pytest.raises(RuntimeError, match="eval mode keeps no cache"):
        lin.backward(np.zeros((2, 3)))
    assert lin._x is None


def test_linear_one_backward_per_forward(rng):
    lin = Linear(4, 3)
    lin(rng.standard_normal((2, 4)))
    lin.backward(np.ones((2, 3)))
    with pytest.raises(RuntimeError, match="one backward"):
        lin.backward(np.ones((2, 3)))


def test_linear_bad_dy_keeps_cache(rng):
    lin = Linear(4, 3, dtype=np.float64)
    lin(rng.standard_normal((2, 4)))
    with pytest.raises(ValueError, match=r"must have shape \(2, 3\), got \(2, 4\)"):
        lin.backward(np.ones((2, 4)))
    assert lin.backward(np.ones((2, 3))).shape == (2, 4)


@pytest.mark.parametrize("x, exc, msg", [
    (np.zeros((2, 3)), ValueError, r"in_features=4, got shape \(2, 3\)"),
    (np.zeros(()), ValueError, r"in_features=4, got shape \(\)"),
    (np.array([["a", "b", "c", "d"]]), TypeError, "real numeric array"),
    (np.zeros((1, 4), dtype=complex), TypeError, "complex"),
    (np.zeros((1, 4), dtype=bool), TypeError, "bool"),
], ids=["last-dim", "scalar", "str", "complex", "bool"])
def test_linear_bad_input(x, exc, msg):
    with pytest.raises(exc, match=msg):
        Linear(4, 3)(x)


@pytest.mark.parametrize("args, kwargs, exc, msg", [
    ((0, 3), {}, ValueError, "in_features must be positive, got 0"),
    ((3, -1), {}, ValueError, "out_features must be positive, got -1"),
    ((2.5, 3), {}, TypeError, "in_features must be an int, got float"),
    ((2, 3), {"dtype": np.int32}, TypeError, "dtype must be float32 or float64"),
], ids=["zero-in", "neg-out", "float-size", "int-dtype"])
def test_linear_bad_construction(args, kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        Linear(*args, **kwargs)


# -------------------------------------------------------------------------- Embedding


def test_embedding_init_and_forward():
    emb = Embedding(200, 50, seed=0)
    w = emb.params["weight"]
    assert w.shape == (200, 50) and w.dtype == np.float32
    assert abs(w.mean()) < 0.03 and abs(w.std() - 1) < 0.03  # N(0, 1)
    idx = np.array([[3, 0], [199, 3], [5, 5]])
    out = emb(idx)
    assert out.shape == (3, 2, 50)
    np.testing.assert_array_equal(out, w[idx])
    assert emb(7).shape == (50,)
    assert emb([1, 2]).shape == (2, 50)
    assert emb([]).shape == (0, 50)


def test_embedding_gradient_repeated_indices(rng):
    emb = Embedding(5, 3, dtype=np.float64, seed=0)
    idx = np.array([[1, 3, 1], [0, 1, 3]], dtype=np.uint8)
    r = rng.standard_normal((2, 3, 3))

    def f():
        return float(np.sum(emb(idx) * r))

    emb(idx)
    assert emb.backward(r) is None
    g = emb.grads["weight"]
    assert_grad_close(g, numerical_grad(f, emb.params["weight"]))
    np.testing.assert_allclose(g[1], r[0, 0] + r[0, 2] + r[1, 1], rtol=1e-12)
    assert not g[[2, 4]].any()  # rows never looked up get no gradient


def test_embedding_accumulates_and_needs_forward(rng):
    emb = Embedding(4, 2, dtype=np.float64)
    with pytest.raises(RuntimeError, match="forward pass in training mode"):
        emb.backward(np.ones((1, 2)))
    for _ in range(2):
        emb([2])
        emb.backward(np.ones((1, 2)))
    np.testing.assert_array_equal(emb.grads["weight"][2], [2.0, 2.0])
    emb.eval()
    emb([2])
    with pytest.raises(RuntimeError, match="eval mode"):
        emb.backward(np.ones((1, 2)))


@pytest.mark.parametrize("indices, exc, msg", [
    (np.array([1.0, 2.0]), TypeError, "integer array, got dtype float64"),
    (np.array([True, False]), TypeError, "integer array, got dtype bool"),
    (np.array([0, 10]), IndexError, r"must be in \[0, 10\), got values in \[0, 10\]"),
    (np.array([-1, 3]), IndexError, r"must be in \[0, 10\)"),
], ids=["float", "bool", "too-large", "negative"])
def test_embedding_bad_indices(indices, exc, msg):
    with pytest.raises(exc, match=msg):
        Embedding(10, 3)(indices)


def test_embedding_bad_dy_and_construction():
    emb = Embedding(10, 3)
    emb([1, 2])
    with pytest.raises(ValueError, match=r"must have shape \(2, 3\), got \(3, 3\)"):
        emb.backward(np.ones((3, 3)))
    with pytest.raises(ValueError, match="num_embeddings must be positive"):
        Embedding(0, 3)


# ---------------------------------------------------------------------------- losses


def test_softmax(rng):
    x = rng.standard_normal((3, 4))
    p = softmax(x)
    np.testing.assert_allclose(p, np.exp(x) / np.exp(x).sum(-1, keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(softmax(x, axis=0).sum(0), 1.0, rtol=1e-12)
    big = softmax(np.array([1e4, 0.0, -1e4]))
    assert np.isfinite(big).all()
    np.testing.assert_allclose(big, [1.0, 0.0, 0.0], atol=1e-300)


def test_cross_entropy_values():
    loss, grad = cross_entropy(np.zeros((1, 2)), np.array([0]))
    assert loss == pytest.approx(np.log(2), rel=1e-12)
    np.testing.assert_allclose(grad, [[-0.5, 0.5]], rtol=1e-12)
    logits = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]])
    target = np.array([2, 0])
    expected = -np.log(softmax(logits)[[0, 1], target])
    per, _ = cross_entropy(logits, target, reduction="none")
    np.testing.assert_allclose(per, expected, rtol=1e-12)
    assert cross_entropy(logits, target, "sum")[0] == pytest.approx(expected.sum(), rel=1e-12)
    assert cross_entropy(logits, target)[0] == pytest.approx(expected.mean(), rel=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_gradient(rng, reduction):
    logits = rng.standard_normal((2, 3, 5))
    target = rng.integers(0, 5, size=(2, 3))

    def f():
        return float(np.sum(cross_entropy(logits, target, reduction)[0]))

    _, grad = cross_entropy(logits, target, reduction)
    assert grad.shape == logits.shape
    assert_grad_close(grad, numerical_grad(f, logits))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_large_logits(dtype):
    logits = np.array([[1e4, 0.0, -1e4], [1e4, 1e4, -1e4]], dtype=dtype)
    per, grad = cross_entropy(logits, np.array([0, 2]), reduction="none")
    assert np.isfinite(per).all() and np.isfinite(grad).all()
    np.testing.assert_allclose(per, [0.0, 2e4 + np.log(2)], rtol=1e-6)
    np.testing.assert_allclose(grad, [[0, 0, 0], [0.5, 0.5, -1]], atol=1e-6)
    # Shifting all logits by a constant changes nothing.
    base = np.array([[0.3, -1.2, 2.0]])
    shifted = cross_entropy(base + 1e4, np.array([1]))
    np.testing.assert_allclose(shifted[0], cross_entropy(base, np.array([1]))[0], rtol=1e-9)


def test_cross_entropy_against_torch(rng):
    torch = pytest.importorskip("torch")
    logits = rng.standard_normal((4, 3, 6))
    target = rng.integers(0, 6, size=(4, 3))
    for reduction in ["mean", "sum", "none"]:
        t_logits = torch.tensor(logits.reshape(-1, 6), requires_grad=True)
        t_loss = torch.nn.functional.cross_entropy(
            t_logits, torch.tensor(target.reshape(-1)), reduction=reduction)
        t_loss.sum().backward()
        loss, grad = cross_entropy(logits, target, reduction)
        np.testing.assert_allclose(np.reshape(loss, -1), t_loss.detach().numpy().reshape(-1),
                                   rtol=1e-12)
        np.testing.assert_allclose(grad.reshape(-1, 6), t_logits.grad.numpy(), rtol=1e-10,
                                   atol=1e-15)


@pytest.mark.parametrize("logits, target, reduction, exc, msg", [
    (np.zeros((2, 5)), np.array([0, 5]), "mean", ValueError,
     r"labels must be in \[0, 5\), got values in \[0, 5\]"),
    (np.zeros((2, 5)), np.array([-1, 0]), "mean", ValueError, r"in \[0, 5\)"),
    (np.zeros((2, 5)), np.array([0.0, 1.0]), "mean", TypeError, "integer array"),
    (np.zeros((2, 5)), np.array([0, 1, 2]), "mean", ValueError,
     r"must have shape \(2,\) .* got \(3,\)"),
    (np.zeros(()), np.array(0), "mean", ValueError, "class axis"),
    (np.zeros((2, 5), dtype=bool), np.array([0, 1]), "mean", TypeError, "real numeric"),
    (np.zeros((2, 5)), np.array([0, 1]), "avg", ValueError, "reduction must be one of"),
    (np.zeros((0, 5)), np.zeros(0, dtype=int), "mean", ValueError, "empty batch"),
], ids=["label-C", "label-neg", "label-float", "shape", "scalar", "bool", "reduction", "empty"])
def test_cross_entropy_bad_input(logits, target, reduction, exc, msg):
    with pytest.raises(exc, match=msg):
        cross_entropy(logits, target, reduction)


def test_mse_loss(rng):
    pred, target = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    loss, grad = mse_loss(pred, target)
    assert loss == pytest.approx(np.mean((pred - target) ** 2), rel=1e-12)
    assert mse_loss(pred, target, "sum")[0] == pytest.approx(np.sum((pred - target) ** 2),
                                                             rel=1e-12)
    for reduction in ["mean", "sum", "none"]:
        _, grad = mse_loss(pred, target, reduction)
        assert_grad_close(grad, numerical_grad(lambda: float(np.sum(
            mse_loss(pred, target, reduction)[0])), pred))


def test_mse_loss_bad_input():
    with pytest.raises(ValueError, match=r"same shape, got \(3,\) and \(3, 1\)"):
        mse_loss(np.zeros(3), np.zeros((3, 1)))
    with pytest.raises(ValueError, match="reduction must be one of"):
        mse_loss(np.zeros(3), np.zeros(3), reduction="batchmean")


def test_check_finite():
    assert check_finite(1.5) == 1.5
    arr = np.array([0.1, 0.2])
    assert check_finite(arr) is arr
    with pytest.raises(FloatingPointError, match="loss is nan"):
        check_finite(float("nan"))
    with pytest.raises(FloatingPointError, match="loss is inf"):
        check_finite(np.float32(np.inf))
    with pytest.raises(FloatingPointError, match=r"loss is nan \(2 of 3 values are not finite\)"):
        check_finite(np.array([1.0, np.nan, np.inf]))
    with pytest.raises(FloatingPointError, match=r"loss is inf \(1 of 2 values"):
        check_finite(np.array([-np.inf, 0.0]))
    with pytest.raises(TypeError, match="real number"):
        check_finite("0.5")


def test_check_finite_catches_diverged_logits():
    with np.errstate(invalid="ignore"):
        loss, _ = cross_entropy(np.array([[np.inf, 0.0]]), np.array([1]))
    with pytest.raises(FloatingPointError, match="loss is nan"):
        check_finite(loss)


# ---------------------------------------------------------------------------- optimizers

P0 = np.array([1.0, -2.0])
G1 = np.array([0.5, 1.0])
G2 = np.array([-1.0, 0.25])


def two_steps(opt_factory):
    """Run two steps with gradients G1 then G2 (zero_grad in between); return (p1, p2)."""
    m = Params(w=P0)
    w = m.params["w"]
    opt = opt_factory(m)
    m.grads["w"][...] = G1
    opt.step()
    p1 = w.copy()
    opt.zero_grad()
    assert not m.grads["w"].any()
    m.grads["w"][...] = G2
    opt.step()
    assert m.params["w"] is w  # updated in place
    return p1, w.copy()


@pytest.mark.parametrize("kwargs, expected1, expected2", [
    ({}, [0.95, -2.1], [1.05, -2.125]),
    ({"momentum": 0.9}, [0.95, -2.1], [1.005, -2.215]),
    ({"momentum": 0.9, "nesterov": True}, [0.905, -2.19], [1.0545, -2.3185]),
    ({"weight_decay": 0.01}, [0.949, -2.098], [1.048051, -2.120902]),
], ids=["plain", "momentum", "nesterov", "weight-decay"])
def test_sgd_hand_computed(kwargs, expected1, expected2):
    # By hand, lr = 0.1, p0 = [1, -2], g1 = [0.5, 1], g2 = [-1, 0.25]:
    # momentum: buf1 = g1, buf2 = 0.9 g1 + g2 = [-0.55, 1.15]
    # nesterov: step with g + 0.9 buf: 1.9 g1 = [0.95, 1.9], then g2 + 0.9 buf2 = [-1.495, 1.285]
    # weight decay: g1 + 0.01 p0 = [0.51, 0.98], then g2 + 0.01 p1 = [-0.99051, 0.22902]
    p1, p2 = two_steps(lambda m: SGD(m, lr=0.1, **kwargs))
    np.testing.assert_allclose(p1, expected1, rtol=1e-12)
    np.testing.assert_allclose(p2, expected2, rtol=1e-12)


def adam_oracle(p, grads, lr, b1, b2, eps, wd):
    """Textbook Adam with bias-corrected moments, for a list of gradients."""
    p, m, v = p.copy(), np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


def test_adam_first_step_by_hand():
    p1, _ = two_steps(lambda m: Adam(m, lr=0.1))
    # Step 1: m_hat = g, v_hat = g**2, so the step is lr * g / (|g| + eps).
    np.testing.assert_allclose(p1, P0 - 0.1 * G1 / (np.abs(G1) + 1e-8), rtol=1e-14)


@pytest.mark.parametrize("wd", [0.0, 0.1], ids=["no-wd", "wd"])
def test_adam_against_oracle(rng, wd):
    grads = [rng.standard_normal(2) for _ in range(6)]
    m = Params(w=P0)
    opt = Adam(m, lr=0.05, betas=(0.8, 0.99), eps=1e-6, weight_decay=wd)
    for g in grads:
        opt.zero_grad()
        m.grads["w"] += g
        opt.step()
    np.testing.assert_allclose(m.params["w"], adam_oracle(P0, grads, 0.05, 0.8, 0.99, 1e-6, wd),
                               rtol=1e-12)


def test_optimizer_takes_several_modules_once():
    a, b = Params(w=np.ones(2)), Params(v=np.ones(3))
    opt = SGD([a, b, a], lr=0.5)  # a listed twice is stepped once
    a.grads["w"][...] = 1.0
    b.grads["v"][...] = 2.0
    opt.step()
    np.testing.assert_array_equal(a.params["w"], [0.5, 0.5])
    np.testing.assert_array_equal(b.params["v"], [0.0, 0.0, 0.0])
    opt.zero_grad()
    assert not a.grads["w"].any() and not b.grads["v"].any()


@pytest.mark.parametrize("make, exc, msg", [
    (lambda m: SGD(m, lr=-0.1), ValueError, "lr must be >= 0, got -0.1"),
    (lambda m: SGD(m, lr=0.1, momentum=-0.5), ValueError, "momentum must be >= 0"),
    (lambda m: SGD(m, lr=0.1, nesterov=True), ValueError, "nesterov=True requires momentum"),
    (lambda m: SGD(m, lr=float("nan")), ValueError, "lr must be >= 0, got nan"),
    (lambda m: Adam(m, betas=(1.0, 0.999)), ValueError, r"betas\[0\] must be in \[0, 1\)"),
    (lambda m: Adam(m, betas=(0.9, -0.1)), ValueError, r"betas\[1\]"),
    (lambda m: Adam(m, betas=0.9), ValueError, "betas must be a pair"),
    (lambda m: Adam(m, eps=-1.0), ValueError, "eps must be >= 0"),
    (lambda m: Adam(m, weight_decay=-1.0), ValueError, "weight_decay must be >= 0"),
    (lambda m: SGD(3, lr=0.1), TypeError, "or of parameters .*, got int"),
    (lambda m: SGD([m, "w"], lr=0.1), TypeError, "expected Modules or parameters .*, got str"),
        (lambda m: SGD([np.zeros(3)], lr=0.1), TypeError, "got an array without .grad"),
], ids=["lr", "momentum", "nesterov", "nan-lr", "beta1", "beta2", "betas-shape", "eps", "wd",
        "not-iterable", "not-module", "plain-array"])
def test_optimizer_bad_arguments(make, exc, msg):
    with pytest.raises(exc, match=msg):
        make(Params(w=np.ones(2)))


def _torch_linear_copy(torch, lin):
    t = torch.nn.Linear(lin.in_features, lin.out_features, dtype=torch.float64)
    with torch.no_grad():
        t.weight.copy_(torch.from_numpy(lin.params["weight"]))
        t.bias.copy_(torch.from_numpy(lin.params["bias"]))
    return t


@pytest.mark.parametrize("name, kwargs", [
    ("SGD", {"lr": 0.1}),
    ("SGD", {"lr": 0.1, "momentum": 0.9}),
    ("SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    ("SGD", {"lr": 0.05, "momentum": 0.5, "weight_decay": 0.1}),
    ("Adam", {"lr": 0.01}),
    ("Adam", {"lr": 0.02, "betas": (0.8, 0.95), "eps": 1e-6, "weight_decay": 0.05}),
], ids=["sgd", "momentum", "nesterov-wd", "momentum-wd", "adam", "adam-wd"])
def test_optimizer_against_torch(rng, name, kwargs):
    torch = pytest.importorskip("torch")
    ours = {"SGD": SGD, "Adam": Adam}[name]
    lin = Linear(4, 3, dtype=np.float64, seed=0)
    t_lin = _torch_linear_copy(torch, lin)
    opt, t_opt = ours(lin, **kwargs), getattr(torch.optim, name)(t_lin.parameters(), **kwargs)
    x, target = rng.standard_normal((8, 4)), rng.standard_normal((8, 3))
    for _ in range(5):
        opt.zero_grad()
        _, dy = mse_loss(lin(x), target)
        lin.backward(dy)
        opt.step()
        t_opt.zero_grad()
        t_loss = torch.nn.functional.mse_loss(t_lin(torch.from_numpy(x)), torch.from_numpy(target))
        t_loss.backward()
        t_opt.step()
        np.testing.assert_allclose(lin.params["weight"], t_lin.weight.detach().numpy(),
                                   rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(lin.params["bias"], t_lin.bias.detach().numpy(),
                                   rtol=1e-10, atol=1e-13)
    # The parameters actually moved, so the comparison above means something.
    assert not np.allclose(lin.params["weight"], Linear(4, 3, dtype=np.float64, seed=0)
                           .params["weight"])


def test_training_loop_learns(rng):
    """A tiny classifier: tokens -> Embedding -> Linear -> cross_entropy, trained with Adam."""
    tokens = rng.integers(0, 10, size=64)
    labels = tokens % 3
    emb, head = Embedding(10, 8, seed=0), Linear(8, 3, seed=1)
    opt = Adam([emb, head], lr=0.05)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss, dlogits = cross_entropy(head(emb(tokens)), labels)
        losses.append(check_finite(loss))
        emb.backward(head.backward(dlogits))
        clip_grad_norm([emb, head], 5.0)
        opt.step()
    assert losses[-1] < 0.1 * losses[0]


# ------------------------------------------------------------------------------ clipping


def test_clip_grad_norm():
    a, b = Params(w=np.zeros(2)), Params(v=np.zeros(1))
    a.grads["w"][...] = [3.0, 4.0]
    b.grads["v"][...] = [12.0]
    assert clip_grad_norm([a, b], 20.0) == pytest.approx(13.0, rel=1e-15)
    np.testing.assert_array_equal(a.grads["w"], [3.0, 4.0])  # below max_norm: untouched
    total = clip_grad_norm([a, b], 6.5)
    assert total == pytest.approx(13.0, rel=1e-15)  # the norm before clipping
    coef = 6.5 / (13.0 + 1e-6)
    np.testing.assert_allclose(a.grads["w"], [3 * coef, 4 * coef], rtol=1e-15)
    np.testing.assert_allclose(b.grads["v"], [12 * coef], rtol=1e-15)
    assert clip_grad_norm([a, b], 100.0) == pytest.approx(6.5, rel=1e-6)


def test_clip_grad_norm_other_norms():
    m = Params(w=np.zeros(3))
    m.grads["w"][...] = [1.0, -5.0, 2.0]
    assert clip_grad_norm(m, 100.0, norm_type=1) == pytest.approx(8.0, rel=1e-15)
    assert clip_grad_norm(m, 100.0, norm_type="inf") == pytest.approx(5.0, rel=1e-15)
    assert clip_grad_norm(m, 1.0, norm_type=float("inf")) == pytest.approx(5.0, rel=1e-15)
    np.testing.assert_allclose(m.grads["w"], np.array([1.0, -5.0, 2.0]) / (5 + 1e-6),
                               rtol=1e-15)


def test_clip_grad_norm_large_float32():
    # Squares of 1e20 overflow float32; the norm must still come out right.
    lin = Linear(2, 1)
    lin.grads["weight"][...] = 1e20
    assert clip_grad_norm(lin, 1.0) == pytest.approx(np.sqrt(2) * 1e20, rel=1e-6)
    assert np.linalg.norm(lin.grads["weight"]) == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, "inf"])
def test_clip_grad_norm_against_torch(rng, norm_type):
    torch = pytest.importorskip("torch")
    grads = [rng.standard_normal((3, 4)), rng.standard_normal(5)]
    ours = [Params(g=np.zeros_like(g)) for g in grads]
    tensors = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads]
    for m, t, g in zip(ours, tensors, grads):
        m.grads["g"][...] = g
        t.grad = torch.from_numpy(g.copy())
    total = clip_grad_norm(ours, 1.5, norm_type)
    t_total = torch.nn.utils.clip_grad_norm_(tensors, 1.5, norm_type)
    assert total == pytest.approx(float(t_total), rel=1e-12)
    for m, t in zip(ours, tensors):
        np.testing.assert_allclose(m.grads["g"], t.grad.numpy(), rtol=1e-12)


def test_clip_grad_value():
    m = Params(w=np.zeros(4))
    m.grads["w"][...] = [-3.0, -0.5, 0.2, 7.0]
    assert clip_grad_value(m, 1.0) is None
    np.testing.assert_array_equal(m.grads["w"], [-1.0, -0.5, 0.2, 1.0])


@pytest.mark.parametrize("call, exc, msg", [
    (lambda m: clip_grad_norm(m, -1.0), ValueError, "max_norm must be >= 0"),
    (lambda m: clip_grad_norm(m, 1.0, norm_type=0), ValueError, "norm_type must be > 0"),
    (lambda m: clip_grad_norm(m, 1.0, norm_type="fro"), ValueError, "norm_type must be a number"),
    (lambda m: clip_grad_value(m, -1.0), ValueError, "clip_value must be >= 0"),
    (lambda m: clip_grad_norm(None, 1.0), TypeError, "got NoneType"),
], ids=["max-norm", "norm-type", "norm-type-str", "clip-value", "none"])
def test_clipping_bad_arguments(call, exc, msg):
    with pytest.raises(exc, match=msg):
        call(Params(w=np.zeros(2)))


def test_clip_grad_norm_nonfinite():
    m = Params(w=np.zeros(2))
    m.grads["w"][...] = [np.inf, 1.0]
    with pytest.raises(RuntimeError, match="total norm of order 2.0 of the gradients is inf"):
        clip_grad_norm(m, 1.0, error_if_nonfinite=True)
    np.testing.assert_array_equal(m.grads["w"], [np.inf, 1.0])  # untouched on error


# ---------------------------------------------------------------------------- checkpoint


def make_modules(seed):
    return {"emb": Embedding(6, 4, seed=seed),
            "head": Linear(4, 3, dtype=np.float64, seed=seed + 1)}


def snapshot(modules):
    return {f"{n}.{k}": v.copy() for n, m in modules.items() for k, v in m.params.items()}


def assert_unchanged(modules, before):
    after = snapshot(modules)
    assert after.keys() == before.keys()
    for k in before:
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)


def test_checkpoint_round_trip(tmp_path):
    src, dst = make_modules(0), make_modules(10)
    path = tmp_path / "ckpt"  # no suffix: the file is written exactly here
    save(path, src)
    assert os.listdir(tmp_path) == ["ckpt"]  # and no temporary file left behind
    with np.load(path) as data:
        assert sorted(data.files) == ["emb.weight", "head.bias", "head.weight"]
    weight_before = dst["head"].params["weight"]
    load(path, dst)
    assert dst["head"].params["weight"] is weight_before  # loaded in place
    for name in src:
        for k in src[name].params:
            np.testing.assert_array_equal(dst[name].params[k], src[name].params[k])
            assert dst[name].params[k].dtype == src[name].dtype


def test_checkpoint_casts_to_module_dtype(tmp_path):
    src = {"m": Linear(3, 2, dtype=np.float64, seed=0)}
    dst = {"m": Linear(3, 2, dtype=np.float32, seed=1)}
    save(tmp_path / "c.npz", src)
    load(tmp_path / "c.npz", dst)
    assert dst["m"].params["weight"].dtype == np.float32
    np.testing.assert_array_equal(dst["m"].params["weight"],
                                  src["m"].params["weight"].astype(np.float32))


def test_checkpoint_missing_key_changes_nothing(tmp_path):
    save(tmp_path / "c.npz", {"emb": Embedding(6, 4, seed=0)})
    dst = make_modules(10)
    before = snapshot(dst)
    with pytest.raises(KeyError, match=r"missing keys \['head.bias', 'head.weight'\]"):
        load(tmp_path / "c.npz", dst)
    assert_unchanged(dst, before)  # "emb" matched but was not loaded either


def test_checkpoint_unexpected_key(tmp_path):
    save(tmp_path / "c.npz", make_modules(0))
    dst = {"emb": Embedding(6, 4, seed=3)}
    before = snapshot(dst)
    with pytest.raises(KeyError, match=r"unexpected keys \['head.bias', 'head.weight'\]"):
        load(tmp_path / "c.npz", dst)
    assert_unchanged(dst, before)


def test_checkpoint_shape_mismatch_changes_nothing(tmp_path):
    save(tmp_path / "c.npz", make_modules(0))
    dst = {"emb": Embedding(6, 4, seed=3), "head": Linear(4, 5, seed=4)}
    before = snapshot(dst)
    with pytest.raises(ValueError, match=r"head.weight'\] has shape \(3, 4\), expected \(5, 4\)"):
        load(tmp_path / "c.npz", dst)
    assert_unchanged(dst, before)


def test_checkpoint_non_numeric_array(tmp_path):
    np.savez(tmp_path / "c.npz", **{"m.weight": np.full((2, 3), "x"), "m.bias": np.zeros(2)})
    with pytest.raises(ValueError, match="holds dtype <U1, not real numbers"):
        load(tmp_path / "c.npz", {"m": Linear(3, 2)})


def _corrupt_garbage(path, raw, w):
    path.write_bytes(b"this is not a checkpoint at all" * 10)


def _corrupt_truncated(path, raw, w):
    path.write_bytes(raw[: len(raw) // 2])


def _corrupt_flipped_byte(path, raw, w):
    at = raw.find(w.tobytes()) + 100  # inside the weight's data: only the CRC can tell
    path.write_bytes(raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1:])


def _corrupt_npy(path, raw, w):
    with open(path, "wb") as f:
        np.save(f, w)


def _corrupt_pickled(path, raw, w):
    with open(path, "wb") as f:
        np.savez(f, **{"m.weight": np.array([{}, {}], dtype=object), "m.bias": np.zeros(64)})


def _corrupt_empty(path, raw, w):
    path.write_bytes(b"")


@pytest.mark.parametrize("corrupt, msg", [
    (_corrupt_garbage, "not a valid .npz file"),
    (_corrupt_truncated, "not a valid .npz file"),
    (_corrupt_flipped_byte, "BadZipFile"),
    (_corrupt_npy, "single .npy array"),
    (_corrupt_pickled, "holds dtype object, not real numbers"),
    (_corrupt_empty, "not a valid .npz file"),
], ids=["garbage", "truncated", "flipped-byte", "npy", "pickled", "empty"])
def test_checkpoint_corrupted_file(tmp_path, corrupt, msg):
    src = {"m": Linear(64, 64, dtype=np.float64, seed=0)}
    path = tmp_path / "c.npz"
    save(path, src)
    raw = path.read_bytes()
    corrupt(path, raw, src["m"].params["weight"])
    dst = {"m": Linear(64, 64, dtype=np.float64, seed=1)}
    before = snapshot(dst)
    with pytest.raises(ValueError, match=msg):
        load(path, dst)
    assert_unchanged(dst, before)


def test_checkpoint_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.npz", {"m": Linear(2, 2)})
    with pytest.raises(TypeError, match="modules must be a dict"):
        save(tmp_path / "c.npz", [Linear(2, 2)])
    with pytest.raises(TypeError, match=r"modules\['m'\] must be a Module, got ndarray"):
        save(tmp_path / "c.npz", {"m": np.zeros(2)})
    with pytest.raises(TypeError, match="non-empty strings"):
        save(tmp_path / "c.npz", {"": Linear(2, 2)})
    a, b = Params(**{"b.c": np.zeros(1)}), Params(c=np.zeros(1))
    with pytest.raises(ValueError, match="'a.b.c' is produced by two modules"):
        save(tmp_path / "c.npz", {"a": a, "a.b": b})
    assert not os.path.exists(tmp_path / "c.npz")
    for f in (save, load):  # not "not a valid .npz file": the file object is the problem
        with pytest.raises(TypeError, match="file objects are not supported"):
            f(io.BytesIO(), {"m": Linear(2, 2)})
