"""Recurrent layers (LSTM, GRU, vanilla RNN) with PyTorch's equations, names and shapes.

One base class holds the machinery every cell shares: argument checks, layers and
directions, variable lengths (packed internally, the way PyTorch packs sequences),
dropout between layers, stateful carry, and the cache kept for backward. The
recurrence itself runs in the C kernels (csrc/), one call per layer and direction.
"""
from __future__ import annotations

import copy
import warnings
from typing import Any, Optional, Sequence, Tuple, TypeVar, Union

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from . import _kernels
from .threads import get_num_threads
from .module import Module, _from_torch

__all__ = ["LSTM", "GRU", "RNN"]

# h alone (GRU, RNN) or (h, c) (LSTM); arrays or array-likes (torch tensors too)
State = Union[ArrayLike, Tuple[ArrayLike, ArrayLike]]
StateOut = Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]

_INT_MAX = 2**31 - 1


def _positive_int(name, value, minimum=1):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if value > _INT_MAX:
        raise ValueError(f"{name}={value} is too large (BLAS takes 32-bit sizes)")
    return int(value)


def _as_float_array(name, a, dtype) -> np.ndarray:
    """a as an ndarray of `dtype` (None: its own); any real numeric array-like (or torch
    tensor) is accepted."""
    if hasattr(a, "detach") and hasattr(a, "numpy"):  # a torch tensor
        a = _from_torch(a)
    a = np.asarray(a)
    if a.dtype.kind not in "fiub":
        raise TypeError(f"{name} must hold real numbers, got dtype {a.dtype}")
    return a if dtype is None else a.astype(dtype, copy=False)


def _suffix(layer, direction):
    """The end of a parameter's name, as in torch.nn: "_l1", "_l1_reverse"."""
    return f"_l{layer}" + ("_reverse" if direction else "")


class _Packing:
    """How a [T, B] batch maps to the packed time-major rows the kernels use.

    Without lengths the packed layout is the padded one. With lengths the batch is
    sorted by length (the caller never sees it) and step t keeps only the rows still
    running, so no work is done past any sequence's end.
    """

    def __init__(self, T, B, lengths):
        self.T, self.B = T, B
        self.lengths = self.perm = self.inverse = self.index = None
        self.rows = T * B
        if lengths is None:
            return
        if hasattr(lengths, "detach"):
            lengths = _from_torch(lengths)
        elif isinstance(lengths, (list, tuple)) and lengths and \
                all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                    for v in lengths):
            # integers of mixed numpy types (int64 and uint64) would make a float array
            lengths = [int(v) for v in lengths]
        lengths = np.asarray(lengths)
        if lengths.size == 0:  # [] for an empty batch: numpy makes it float
            lengths = lengths.astype(np.int64)
        if lengths.dtype.kind not in "iu":
            raise TypeError(f"lengths must be integers, got dtype {lengths.dtype}")
        if lengths.shape != (B,):
            raise ValueError(f"lengths must have shape ({B},) (one per sequence), "
                             f"got {lengths.shape}")
        if B and (lengths.min() < 1 or lengths.max() > T):
            raise ValueError(f"lengths must lie in [1, {T}] (T={T}), got values in "
                             f"[{lengths.min()}, {lengths.max()}]")
        self.perm = np.argsort(-lengths.astype(np.int64), kind="stable")
        self.inverse = np.argsort(self.perm)
        self.lengths = np.ascontiguousarray(lengths[self.perm], dtype=np.int32)
        running = self.lengths[None, :] > np.arange(T)[:, None]            # [T, B]
        self.index = (np.arange(T)[:, None] * B + self.perm[None, :])[running]
        self.rows = len(self.index)

    @classmethod
    def from_batch_sizes(cls, batch_sizes):
        """The layout of data that is already packed and sorted (a torch PackedSequence)."""
        batch_sizes = np.asarray(batch_sizes, dtype=np.int64)
        self = cls(len(batch_sizes), int(batch_sizes[0]), None)
        # a sequence b runs for as many steps as have more than b rows
        self.lengths = np.ascontiguousarray(
            (batch_sizes[None, :] > np.arange(self.B)[:, None]).sum(1), dtype=np.int32)
        self.rows = int(batch_sizes.sum())
        return self

    def pack(self, a, copy=True):
        """[T, B, F] -> [N, F], contiguous: a new array when copy (a training call's cache
        keeps it, and the caller's may change later), else a view where one will do (an
        inference call reads it only while it runs)."""
        flat = a.reshape(self.T * self.B, a.shape[2])
        if self.index is not None:
            return flat[self.index]
        return np.array(flat, order="C") if copy else np.ascontiguousarray(flat)

    def unpack(self, p):
        """[N, F] -> [T, B, F], zero past each sequence's length."""
        if self.index is None:
            return p.reshape(self.T, self.B, p.shape[1])
        out = np.zeros((self.T * self.B, p.shape[1]), p.dtype)
        out[self.index] = p
        return out.reshape(self.T, self.B, p.shape[1])

    def sort_batch(self, s):
        """State [L*D, B, F] into the packed batch order: a new array, contiguous per slice."""
        return np.array(s, order="C") if self.perm is None else np.ascontiguousarray(s[:, self.perm])

    def unsort_batch(self, s):
        return s if self.perm is None else np.ascontiguousarray(s[:, self.inverse])


_Layer = TypeVar("_Layer", bound="_RNNBase")


class _RNNBase(Module):
    """The layer, direction and length machinery shared by LSTM, GRU and RNN."""

    _gates: int  # gates per cell, set by each cell class
    _has_cell_state = False
    _torch_args: Tuple[str, ...] = ("input_size", "hidden_size", "num_layers", "bias",
                                    "batch_first", "dropout", "bidirectional")
    # False for the torch drop-in's engine, which runs on the torch module's tensors
    _holds_params = True

    def __init__(self, cell, input_size, hidden_size, num_layers, bias, batch_first,
                 dropout, bidirectional, proj_size, dtype, stateful, seed):
        super().__init__(dtype)
        self.input_size = _positive_int("input_size", input_size)
        self.hidden_size = _positive_int("hidden_size", hidden_size)
        self.num_layers = _positive_int("num_layers", num_layers)
        self.proj_size = _positive_int("proj_size", proj_size, minimum=0)
        if self.proj_size >= self.hidden_size:
            raise ValueError(f"proj_size must be smaller than hidden_size ({hidden_size}), "
                             f"got {proj_size}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float, np.floating)) \
                or not 0 <= dropout <= 1:
            raise ValueError(f"dropout must be a number in [0, 1], got {dropout!r}")
        if dropout > 0 and self.num_layers == 1:
            warnings.warn(f"dropout={dropout} acts between layers, so it has no effect with "
                          f"num_layers=1", stacklevel=3)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = float(dropout)
        self.bidirectional = bool(bidirectional)
        self.stateful = bool(stateful)
        self._cell = cell
        self._rng = np.random.default_rng(seed)
        self._cache = None
        self._carry = None
        # Kernel work buffers kept between calls, one per (pass, layer*direction): fresh
        # memory costs page faults on every call. "pools": the helper threads the
        # kernels wake instead of starting threads on every call.
        self._scratch = {}
        # Gradient-flow diagnostic: when set, backward() leaves ||dL/dh_t|| (over the batch)
        # for every layer*direction and step t in grad_norms [num_layers*D, T].
        self.record_grad_norms = False
        self.grad_norms = None

        G, H = self._gates, self.hidden_size
        if G * H > _INT_MAX:
            raise ValueError(f"hidden_size={H} is too large (BLAS takes 32-bit sizes)")
        P = self.proj_size or H
        D = 2 if self.bidirectional else 1
        k = 1.0 / np.sqrt(H)
        for layer in range(self.num_layers if self._holds_params else 0):
            in_size = self.input_size if layer == 0 else D * P
            if G * H * max(in_size, P) > _INT_MAX:
                raise ValueError(f"layer {layer} weights have more than 2**31-1 elements")
            for d in range(D):
                sfx = _suffix(layer, d)
                shapes = [("weight_ih" + sfx, (G * H, in_size)), ("weight_hh" + sfx, (G * H, P))]
                if self.bias:
                    shapes += [("bias_ih" + sfx, (G * H,)), ("bias_hh" + sfx, (G * H,))]
                if self.proj_size:
                    shapes.append(("weight_hr" + sfx, (P, H)))
                for name, shape in shapes:
                    self._add_random(name, lambda n: self._rng.uniform(-k, k, n), shape)

    # --- shapes -------------------------------------------------------------------
    @property
    def _directions(self):
        return 2 if self.bidirectional else 1

    @property
    def _out_size(self):
        return self.proj_size or self.hidden_size

    def _state_shapes(self, B):
        LD = self.num_layers * self._directions
        shapes = [(LD, B, self._out_size)]
        if self._has_cell_state:
            shapes.append((LD, B, self.hidden_size))
        return shapes

    def __getstate__(self):
        # copies and pickles leave out the kernel work buffers (up to twice the weights
        # in eval mode); the next call makes new ones
        state = super().__getstate__()
        state["_scratch"] = {}
        return state

    def freeze(self: _Layer) -> _Layer:
        """A frozen copy of this layer, for inference only, as onnxruntime's session or
        ``torch.jit.freeze`` make one: its weights are a copy, read-only, packed by its
        first call and used as packed afterwards. An eval-mode layer instead checks on
        every call that its weights have not changed since it packed them, which reads
        them all (measured: a third of a call at T=25, batch 1, H=512). The copy does not
        follow later changes to this layer; it cannot train or load a state_dict."""
        # fresh zeros for the gradients (never touched) rather than copies of them
        memo = {id(g): np.zeros_like(g) for g in self.grads.values()}
        twin = copy.deepcopy(self, memo)
        twin.eval()
        twin._frozen = dict(twin.params)
        for p in twin.params.values():
            p.flags.writeable = False
        return twin

    def _is_frozen(self, params):
        """Whether params are this frozen layer's own, still read-only."""
        f = self._frozen
        return f is not None and params is self.params and all(
            params.get(k) is p and not p.flags.writeable for k, p in f.items())

    def __repr__(self):
        args = [str(self.input_size), str(self.hidden_size)]
        if self.num_layers != 1:
            args.append(f"num_layers={self.num_layers}")
        for name, default in (("bias", True), ("batch_first", False), ("dropout", 0.0),
                              ("bidirectional", False), ("proj_size", 0), ("stateful", False)):
            if getattr(self, name) != default:
                args.append(f"{name}={getattr(self, name)}")
        args += self._extra_repr()
        args.append(f"dtype={self.dtype.name}")
        return f"{type(self).__name__}({', '.join(args)})"

    def _extra_repr(self):
        return []

    # --- interop -------------------------------------------------------------------
    @classmethod
    def from_torch(cls, module: Any, *, dtype: Optional[DTypeLike] = None,
                   **kwargs: Any) -> Any:
        """A layer with the configuration and a copy of the weights of a torch module.

        module: a ``torch.nn`` module (or ``lstmfast.torch`` drop-in) of the same kind.
        dtype: defaults to the module's (float32 or float64); kwargs: e.g. ``stateful``.
        """
        if type(module).__name__ != cls.__name__ or not hasattr(module, "state_dict"):
            raise TypeError(f"{cls.__name__}.from_torch needs a torch.nn.{cls.__name__}, "
                            f"got {type(module).__name__}")
        state = {k: _from_torch(v) for k, v in module.state_dict().items()}
        if dtype is None:
            dtype = next(iter(state.values())).dtype
            dtype = dtype if dtype in (np.float32, np.float64) else np.float32
        config = {k: getattr(module, k) for k in cls._torch_args}
        layer = cls(**config, dtype=dtype, **kwargs)
        layer.load_state_dict(state)
        return layer

    def to_torch(self) -> Any:
        """A ``torch.nn`` module of the same kind, configuration and weights (a copy)."""
        import torch

        module = getattr(torch.nn, type(self).__name__)(
            **{k: getattr(self, k) for k in self._torch_args},
            dtype=torch.float64 if self.dtype == np.float64 else torch.float32)
        module.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in self.params.items()})
        return module

    # --- state --------------------------------------------------------------------
    def reset_state(self) -> None:
        """Forget the state a stateful layer carries between calls."""
        self._carry = None

    def _initial_state(self, state, B):
        """The initial state as a list of [L*D, B, F] arrays (zeros where not given)."""
        shapes = self._state_shapes(B)
        if state is None and self.stateful and self._carry is not None:
            if self._carry[0].shape[1] != B:
                raise ValueError(f"this stateful layer carries state for batch size "
                                 f"{self._carry[0].shape[1]}, got batch size {B}; "
                                 f"call reset_state() first")
            return list(self._carry)
        if state is None:
            return [np.zeros(s, self.dtype) for s in shapes]
        parts = self._split_state(state, "state")
        out = []
        for name, p, shape in zip(("h0", "c0"), parts, shapes):
            p = _as_float_array(name, p, self.dtype) if p is not None else np.zeros(shape, self.dtype)
            if p.shape != shape:
                raise ValueError(f"{name} must have shape {shape} "
                                 f"(num_layers*num_directions, batch, size), got {p.shape}")
            out.append(p)
        return out

    def _split_state(self, state, name):
        if self._has_cell_state:
            if not isinstance(state, (tuple, list)) or len(state) != 2:
                got = type(state).__name__
                if isinstance(state, (tuple, list)):
                    got = f"a {got} of {len(state)}"
                raise TypeError(f"{name} must be a tuple (h, c) for {type(self).__name__}, "
                                f"got {got}")
            return list(state)
        return [state]

    # --- forward / backward -------------------------------------------------------
    def _time_major(self, a):
        return a.transpose(1, 0, 2) if self.batch_first else a

    def __call__(self, x: ArrayLike, state: Optional[State] = None,
                 lengths: Optional[ArrayLike] = None) -> Tuple[np.ndarray, StateOut]:
        return self.forward(x, state, lengths)

    def forward(self, x: ArrayLike, state: Optional[State] = None,
                lengths: Optional[ArrayLike] = None) -> Tuple[np.ndarray, StateOut]:
        """Run every layer and direction over x; see the class docstring for the shapes.
        In training mode the cache for one backward() is kept."""
        with self._training_call():
            return self._forward(x, state, lengths)

    def _forward(self, x, state, lengths):
        x = _as_float_array("x", x, None)  # converted once its sizes are known to be sane
        layout = "[batch, T, input_size]" if self.batch_first else "[T, batch, input_size]"
        unbatched = x.ndim == 2
        if unbatched:  # [T, input_size], as torch takes it whatever batch_first says
            if lengths is not None:
                raise ValueError("lengths are for a batch; an unbatched x [T, input_size] "
                                 "is one sequence of T steps")
            x = x[None] if self.batch_first else x[:, None]
            state = self._unbatched_state(state, "state")
        if x.ndim != 3:
            raise ValueError(f"x must be 3-d {layout} (or 2-d [T, input_size] for one "
                             f"sequence), got shape {x.shape}")
        if x.shape[2] != self.input_size:
            raise ValueError(f"x must have input_size={self.input_size} features in its last "
                             f"axis {layout}, got shape {x.shape}")
        x = self._time_major(x)
        T, B = x.shape[0], x.shape[1]
        if T < 1:  # an empty batch is fine, as in torch: empty outputs, no gradient
            raise ValueError(f"x must have at least one timestep, got shape "
                             f"{self._time_major(x).shape}")
        if T * B > _INT_MAX or T > _INT_MAX:
            raise ValueError(f"T={T} with batch={B} is too large (BLAS takes 32-bit sizes)")
        x = x.astype(self.dtype, copy=False)
        pack = _Packing(T, B, lengths)
        init = [pack.sort_batch(s) for s in self._initial_state(state, B)]

        draw_mask = self._draw_mask if self.training and self.dropout > 0 else None
        out, finals, layers = self._forward_packed(pack.pack(x, copy=self.training), init,
                                                   pack, self.training, draw_mask)
        out = self._time_major(pack.unpack(out))
        if self.training and pack.index is None:
            # the caller gets its own array: backward reads the cached output as h_{t-1}
            out = np.array(out, order="C")
        elif self.batch_first:
            out = np.ascontiguousarray(out)
        finals = [pack.unsort_batch(s) for s in finals]
        carry = [s.copy() for s in finals] if self.stateful else self._carry
        if unbatched:
            out = out[0] if self.batch_first else out[:, 0]
            finals = [s[:, 0] for s in finals]
        cache = dict(pack=pack, init=init, layers=layers, y_shape=out.shape,
                     unbatched=unbatched) if self.training else None
        # one statement, no call inside: a Ctrl-C cannot land between the two
        self._cache, self._carry = cache, carry
        return out, (tuple(finals) if self._has_cell_state else finals[0])

    def _unbatched_state(self, state, name):
        """A state (or dstate) for one sequence, [L*D, F] parts, with the batch axis added."""
        if state is None:
            return None
        parts = [None if p is None else _as_float_array(name, p, None)
                 for p in self._split_state(state, name)]
        for p in parts:
            if p is not None and p.ndim != 2:
                raise ValueError(f"{name} for an unbatched x [T, input_size] must be 2-d "
                                 f"[num_layers*D, size], got shape {p.shape}")
        parts = [None if p is None else p[:, None] for p in parts]
        return tuple(parts) if self._has_cell_state else parts[0]

    def _num_threads(self):
        return get_num_threads()

    def _draw_mask(self, shape):
        keep = self._rng.random(shape) >= self.dropout
        if self.dropout == 1:  # torch: everything dropped, nothing to scale
            return keep.astype(self.dtype)
        return keep.astype(self.dtype) / self.dtype.type(1 - self.dropout)

    def _forward_packed(self, inp, init, pack, training, draw_mask, params=None):
        """Every layer and direction over packed input [N, I].

        init: [L*D, B, F] initial states in packed batch order; training: keep the cache
        for backward; draw_mask(shape): the dropout mask between layers, or None for no
        dropout. Returns the last layer's packed output, the final states, and per layer
        the cache backward needs.
        """
        params = self.params if params is None else params
        frozen = not training and self._is_frozen(params)
        L, D, P = self.num_layers, self._directions, self._out_size
        finals = [np.empty_like(s) for s in init]
        layers = []
        for k in range(L):
            mask = None
            if k > 0 and draw_mask is not None:
                mask = draw_mask(inp.shape)
                inp = inp * mask
            y = np.empty((pack.rows, D * P), self.dtype)
            caches = []
            for d in range(D):
                w = self._named(params, k, d)
                i = k * D + d
                h_n, c_n, cache = _kernels.forward(
                    self._cell, inp, w["weight_ih"], w["weight_hh"], w.get("bias_ih"),
                    w.get("bias_hh"), w.get("weight_hr"), init[0][i],
                    init[1][i] if self._has_cell_state else None, pack.T, pack.lengths,
                    d == 1, training, y, d * P, self._num_threads(),
                    self._scratch.setdefault(("forward", training, i), []),
                    self._scratch.setdefault("pools", []), frozen=frozen)
                finals[0][i] = h_n
                if self._has_cell_state:
                    finals[1][i] = c_n
                caches.append(cache)
            layers.append((inp, y, mask, caches))
            inp = y
        return inp, finals, layers

    @staticmethod
    def _named(arrays, layer, direction):
        """{"weight_ih": ..., ...} of one layer and direction from a params/grads dict."""
        sfx = _suffix(layer, direction)
        return {name[: -len(sfx)]: a for name, a in arrays.items() if name.endswith(sfx)}

    def backward(self, dy: ArrayLike,
                 dstate: Optional[State] = None) -> Tuple[np.ndarray, StateOut]:
        """Backpropagate through time; accumulates into ``grads``.

        dy is dL/dy, shaped like the forward's output; dstate is dL/d(final state), or
        None for zeros. Returns (dx, d(initial state)), shaped like x and the state.
        The forward's cache is consumed: each forward allows one backward.
        """
        with self._training_call():
            return self._backward(dy, dstate)

    def _backward(self, dy, dstate):
        if not self.training:
            raise RuntimeError("backward() needs a forward in training mode; this layer is in "
                               "eval mode (call .train())")
        if self._cache is None:
            raise RuntimeError("backward() must follow a training-mode forward call "
                               "(and each forward allows only one backward)")
        c = self._cache
        pack, init, layers = c["pack"], c["init"], c["layers"]
        dy = _as_float_array("dy", dy, self.dtype)
        if dy.shape != c["y_shape"]:
            raise ValueError(f"dy must have the output's shape {c['y_shape']}, got {dy.shape}")
        if c["unbatched"]:
            dy = dy[None] if self.batch_first else dy[:, None]
            dstate = self._unbatched_state(dstate, "dstate")
        shapes = self._state_shapes(pack.B)
        parts = [None] * len(shapes) if dstate is None else self._split_state(dstate, "dstate")
        dfinal = []
        for name, p, shape in zip(("dh_n", "dc_n"), parts, shapes):
            p = np.zeros(shape, self.dtype) if p is None else _as_float_array(name, p, self.dtype)
            if p.shape != shape:
                raise ValueError(f"{name} must have shape {shape}, got {p.shape}")
            dfinal.append(pack.sort_batch(p))
        self._check_grads()

        if c.get("stale"):  # an interrupted backward overwrote it
            self._recompute_layers(c)
            c["stale"] = False
            layers = c["layers"]
        committed = []
        try:
            dx, dinit = self._backward_packed(layers, init, pack,
                                              pack.pack(self._time_major(dy)), dfinal,
                                              committed=committed)
        except BaseException:
            # interrupted (Ctrl-C): before the gradients were added, the layer stays as
            # it was but for the cached gates, which the kernels overwrote and the next
            # backward computes again; after, the backward is done
            if committed:
                self._cache = None
            else:
                c["stale"] = True
            raise
        self._cache = None  # consumed: the kernels overwrote the cached gates
        dx = pack.unpack(dx)
        dx = np.ascontiguousarray(self._time_major(dx)) if self.batch_first else dx
        dinit = [pack.unsort_batch(s) for s in dinit]
        if c["unbatched"]:
            dx = dx[0] if self.batch_first else dx[:, 0]
            dinit = [s[:, 0] for s in dinit]
        return dx, (tuple(dinit) if self._has_cell_state else dinit[0])

    def _backward_packed(self, layers, init, pack, dy, dfinal, params=None, grads=None,
                         committed=None):
        """BPTT through every layer and direction, packed: the inverse of _forward_packed.

        Accumulates into grads (default self.grads); returns packed dx and d(init). The
        recurrence of every layer runs first (the part Ctrl-C can stop: it leaves the
        gradients as they were), then every layer's weight and bias gradients, in one
        call that a Ctrl-C cannot split; after it, the backward counts as done (True is
        appended to `committed`, a list, then).
        """
        params = self.params if params is None else params
        grads = self.grads if grads is None else grads
        L, D, P = self.num_layers, self._directions, self._out_size
        dinit = [np.empty_like(s) for s in init]
        norms = np.zeros((L * D, pack.T)) if self.record_grad_norms else None
        weight_parts = []
        for k in reversed(range(L)):
            inp, y, mask, caches = layers[k]
            dx = np.empty_like(inp)
            for d in range(D):
                w, g = self._named(params, k, d), self._named(grads, k, d)
                i = k * D + d
                args = (self._cell, inp, w["weight_ih"], w["weight_hh"], w.get("weight_hr"),
                        init[0][i], init[1][i] if self._has_cell_state else None, pack.T,
                        pack.lengths, d == 1, y, d * P, caches[d], dy, d * P, dfinal[0][i],
                        dfinal[1][i] if self._has_cell_state else None, dx, d == 1,
                        g["weight_ih"], g["weight_hh"], g.get("bias_ih"), g.get("bias_hh"),
                        g.get("weight_hr"), None if norms is None else norms[i],
                        self._num_threads(), self._scratch.setdefault(("backward", i), []),
                        self._scratch.setdefault("pools", []))
                dh0, dc0, work = _kernels.backward(*args, part=1)
                weight_parts.append((args, work))
                dinit[0][i] = dh0
                if self._has_cell_state:
                    dinit[1][i] = dc0
            if mask is not None:
                dx *= mask
            dy = dx
        committed = [] if committed is None else committed
        try:
            _kernels.backward_weights(weight_parts, committed)
        finally:  # with the gradients added, the backward is done even if interrupted
            if committed:
                self.grad_norms = norms
        return dy, dinit

    def _recompute_layers(self, cache):
        """The per-layer cache of the forward that made `cache`, computed again (same
        input, state and dropout masks): an interrupted backward has overwritten it."""
        layers = cache["layers"]
        masks = iter([m for _, _, m, _ in layers[1:]])
        _, _, cache["layers"] = self._forward_packed(
            layers[0][0], cache["init"], cache["pack"], True,
            (lambda shape: next(masks)) if len(layers) > 1 and layers[1][2] is not None
            else None)


class LSTM(_RNNBase):
    """Long short-term memory layer, ``torch.nn.LSTM``'s equations and parameter layout.

    x: [T, B, input_size] ([B, T, input_size] with batch_first), any real dtype
    (converted to ``dtype``). state: (h0, c0), each [num_layers*D, B, H_out] and
    [num_layers*D, B, hidden_size] (D = 2 if bidirectional; H_out = proj_size or
    hidden_size), or None for zeros. lengths: optional [B] ints in [1, T]; outputs past
    a sequence's length are zero and its final state is taken at its last step.
    Returns y [T, B, D*H_out] (batch-first if set) and (h_n, c_n).
    Gate order i, f, g, o; parameters weight_ih_l{k}[_reverse] [4H, in],
    weight_hh_l{k} [4H, H_out], bias_ih_l{k}, bias_hh_l{k} [4H], weight_hr_l{k} [H_out, H].
    proj_size: with > 0, h = W_hr (o * tanh(c)) has proj_size features (torch's LSTM
    with projections); the cell state keeps hidden_size.
    forget_bias: added to the forget gate's initial bias (b_hh's units H..2H, every
    layer and direction), as Keras' ``unit_forget_bias=True`` adds 1 and TensorFlow's
    ``forget_bias`` adds its value; None (or 0) keeps torch's initialisation, every bias
    U(-1/sqrt(H), 1/sqrt(H)). A positive forget bias lets the cell keep its memory from
    the start of training, which long-range dependencies need (Jozefowicz et al., 2015).
    torch users write it by hand: ``lstm.bias_hh_l0.data[H:2*H] += 1.0``.    """

    _gates = 4
    _has_cell_state = True

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, *,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0,
                 dtype: DTypeLike = np.float32, stateful: bool = False,
                 seed: Optional[int] = None, forget_bias: Optional[float] = None) -> None:
        super().__init__(_kernels.CELLS["LSTM"], input_size, hidden_size, num_layers, bias,
                         batch_first, dropout, bidirectional, proj_size, dtype, stateful, seed)
        if forget_bias is not None:
            self._set_forget_bias(forget_bias)

    def _set_forget_bias(self, value):
        """value added to the forget gate's bias (b_hh over units H..2H) of every layer."""
        if not self.bias:
            raise ValueError("forget_bias needs bias=True")
        value = float(value)
        if not np.isfinite(value):
            raise ValueError(f"forget_bias must be a finite number, got {value}")
        H = self.hidden_size
        for name, p in self.params.items():
            if name.startswith("bias_hh"):
                p[H:2 * H] += value

    _torch_args = _RNNBase._torch_args + ("proj_size",)

    # Keras stores one layer as kernel [I, 4H], recurrent_kernel [H, 4H] and one bias
    # [4H], gate order i, f, c, o: PyTorch's order, transposed, with the biases summed.
    def keras_weights(self) -> list:
        """Weights as Keras ``get_weights()`` lists, one list per layer.

        Each list is [kernel, recurrent_kernel, bias] (without bias when bias=False),
        doubled (forward, then backward) for a bidirectional layer, as
        ``keras.layers.Bidirectional(keras.layers.LSTM(...)).get_weights()`` orders them.
        """
        if self.proj_size:
            raise ValueError("Keras has no LSTM with projection (proj_size > 0)")
        out = []
        for k in range(self.num_layers):
            ws = []
            for d in range(self._directions):
                w = self._named(self.params, k, d)
                ws += [w["weight_ih"].T.copy(), w["weight_hh"].T.copy()]
                if self.bias:
                    ws.append(w["bias_ih"] + w["bias_hh"])
            out.append(ws)
        return out

    @classmethod
    def from_keras_weights(cls, weights: Sequence[Any], *, bidirectional: bool = False,
                           dtype: DTypeLike = np.float32, **kwargs: Any) -> "LSTM":
        """An LSTM from Keras weights: one layer's ``get_weights()`` list, or a list of them.

        A list of 3 arrays (2 without bias) per direction, as Keras' LSTM (or, with
        bidirectional=True, Bidirectional(LSTM)) returns them; kwargs go to the
        constructor (stateful, ...). Keras' input is [batch, time, features]: pass
        batch_first=True for it (the default is time-major, as everywhere here).
        """
        weights = list(weights)
        if weights and not isinstance(weights[0], (list, tuple)):
            weights = [weights]
        D = 2 if bidirectional else 1
        per_dir = [len(w) / D for w in weights]
        if not weights or any(n not in (2, 3) for n in per_dir) or len(set(per_dir)) != 1:
            raise ValueError(f"expected per layer {3 * D} arrays (kernel, recurrent_kernel, bias"
                             f" per direction) or {2 * D} without bias; got "
                             f"{[len(w) for w in weights]}")
        bias = per_dir[0] == 3
        kernel = np.asarray(weights[0][0])
        recurrent = np.asarray(weights[0][1])
        if kernel.ndim != 2 or recurrent.ndim != 2 or kernel.shape[1] % 4 or \
                recurrent.shape != (kernel.shape[1] // 4, kernel.shape[1]):
            raise ValueError(f"expected kernel [I, 4H] and recurrent_kernel [H, 4H], got "
                             f"{kernel.shape} and {recurrent.shape}")
        layer = cls(kernel.shape[0], recurrent.shape[0], len(weights), bias=bias,
                    bidirectional=bidirectional, dtype=dtype, **kwargs)
        state = {}
        n = 3 if bias else 2
        for k, ws in enumerate(weights):
            for d in range(D):
                sfx = _suffix(k, d)
                part = [np.asarray(a) for a in ws[d * n:(d + 1) * n]]
                state["weight_ih" + sfx] = part[0].T
                state["weight_hh" + sfx] = part[1].T
                if bias:
                    state["bias_ih" + sfx] = part[2]
                    state["bias_hh" + sfx] = np.zeros_like(part[2])
        layer.load_state_dict(state)
        return layer


class GRU(_RNNBase):
    """Gated recurrent unit layer, ``torch.nn.GRU``'s equations and parameter layout.

    Gate order r, z, n with n = tanh(W_in x + b_in + r * (W_hn h + b_hn)) and
    h' = (1 - z) * n + z * h. state: h0 [num_layers*D, B, hidden_size] or None.
    Returns y [T, B, D*hidden_size] and h_n. Shapes otherwise as for LSTM.    """


    _gates = 3

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, *,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, dtype: DTypeLike = np.float32,
                 stateful: bool = False, seed: Optional[int] = None) -> None:
        super().__init__(_kernels.CELLS["GRU"], input_size, hidden_size, num_layers, bias,
                         batch_first, dropout, bidirectional, 0, dtype, stateful, seed)


class RNN(_RNNBase):
    """Elman RNN, h' = act(W_ih x + b_ih + W_hh h + b_hh), ``torch.nn.RNN``'s layout.

    nonlinearity: "tanh" or "relu". state: h0 [num_layers*D, B, hidden_size] or None.
    Returns y [T, B, D*hidden_size] and h_n. Shapes otherwise as for LSTM.    """


    _gates = 1

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, *,
                 nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0, bidirectional: bool = False,
                 dtype: DTypeLike = np.float32, stateful: bool = False,
                 seed: Optional[int] = None) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(_kernels.CELLS["RNN_" + nonlinearity.upper()], input_size,
                         hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         0, dtype, stateful, seed)

    _torch_args = _RNNBase._torch_args + ("nonlinearity",)

    def _extra_repr(self):
        return [f"nonlinearity={self.nonlinearity!r}"] if self.nonlinearity != "tanh" else []


# The constructor arguments and attributes every layer shares, documented once.
_SHARED_DOC = """
    Constructor arguments, as in ``torch.nn`` where torch has them:
    input_size, hidden_size: features of x and of the hidden state.
    num_layers: stacked layers; layer k > 0 takes layer k-1's output.
    bias: with bias_ih and bias_hh (both, as in torch).
    batch_first: x and y are [B, T, features] (the state stays [layers*D, B, F]).
    dropout: probability of zeroing each output of every layer but the last, in training
        mode only (scaled by 1/(1-p), as torch), drawn from the layer's own generator.
    bidirectional: a second direction per layer, run over the reversed sequence (each
        row from its own last step with lengths); outputs are concatenated [fwd, bwd].
    dtype: float32 or float64, for the parameters and every computation; inputs of
        another real dtype are converted.
    stateful: carry the final state into the next call when none is passed (as Keras'
        ``stateful=True``) until ``reset_state()``; the batch size must stay the same.
    seed: seeds the generator for the initial weights (U(-1/sqrt(H), 1/sqrt(H)), as
        torch) and dropout; None draws fresh entropy.

    Attributes: ``params`` and ``grads`` (dicts of arrays, torch's names and shapes;
    ``backward`` adds into ``grads``), ``training`` (``train()``/``eval()``; eval keeps
    no cache and lets threads share the layer), ``record_grad_norms`` (set True to have
    ``backward`` leave ``grad_norms``, a float64 array [num_layers*D, T] of the norm of
    dL/dh_t over the batch at every step: how much gradient reaches each step).
"""
for _cls in (LSTM, GRU, RNN):
    if _cls.__doc__:  # None under python -OO
        _cls.__doc__ = _cls.__doc__.rstrip() + "\n" + _SHARED_DOC
