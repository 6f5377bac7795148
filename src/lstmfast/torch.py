"""Drop-in replacements for ``torch.nn.LSTM``, ``GRU`` and ``RNN`` on the CPU.

Same constructor, call signature (padded or PackedSequence input, optional initial
state, batch_first) and parameter names, so optimizers, ``state_dict`` and
``load_state_dict`` work unchanged. The recurrence runs in lstmfast's kernels through a
``torch.autograd.Function``, on the tensors' own memory (numpy views, no copies).
Importing this module imports torch; importing ``lstmfast`` does not.
"""
import math
from typing import Any

import numpy as np
import torch
from torch.nn.utils.rnn import PackedSequence

from . import layers as _layers

__all__ = ["LSTM", "GRU", "RNN"]


def _autocast_on():
    f = getattr(torch._C, "_is_any_autocast_enabled", None)
    return bool(f()) if f is not None else torch.is_autocast_enabled()


def _check_dtype(what, t, dtype):
    """As torch.nn: no silent conversion to the weights' dtype, except under autocast."""
    if t.dtype != dtype and not _autocast_on():
        raise ValueError(f"{what} must have the type {dtype}, got type {t.dtype}")


def _np(t):
    """A numpy view of a CPU tensor (a contiguous copy first if it is not contiguous)."""
    t = t.detach()
    if t.device.type != "cpu":
        raise ValueError(f"lstmfast runs on the CPU; got a tensor on {t.device}")
    return t.contiguous().numpy()


class _Recurrence(torch.autograd.Function):
    """Every layer and direction at once; inputs are x, the initial states, the weights."""

    @staticmethod
    def forward(ctx, engine, pack, draw_mask, names, training, x, *tensors):
        nstate = 2 if engine._has_cell_state else 1
        init = [_np(s) for s in tensors[:nstate]]
        params = dict(zip(names, (_np(w) for w in tensors[nstate:])))
        y, finals, layers = engine._forward_packed(_np(x), init, pack, training, draw_mask,
                                                   params)
        ctx.engine, ctx.pack, ctx.names = engine, pack, names
        ctx.init, ctx.params, ctx.layers = init, params, layers
        out = torch.from_numpy(y)
        # saved so that autograd's version counters catch in-place changes before backward
        ctx.save_for_backward(x, out, *tensors)
        return (out,) + tuple(torch.from_numpy(f) for f in finals)

    @staticmethod
    def backward(ctx, dy, *dfinal):
        # autograd runs backward with grad mode on exactly when create_graph=True; the
        # gradients computed here have no graph, so a second derivative would be 0
        if torch.is_grad_enabled():
            raise RuntimeError("lstmfast: the recurrence cannot be differentiated twice "
                               "(create_graph=True is not supported)")
        if ctx.layers is None:
            raise RuntimeError("lstmfast: this graph was already backpropagated "
                               "(retain_graph is not supported)")
        ctx.saved_tensors  # raises if any input or the output was modified in place
        engine = ctx.engine
        dfinal = [np.zeros_like(s) if d is None else _np(d) for s, d in zip(ctx.init, dfinal)]
        dy = np.zeros((ctx.pack.rows, ctx.layers[-1][1].shape[1]), engine.dtype) \
            if dy is None else _np(dy)
        grads = {n: np.zeros_like(p) for n, p in ctx.params.items()}
        dx, dinit = engine._backward_packed(ctx.layers, ctx.init, ctx.pack, dy, dfinal,
                                            ctx.params, grads)
        ctx.layers = None
        return (None, None, None, None, None, torch.from_numpy(dx),
                *(torch.from_numpy(d) for d in dinit),
                *(torch.from_numpy(grads[n]) for n in ctx.names))


class _RNNBase(torch.nn.Module):
    _engine_cls: Any = None  # the numpy layer class behind the module

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, device=None, dtype=None, **engine_kw):
        super().__init__()
        if device is not None and torch.device(device).type != "cpu":
            raise ValueError(f"lstmfast runs on the CPU; got device={device}")
        for name, flag in (("bias", bias), ("batch_first", batch_first)):  # torch.nn's checks
            if not isinstance(flag, bool):
                raise TypeError(f"{name} should be of type bool, got: {type(flag).__name__}")
        dtype = dtype or torch.get_default_dtype()
        if dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
            raise TypeError(f"dtype must be a floating point dtype, got {dtype}")
        self._engine_kw = dict(num_layers=num_layers, bias=bias, batch_first=batch_first,
                               dropout=dropout, bidirectional=bidirectional, **engine_kw)
        # The numpy layer validates the configuration and owns the recurrence; its own
        # parameters are unused: the kernels read this module's tensors.
        self._engines = {}
        engine = self._engine(torch.float32, input_size, hidden_size)
        self.input_size, self.hidden_size = input_size, hidden_size
        self.num_layers, self.bias, self.batch_first = num_layers, bool(bias), bool(batch_first)
        self.dropout, self.bidirectional = float(dropout), bool(bidirectional)
        for name, value in engine.params.items():
            self.register_parameter(name, torch.nn.Parameter(
                torch.empty(value.shape, dtype=dtype)))
        self.reset_parameters()

    def _engine(self, dtype, input_size=None, hidden_size=None):
        np_dtype = np.float32 if dtype == torch.float32 else np.float64
        if np_dtype not in self._engines:
            self._engines[np_dtype] = self._engine_cls(
                self.input_size if input_size is None else input_size,
                self.hidden_size if hidden_size is None else hidden_size,
                dtype=np_dtype, **self._engine_kw)
        return self._engines[np_dtype]

    @property
    def _all_weights(self):
        """Parameter names per layer and direction, in torch.nn's order."""
        names = list(self._parameters)
        suffixes = [_layers._suffix(k, d) for k in range(self.num_layers)
                    for d in range(2 if self.bidirectional else 1)]
        return [[n for n in names if n.endswith(sfx)] for sfx in suffixes]

    @property
    def all_weights(self):
        return [[getattr(self, n) for n in group] for group in self._all_weights]

    def flatten_parameters(self):
        """A no-op, as torch.nn's is on the CPU: the kernels read the parameters in place."""

    def reset_parameters(self):
        k = 1.0 / math.sqrt(self.hidden_size)
        with torch.no_grad():
            for p in self.parameters():
                p.uniform_(-k, k)

    def extra_repr(self):
        # torch.nn's own format, so a swapped model prints the same
        s = f"{self.input_size}, {self.hidden_size}"
        if getattr(self, "proj_size", 0):
            s += f", proj_size={self.proj_size}"
        for name, default in (("num_layers", 1), ("bias", True), ("batch_first", False),
                              ("dropout", 0.0), ("bidirectional", False)):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)}"
        return s

    def forward(self, input, hx=None):
        names = list(self._engine(torch.float32).params)
        weights = [getattr(self, n) for n in names]
        dtype = weights[0].dtype
        for n, w in zip(names, weights):
            if w.dtype != dtype:
                raise ValueError(f"every parameter must have the type of {names[0]}, {dtype}; "
                                 f"{n} has type {w.dtype}")
        # half precision runs in float32 (the kernels' narrowest), casts tracked by autograd
        work = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        engine = self._engine(work)
        packed = isinstance(input, PackedSequence)
        if packed:
            data, batch_sizes, sorted_idx, unsorted_idx = input
            x = data
            pack = _layers._Packing.from_batch_sizes(batch_sizes.cpu().numpy())
        else:
            x = input
            if x.dim() not in (2, 3):
                raise ValueError(f"input must be 2-d (unbatched) or 3-d, got {x.dim()}-d")
            unbatched = x.dim() == 2
            if unbatched:
                x = x.unsqueeze(1)
            elif self.batch_first:
                x = x.transpose(0, 1)
            pack = _layers._Packing(x.shape[0], x.shape[1], None)
            x = x.reshape(x.shape[0] * x.shape[1], x.shape[2])
            sorted_idx = unsorted_idx = None
        if x.shape[-1] != self.input_size:
            raise ValueError(f"input must have {self.input_size} features, got {x.shape[-1]}")
        # under autocast another input dtype is computed in the weights' dtype here and
        # returned in the input's
        out_dtype = x.dtype
        _check_dtype("input", x, dtype)
        x = x.to(work)

        shapes = engine._state_shapes(pack.B)
        if hx is None:
            states = [torch.zeros(s, dtype=work) for s in shapes]
        else:
            if engine._has_cell_state and not (isinstance(hx, (tuple, list)) and len(hx) == 2):
                raise ValueError("hx must be a tuple (h_0, c_0) of two tensors, got "
                                 + (f"{len(hx)} items" if isinstance(hx, (tuple, list))
                                    else type(hx).__name__))
            states = list(hx) if engine._has_cell_state else [hx]
            for s in states:
                if not isinstance(s, torch.Tensor):
                    raise TypeError(f"hx must hold tensors, got {type(s).__name__}")
            if not packed and unbatched:
                states = [s.unsqueeze(1) for s in states]
            if sorted_idx is not None:
                states = [s.index_select(1, sorted_idx) for s in states]
            for s, shape in zip(states, shapes):
                if tuple(s.shape) != shape:
                    raise ValueError(f"initial state must have shape {shape}, got "
                                     f"{tuple(s.shape)}")
                _check_dtype("initial state", s, dtype)
            states = [s.to(work) for s in states]
        weights = [w.to(work) for w in weights]

        draw_mask = None
        if self.training and self.dropout > 0:
            def draw_mask(shape):
                mask = torch.empty(shape, dtype=work).bernoulli_(1 - self.dropout)
                return (mask if self.dropout == 1 else mask.div_(1 - self.dropout)).numpy()

        # keep a cache for backward only when autograd will ask for one
        training = torch.is_grad_enabled() and any(
            t.requires_grad for t in [x, *states, *weights])
        y, *finals = _Recurrence.apply(engine, pack, draw_mask, names, training, x, *states,
                                       *weights)
        if out_dtype != work:
            y, finals = y.to(out_dtype), [f.to(out_dtype) for f in finals]
        if unsorted_idx is not None:
            finals = [f.index_select(1, unsorted_idx) for f in finals]
        if packed:
            out = PackedSequence(y, batch_sizes, sorted_idx, unsorted_idx)
        else:
            out = y.reshape(pack.T, pack.B, y.shape[1])
            if unbatched:
                out = out.squeeze(1)
                finals = [f.squeeze(1) for f in finals]
            elif self.batch_first:
                out = out.transpose(0, 1)
        return out, (tuple(finals) if engine._has_cell_state else finals[0])


class LSTM(_RNNBase):
    """``torch.nn.LSTM`` on lstmfast's kernels (CPU). Same arguments, including proj_size."""

    _engine_cls = _layers.LSTM

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None):
        self.proj_size = proj_size
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, device, dtype, proj_size=proj_size)


class GRU(_RNNBase):
    """``torch.nn.GRU`` on lstmfast's kernels (CPU)."""

    _engine_cls = _layers.GRU


class RNN(_RNNBase):
    """``torch.nn.RNN`` on lstmfast's kernels (CPU); nonlinearity "tanh" or "relu"."""

    _engine_cls = _layers.RNN

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None):
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, device, dtype, nonlinearity=nonlinearity)
