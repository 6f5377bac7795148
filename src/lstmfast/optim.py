"""Optimizers and gradient clipping over ``Module`` parameters, with PyTorch's formulas.

An optimizer takes a Module or an iterable of Modules and walks their
``named_parameters()`` on every ``step()``, updating the parameter arrays in place, so
arrays taken from ``module.params`` stay live. Per-parameter state (momentum, Adam moments)
is keyed by (module position, parameter name). The learning rate is the attribute ``lr``
and may be changed between steps.
"""
from __future__ import annotations

import math
from typing import Iterable, Tuple, Union

import numpy as np

from .module import Module

__all__ = ["SGD", "Adam", "clip_grad_norm", "clip_grad_value"]

Modules = Union[Module, Iterable[Module]]


def _as_modules(modules):
    """A Module or an iterable of Modules -> list of distinct Modules, in order."""
    if isinstance(modules, Module):
        return [modules]
    try:
        modules = list(modules)
    except TypeError:
        raise TypeError(f"expected a Module or an iterable of Modules, got "
                        f"{type(modules).__name__}") from None
    out = []
    for m in modules:
        if not isinstance(m, Module):
            raise TypeError(f"expected Modules, got {type(m).__name__}")
        # A module listed twice would otherwise be stepped twice per step().
        if not any(m is o for o in out):
            out.append(m)
    return out


def _check_nonneg(name, value):
    value = float(value)
    if not value >= 0:  # also catches NaN
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


class _Optimizer:
    def __init__(self, modules, lr):
        self.modules = _as_modules(modules)
        self.lr = _check_nonneg("lr", lr)
        self.state = {}

    def _params(self):
        """Yield (state dict, param, grad) for every parameter."""
        for i, m in enumerate(self.modules):
            for name, p, g in m.named_parameters():
                yield self.state.setdefault((i, name), {}), p, g

    def zero_grad(self) -> None:
        for m in self.modules:
            m.zero_grad()


class SGD(_Optimizer):
    """Stochastic gradient descent, as ``torch.optim.SGD`` (dampening 0).

    Per parameter p with gradient g, weight decay wd, momentum mu:
        g = g + wd * p
        buf = g (first step), else buf = mu * buf + g
        g = g + mu * buf if nesterov else buf        (only when mu != 0)
        p = p - lr * g
    """

    def __init__(self, modules: Modules, lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False) -> None:
        super().__init__(modules, lr)
        self.momentum = _check_nonneg("momentum", momentum)
        self.weight_decay = _check_nonneg("weight_decay", weight_decay)
        self.nesterov = bool(nesterov)
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov=True requires momentum > 0")

    def step(self) -> None:
        for state, p, g in self._params():
            if self.weight_decay:
                g = g + self.weight_decay * p
            if self.momentum:
                buf = state.get("momentum_buffer")
                if buf is None:
                    # A copy: g may be the module's grad array, which zero_grad clears.
                    buf = state["momentum_buffer"] = g.copy()
                else:
                    buf *= self.momentum
                    buf += g
                g = g + self.momentum * buf if self.nesterov else buf
            p -= self.lr * g


class Adam(_Optimizer):
    """Adam, as ``torch.optim.Adam`` (L2 weight decay added to the gradient, no amsgrad).

    Per parameter p with gradient g at step t (counted from 1):
        g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        p = p - lr / (1 - b1**t) * m / (sqrt(v) / sqrt(1 - b2**t) + eps)
    """

    def __init__(self, modules: Modules, lr: float = 1e-3,
                 betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        super().__init__(modules, lr)
        try:
            b1, b2 = (float(b) for b in betas)
        except (TypeError, ValueError):
            raise ValueError(f"betas must be a pair of floats, got {betas!r}") from None
        for i, b in enumerate((b1, b2)):
            if not 0.0 <= b < 1.0:
                raise ValueError(f"betas[{i}] must be in [0, 1), got {b}")
        self.betas = (b1, b2)
        self.eps = _check_nonneg("eps", eps)
        self.weight_decay = _check_nonneg("weight_decay", weight_decay)

    def step(self) -> None:
        b1, b2 = self.betas
        for state, p, g in self._params():
            if not state:
                state.update(step=0, exp_avg=np.zeros_like(p), exp_avg_sq=np.zeros_like(p))
            state["step"] += 1
            t = state["step"]
            if self.weight_decay:
                g = g + self.weight_decay * p
            m, v = state["exp_avg"], state["exp_avg_sq"]
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * (g * g)
            # torch's arrangement of the textbook m_hat / (sqrt(v_hat) + eps): the same
            # value, with one array division fewer.
            denom = np.sqrt(v) / math.sqrt(1 - b2**t) + self.eps
            p -= (self.lr / (1 - b1**t)) * m / denom


def _grads(modules):
    return [g for m in _as_modules(modules) for _, _, g in m.named_parameters()]


def clip_grad_norm(modules: Modules, max_norm: float, norm_type: float = 2.0,
                   error_if_nonfinite: bool = False) -> float:
    """Scale all gradients together so their joint norm is at most ``max_norm``.

    As ``torch.nn.utils.clip_grad_norm_``: the total norm is the ``norm_type`` norm of the
    per-array norms (``inf``: the largest absolute value), gradients are multiplied by
    ``min(1, max_norm / (total + 1e-6))``, and the total norm *before* clipping is returned
    as a float. A non-finite total raises RuntimeError if ``error_if_nonfinite``.
    """
    max_norm = _check_nonneg("max_norm", max_norm)
    try:
        norm_type = float(norm_type)  # accepts "inf" as torch does
    except (TypeError, ValueError):
        raise ValueError(f"norm_type must be a number or 'inf', got {norm_type!r}") from None
    if not norm_type > 0:
        raise ValueError(f"norm_type must be > 0 (or inf), got {norm_type}")
    grads = [g for g in _grads(modules) if g.size]  # the inf norm of nothing is an error
    if not grads:
        return 0.0
    # Norms in float64: squares of large float32 gradients would overflow.
    norms = [np.linalg.norm(g.ravel().astype(np.float64, copy=False), ord=norm_type)
             for g in grads]
    total = float(np.linalg.norm(np.array(norms), ord=norm_type))
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"the total norm of order {norm_type} of the gradients is "
                           f"{total}, so they cannot be clipped")
    coef = min(max_norm / (total + 1e-6), 1.0)
    for g in grads:
        g *= coef
    return total


def clip_grad_value(modules: Modules, clip_value: float) -> None:
    """Clip every gradient element into [-clip_value, clip_value], in place."""
    clip_value = _check_nonneg("clip_value", clip_value)
    for g in _grads(modules):
        np.clip(g, -clip_value, clip_value, out=g)
