"""Optimizers and gradient clipping over ``Module`` parameters, with PyTorch's formulas.

An optimizer takes a Module, or an iterable of Modules and parameters (the arrays
``module.parameters()`` hands out, which carry ``.grad``: ``SGD(model.parameters(), lr)``
as in torch), and updates the parameter arrays in place on every ``step()``, so arrays
taken from ``module.params`` stay live. Per-parameter state (momentum, Adam moments)
is keyed by position (and parameter name within a module). The learning rate is the attribute ``lr``
and may be changed between steps.
"""
from __future__ import annotations

import math
from typing import Iterable, Tuple, Union

import numpy as np

from .module import Module, Parameter

__all__ = ["SGD", "Adam", "clip_grad_norm", "clip_grad_value"]

Params = Union[Module, Iterable[Union[Module, Parameter]]]


def _as_params(params):
    """A Module, or an iterable of Modules and parameters (the arrays module.parameters()
    hands out, which carry .grad) -> [(key, param, grad)], each parameter once, in order.
    key names the parameter for the optimizer's state."""
    if isinstance(params, Module):
        params = [params]
    try:
        items = list(params)
    except TypeError:
        raise TypeError(f"expected a Module, or an iterable of Modules or of parameters "
                        f"(module.parameters()), got {type(params).__name__}") from None
    out, seen = [], set()
    for i, item in enumerate(items):
        if isinstance(item, Module):
            pairs = [((i, name), p, item.grads[name]) for name, p in item.params.items()]
        elif isinstance(item, Parameter) and isinstance(item.grad, np.ndarray):
            pairs = [((i, None), item, item.grad)]
        else:
            what = "an array without .grad" if isinstance(item, np.ndarray) else \
                type(item).__name__
            raise TypeError(f"expected Modules or parameters from module.parameters() (which "
                            f"carry .grad), got {what}")
        for key, p, g in pairs:
            # the same memory listed twice would be stepped twice per step()
            ident = (p.__array_interface__["data"][0], p.shape, p.strides)
            if ident not in seen:
                seen.add(ident)
                out.append((key, p, g))
    return out


def _check_nonneg(name, value):
    value = float(value)
    if not value >= 0:  # also catches NaN
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


class _Optimizer:
    def __init__(self, params, lr):
        self.param_list = _as_params(params)
        self.lr = _check_nonneg("lr", lr)
        self.state = {}

    def _params(self):
        """Yield (state dict, param, grad) for every parameter."""
        for key, p, g in self.param_list:
            yield self.state.setdefault(key, {}), p, g

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero every gradient in place (set_to_none: see Module.zero_grad)."""
        for _, _, g in self.param_list:
            g[...] = 0


class SGD(_Optimizer):
    """Stochastic gradient descent, as ``torch.optim.SGD`` (dampening 0).

    Per parameter p with gradient g, weight decay wd, momentum mu:
        g = g + wd * p
        buf = g (first step), else buf = mu * buf + g
        g = g + mu * buf if nesterov else buf        (only when mu != 0)
        p = p - lr * g
    """

    def __init__(self, params: Params, lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False) -> None:
        super().__init__(params, lr)
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

    def __init__(self, params: Params, lr: float = 1e-3,
                 betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, lr)
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


def _grads(params):
    return [g for _, _, g in _as_params(params)]


def clip_grad_norm(params: Params, max_norm: float, norm_type: float = 2.0,
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
    grads = [g for g in _grads(params) if g.size]  # the inf norm of nothing is an error
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


def clip_grad_value(params: Params, clip_value: float) -> None:
    """Clip every gradient element into [-clip_value, clip_value], in place."""
    clip_value = _check_nonneg("clip_value", clip_value)
    for g in _grads(params):
        np.clip(g, -clip_value, clip_value, out=g)
