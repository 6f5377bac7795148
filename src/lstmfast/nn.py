"""Small building blocks around the recurrent layers: Linear, Embedding and losses.

Layers follow ``Module``: ``layer(x)`` runs forward and, in training mode, keeps what the
backward pass needs; ``layer.backward(dy)`` returns the gradient with respect to the input
and *adds* the parameter gradients into ``layer.grads``, as ``loss.backward()`` does in
PyTorch. The cache is released by ``backward``, so each forward pairs with one backward.

Losses are plain functions returning ``(loss, grad)``, with ``grad`` the gradient of the
loss with respect to the prediction, so they hold no state. They compute non-finite
losses as they come; call ``check_finite(loss)`` in the training loop before ``backward``
so that a diverging run stops with an error instead of training on NaNs::

    logits = head(embed(tokens))
    loss, dlogits = cross_entropy(logits, target)
    check_finite(loss)
    embed.backward(head.backward(dlogits))
"""
from __future__ import annotations

import operator

from typing import Any, Optional, Tuple

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from .module import Module

__all__ = ["Linear", "Embedding", "softmax", "cross_entropy", "mse_loss", "check_finite"]

_REDUCTIONS = ("mean", "sum", "none")


def _check_size(name, value):
    try:
        n = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if n <= 0:
        raise ValueError(f"{name} must be positive, got {n}")
    return n


def _as_real(x, name, dtype=None) -> np.ndarray:
    """``x`` as an ndarray of ``dtype`` (default: its own float dtype, float64 for ints).

    Bool, complex, string and object arrays are refused rather than silently cast.
    """
    x = np.asarray(x)
    if x.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be a real numeric array, got dtype {x.dtype}")
    if dtype is None:
        dtype = x.dtype if x.dtype.kind == "f" else np.float64
    return x.astype(dtype, copy=False)


def _as_indices(x, name) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind not in "iu":
        # An empty list comes out of numpy as float64; it holds no bad index.
        if x.size == 0 and x.dtype.kind == "f":
            return x.astype(np.intp)
        raise TypeError(f"{name} must be an integer array, got dtype {x.dtype}")
    return x


def _check_range(idx, n, name):
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise IndexError(f"{name} must be in [0, {n}), got values in "
                         f"[{idx.min()}, {idx.max()}]")


class Linear(Module):
    """``y = x @ weight.T + bias``, as ``torch.nn.Linear``.

    Parameters: ``weight`` [out_features, in_features], ``bias`` [out_features] (absent if
    ``bias=False``), both drawn from U(-1/sqrt(in_features), 1/sqrt(in_features)) as torch
    does. Values are drawn in float64 and then cast, so one seed gives the same layer in
    float32 and float64.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 dtype: DTypeLike = np.float32, seed: Optional[int] = None) -> None:
        super().__init__(dtype)
        self.in_features = _check_size("in_features", in_features)
        self.out_features = _check_size("out_features", out_features)
        rng = np.random.default_rng(seed)
        bound = 1.0 / np.sqrt(self.in_features)
        self._add_random("weight", lambda n: rng.uniform(-bound, bound, n),
                         (self.out_features, self.in_features))
        if bias:
            self._add_random("bias", lambda n: rng.uniform(-bound, bound, n),
                             (self.out_features,))
        self._x: Optional[np.ndarray] = None

    def __repr__(self):
        return (f"Linear(in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={'bias' in self.params}, dtype={self.dtype.name})")

    def __call__(self, x: ArrayLike) -> np.ndarray:
        """x [..., in_features] -> y [..., out_features].

        In training mode ``x`` is kept (not copied) for ``backward``: do not modify it in
        place in between. In eval mode nothing is kept.
        """
        x = _as_real(x, "Linear input", self.dtype)
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"Linear input must have last dimension in_features="
                             f"{self.in_features}, got shape {x.shape}")
        # One 2-D GEMM over all leading dims; matmul on an N-D stack would loop over it.
        x2 = x.reshape(-1, self.in_features)
        y = x2 @ self.params["weight"].T
        if "bias" in self.params:
            y += self.params["bias"]
        self._x = x if self.training else None
        return y.reshape(x.shape[:-1] + (self.out_features,))

    def backward(self, dy: ArrayLike) -> Optional[np.ndarray]:
        """dy [..., out_features] -> dx [..., in_features]; adds into grads."""
        if self._x is None:
            raise RuntimeError("Linear.backward needs a forward pass in training mode first "
                               "(forward in eval mode keeps no cache, and each forward "
                               "allows one backward)")
        x = self._x
        dy = _as_real(dy, "Linear dy", self.dtype)
        expected = x.shape[:-1] + (self.out_features,)
        if dy.shape != expected:
            raise ValueError(f"Linear dy must have shape {expected}, got {dy.shape}")
        self._x = None
        x2 = x.reshape(-1, self.in_features)
        dy2 = dy.reshape(-1, self.out_features)
        self.grads["weight"] += dy2.T @ x2
        if "bias" in self.params:
            self.grads["bias"] += dy2.sum(axis=0)
        return (dy2 @ self.params["weight"]).reshape(x.shape)


class Embedding(Module):
    """A lookup table, as ``torch.nn.Embedding``: ``weight[indices]``.

    Parameter: ``weight`` [num_embeddings, embedding_dim], drawn from N(0, 1) as torch does.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, *,
                 dtype: DTypeLike = np.float32, seed: Optional[int] = None) -> None:
        super().__init__(dtype)
        self.num_embeddings = _check_size("num_embeddings", num_embeddings)
        self.embedding_dim = _check_size("embedding_dim", embedding_dim)
        rng = np.random.default_rng(seed)
        self._add_random("weight", rng.standard_normal,
                         (self.num_embeddings, self.embedding_dim))
        self._idx = None

    def __repr__(self):
        return (f"Embedding({self.num_embeddings}, {self.embedding_dim}, "
                f"dtype={self.dtype.name})")

    def __call__(self, indices: ArrayLike) -> np.ndarray:
        """indices: integer array of any shape [...] -> [..., embedding_dim]."""
        idx = _as_indices(indices, "Embedding indices")
        _check_range(idx, self.num_embeddings, "Embedding indices")
        # Copied: index arrays are small next to the output, and the caller may reuse them.
        self._idx = idx.copy() if self.training else None
        return self.params["weight"][idx]

    def backward(self, dy: ArrayLike) -> Optional[np.ndarray]:
        """dy [..., embedding_dim]: adds into grads["weight"]; returns None (no input grad)."""
        if self._idx is None:
            raise RuntimeError("Embedding.backward needs a forward pass in training mode first "
                               "(forward in eval mode keeps no cache, and each forward "
                               "allows one backward)")
        dy = _as_real(dy, "Embedding dy", self.dtype)
        expected = self._idx.shape + (self.embedding_dim,)
        if dy.shape != expected:
            raise ValueError(f"Embedding dy must have shape {expected}, got {dy.shape}")
        idx, self._idx = self._idx, None
        # add.at, not +=: a repeated index must accumulate every one of its rows.
        np.add.at(self.grads["weight"], idx.reshape(-1), dy.reshape(-1, self.embedding_dim))
        return None


def softmax(x: ArrayLike, axis: int = -1) -> np.ndarray:
    """Softmax along ``axis``, shifted by the max so that large inputs do not overflow."""
    x = _as_real(x, "softmax input")
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _reduce(loss, grad, reduction):
    """Apply ``reduction`` to per-element losses and scale ``grad`` to match."""
    if reduction == "none":
        return loss, grad
    if reduction == "sum":
        return float(loss.sum()), grad
    if loss.size == 0:
        raise ValueError("reduction='mean' over an empty batch is undefined")
    return float(loss.mean()), grad / loss.size


def _check_reduction(reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def cross_entropy(logits: ArrayLike, target: ArrayLike, reduction: str = "mean"
                  ) -> Tuple[Any, np.ndarray]:
    """Softmax cross-entropy over the last axis, as ``torch.nn.functional.cross_entropy``.

    logits [..., C] (float), target [...] (integer class labels in [0, C)).
    Returns ``(loss, dlogits)``: loss is a float for "mean"/"sum" and an array [...] for
    "none"; dlogits [..., C] is the gradient of the returned loss (of its sum for "none",
    i.e. each row is d loss_i / d logits_i).
    """
    _check_reduction(reduction)
    logits = _as_real(logits, "cross_entropy logits")
    if logits.ndim == 0:
        raise ValueError("cross_entropy logits must have a class axis, got a scalar")
    n_classes = logits.shape[-1]
    target = _as_indices(target, "cross_entropy target")
    if target.shape != logits.shape[:-1]:
        raise ValueError(f"cross_entropy target must have shape {logits.shape[:-1]} "
                         f"(logits shape without the class axis), got {target.shape}")
    if target.size and (target.min() < 0 or target.max() >= n_classes):
        raise ValueError(f"cross_entropy target labels must be in [0, {n_classes}), got "
                         f"values in [{target.min()}, {target.max()}]")
    # log-softmax via the max shift: exp never sees a positive argument, so logits of any
    # size stay finite, and log(sum) >= 0 never underflows to log(0).
    z = logits - logits.max(axis=-1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    t = target[..., None]
    loss = -np.take_along_axis(log_p, t, axis=-1)[..., 0]
    grad = np.exp(log_p)
    np.put_along_axis(grad, t, np.take_along_axis(grad, t, axis=-1) - 1, axis=-1)
    return _reduce(loss, grad, reduction)


def mse_loss(pred: ArrayLike, target: ArrayLike, reduction: str = "mean"
             ) -> Tuple[Any, np.ndarray]:
    """Squared error, as ``torch.nn.functional.mse_loss``; pred and target share a shape.

    Returns ``(loss, dpred)`` with the same conventions as ``cross_entropy``.
    """
    _check_reduction(reduction)
    pred = _as_real(pred, "mse_loss pred")
    target = _as_real(target, "mse_loss target", pred.dtype)
    if pred.shape != target.shape:
        # torch broadcasts with a warning; a shape slip here is almost always a bug.
        raise ValueError(f"mse_loss pred and target must have the same shape, got "
                         f"{pred.shape} and {target.shape}")
    diff = pred - target
    return _reduce(diff * diff, 2 * diff, reduction)


def check_finite(loss: Any) -> None:
    """Return ``loss`` unchanged if every value is finite, else raise FloatingPointError.

    Meant for the training loop, right after the loss is computed: a NaN or inf loss means
    the run has diverged (learning rate, bad input, overflow), and stepping on it would
    only spread NaNs through the weights.
    """
    arr = np.asarray(loss)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"loss must be a real number or array, got dtype {arr.dtype}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        kind = "nan" if np.isnan(arr).any() else "inf"
        where = ("" if arr.ndim == 0 else
                 f" ({np.count_nonzero(~np.isfinite(arr))} of {arr.size} values are not finite)")
        raise FloatingPointError(f"loss is {kind}{where}: training has diverged or an input "
                                 f"is not finite; check the learning rate and the data")
    return loss
