"""Single-step cells (LSTMCell, GRUCell, RNNCell) for streaming and hand-written loops.

A cell runs the same kernel as the layers with T = 1. For backpropagation through a
loop of steps, every training-mode call pushes its cache and every ``backward`` pops
the most recent one, so a loop of forwards followed by the reversed loop of backwards
is BPTT.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from . import _kernels
from .threads import get_num_threads
from .layers import _as_float_array, _positive_int, _INT_MAX
from .module import Module

__all__ = ["LSTMCell", "GRUCell", "RNNCell"]


class _CellBase(Module):
    _gates: int  # gates per cell, set by each cell class
    _has_cell_state = False

    def __init__(self, cell, input_size, hidden_size, bias, dtype, seed):
        super().__init__(dtype)
        self.input_size = _positive_int("input_size", input_size)
        self.hidden_size = _positive_int("hidden_size", hidden_size)
        G, H, I = self._gates, self.hidden_size, self.input_size
        if G * H * max(I, H) > _INT_MAX:
            raise ValueError("weights with more than 2**31-1 elements are not supported")
        self.bias = bool(bias)
        self._cell = cell
        self._stack = []
        rng = np.random.default_rng(seed)
        k = 1.0 / np.sqrt(H)
        shapes = [("weight_ih", (G * H, I)), ("weight_hh", (G * H, H))]
        if self.bias:
            shapes += [("bias_ih", (G * H,)), ("bias_hh", (G * H,))]
        for name, shape in shapes:
            self._add_random(name, lambda n: rng.uniform(-k, k, n), shape)

    def __repr__(self):
        extra = "" if self.bias else ", bias=False"
        return (f"{type(self).__name__}({self.input_size}, {self.hidden_size}{extra}, "
                f"dtype={self.dtype.name})")

    def clear_cache(self) -> None:
        """Drop the caches of forwards that will not be backpropagated."""
        self._stack.clear()

    def _check(self, name, a, shape):
        a = _as_float_array(name, a, self.dtype)
        if a.shape != shape:
            raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
        return np.ascontiguousarray(a)

    def _step(self, x, state):
        with self._training_call():
            return self._run_step(x, state)

    def _run_step(self, x, state):
        """Validate, run one step; returns the new state list."""
        x = _as_float_array("x", x, self.dtype)
        unbatched = x.ndim == 1
        if unbatched:
            x = x[None]
        if x.ndim != 2 or x.shape[1] != self.input_size:
            raise ValueError(f"x must be [batch, {self.input_size}] or [{self.input_size}], "
                             f"got shape {x.shape if not unbatched else x.shape[1:]}")
        B, H = x.shape[0], self.hidden_size
        x = np.ascontiguousarray(x)
        names = ("h", "c") if self._has_cell_state else ("h",)
        if state is None:
            state = [np.zeros((B, H), self.dtype) for _ in names]
        else:
            if self._has_cell_state:
                if not isinstance(state, (tuple, list)) or len(state) != 2:
                    raise TypeError(f"state must be a tuple (h, c), got {type(state).__name__}")
            else:
                state = [state]
            shape = (H,) if unbatched else (B, H)
            state = [self._check(n, s, shape).reshape(B, H) for n, s in zip(names, state)]
        if self.training:  # backward reads them later: the caller may reuse its arrays
            x, state = x.copy(), [s.copy() for s in state]
        p = self.params
        y = np.empty((B, H), self.dtype)
        h_n, c_n, cache = _kernels.forward(
            self._cell, x, p["weight_ih"], p["weight_hh"], p.get("bias_ih"), p.get("bias_hh"),
            None, state[0], state[1] if self._has_cell_state else None, 1, None, False,
            self.training, y, 0, get_num_threads())
        if self.training:
            self._stack.append((x, state, y, cache, unbatched))
        new = [h_n, c_n] if self._has_cell_state else [h_n]
        return [s[0] if unbatched else s for s in new]

    def _backward(self, dnew):
        with self._training_call():
            return self._run_backward(dnew)

    def _run_backward(self, dnew):
        if not self.training:
            raise RuntimeError("backward() needs training-mode forwards; this cell is in eval "
                               "mode (call .train())")
        if not self._stack:
            raise RuntimeError("backward() has no forward left to backpropagate: each "
                               "training-mode call allows one backward, in reverse order")
        x, state, y, cache, unbatched = self._stack[-1]
        B, H = y.shape
        shape = (H,) if unbatched else (B, H)
        names = ("dh", "dc") if self._has_cell_state else ("dh",)
        d = [np.zeros((B, H), self.dtype) if g is None else self._check(n, g, shape).reshape(B, H)
             for n, g in zip(names, dnew)]
        dx = np.empty_like(x)
        p, g = self.params, self.grads
        dh0, dc0 = _kernels.backward(
            self._cell, x, p["weight_ih"], p["weight_hh"], None, state[0],
            state[1] if self._has_cell_state else None, 1, None, False, y, 0, cache,
            d[0], 0, np.zeros((B, H), self.dtype), d[1] if self._has_cell_state else None,
            dx, False, g["weight_ih"], g["weight_hh"], g.get("bias_ih"), g.get("bias_hh"), None,
            None, get_num_threads())
        self._stack.pop()
        out = [dx, dh0, dc0] if self._has_cell_state else [dx, dh0]
        return [o[0] if unbatched else o for o in out]


class LSTMCell(_CellBase):
    """One LSTM step, ``torch.nn.LSTMCell``'s equations and parameters.

    ``h, c = cell(x, (h, c))`` with x [B, input_size] (or [input_size]), h and c
    [B, hidden_size] (or None for zeros). ``dx, (dh, dc) = cell.backward(dh_new, dc_new)``
    backpropagates the most recent pending step and accumulates into ``grads``.
    bias: with bias_ih and bias_hh; dtype: float32 or float64; seed: for the initial
    weights, U(-1/sqrt(H), 1/sqrt(H)) as torch (None: fresh entropy). Every
    training-mode call keeps a cache until its backward (``clear_cache()`` drops them);
    in eval mode none is kept.
    """

    _gates = 4
    _has_cell_state = True

    def __init__(self, input_size: int, hidden_size: int, *, bias: bool = True,
                 dtype: DTypeLike = np.float32, seed: Optional[int] = None) -> None:
        super().__init__(_kernels.CELLS["LSTM"], input_size, hidden_size, bias, dtype, seed)

    def __call__(self, x: ArrayLike, state: Optional[Tuple[ArrayLike, ArrayLike]] = None
                 ) -> Tuple[np.ndarray, np.ndarray]:
        h, c = self._step(x, state)
        return h, c

    def backward(self, dh: ArrayLike, dc: Optional[ArrayLike] = None
                 ) -> Tuple[np.ndarray, Tuple[np.ndarray, np.ndarray]]:
        dx, dh0, dc0 = self._backward((dh, dc))
        return dx, (dh0, dc0)


class GRUCell(_CellBase):
    """One GRU step, ``torch.nn.GRUCell``: ``h = cell(x, h)``, ``dx, dh = cell.backward(dh_new)``.
    Arguments as for LSTMCell."""

    _gates = 3

    def __init__(self, input_size: int, hidden_size: int, *, bias: bool = True,
                 dtype: DTypeLike = np.float32, seed: Optional[int] = None) -> None:
        super().__init__(_kernels.CELLS["GRU"], input_size, hidden_size, bias, dtype, seed)

    def __call__(self, x: ArrayLike, h: Optional[ArrayLike] = None) -> np.ndarray:
        return self._step(x, h)[0]

    def backward(self, dh: ArrayLike) -> Tuple[np.ndarray, np.ndarray]:
        dx, dh0 = self._backward((dh,))
        return dx, dh0


class RNNCell(_CellBase):
    """One Elman RNN step, ``torch.nn.RNNCell``; nonlinearity "tanh" or "relu".
    Other arguments as for LSTMCell."""

    _gates = 1

    def __init__(self, input_size: int, hidden_size: int, *, bias: bool = True,
                 nonlinearity: str = "tanh", dtype: DTypeLike = np.float32,
                 seed: Optional[int] = None) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(_kernels.CELLS["RNN_" + nonlinearity.upper()], input_size,
                         hidden_size, bias, dtype, seed)

    def __call__(self, x: ArrayLike, h: Optional[ArrayLike] = None) -> np.ndarray:
        return self._step(x, h)[0]

    def backward(self, dh: ArrayLike) -> Tuple[np.ndarray, np.ndarray]:
        dx, dh0 = self._backward((dh,))
        return dx, dh0
