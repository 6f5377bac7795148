"""Drop-in replacements for ``torch.nn.LSTM``, ``GRU``, ``RNN`` and their cells, on the CPU.

Each class derives from its ``torch.nn`` counterpart: same constructor, checks,
parameters (``_flat_weights``, ``state_dict``), repr and pickled state, and
``isinstance(m, torch.nn.LSTM)`` holds. Only ``forward`` differs: the recurrence runs in
lstmfast's kernels through a ``torch.autograd.Function``, on the tensors' own memory
(numpy views). Where the kernels cannot serve, torch.nn's own code runs: while a model
is traced or exported (``torch.jit.trace``, ``torch.onnx.export``, ``torch.export``),
on tensors that are not plain CPU tensors, and for a second derivative
(``create_graph=True``). Inside a torch process the kernels run on torch's thread
count and, when torch's parallel backend is OpenMP, on torch's own OpenMP threads.
Importing this module imports torch; importing ``lstmfast`` does not.
"""
import copy
import ctypes
import functools
import os
import re
import sys
import warnings

import numpy as np
import torch
from torch import _VF
from torch.nn.utils.rnn import PackedSequence

from . import _kernels
from . import layers as _layers

__all__ = ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"]


class _EngineMixin:
    """The numpy layer as an engine: configuration and kernel work buffers, no
    parameters of its own (the kernels read the torch module's), torch's thread count."""

    _holds_params = False

    def _num_threads(self):
        return torch.get_num_threads()


class _LSTMEngine(_EngineMixin, _layers.LSTM):
    pass


class _GRUEngine(_EngineMixin, _layers.GRU):
    pass


class _RNNEngine(_EngineMixin, _layers.RNN):
    pass


@functools.lru_cache(maxsize=None)
def _openmp_functions():
    """(GOMP_parallel, omp_get_thread_num, omp_get_num_threads) of the OpenMP runtime torch
    runs its parallel regions on, or None (another backend, or not found). A fact of the
    process, found once: the library torch loaded, never a second copy."""
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return None
    try:
        with open("/proc/self/maps") as f:
            paths = {parts[5].strip() for parts in (line.split(None, 5) for line in f)
                     if len(parts) == 6}
    except OSError:
        return None
    paths = sorted(p for p in paths if re.search(r"/lib(gomp|iomp5|omp)\b[^/]*\.so", p))
    torch_dir = os.path.dirname(os.path.dirname(torch.__file__))
    paths.sort(key=lambda p: not p.startswith(torch_dir))  # torch's own first
    for path in paths:
        try:
            lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
            return tuple(ctypes.cast(getattr(lib, name), ctypes.c_void_p).value
                         for name in ("GOMP_parallel", "omp_get_thread_num",
                                      "omp_get_num_threads"))
        except (OSError, AttributeError):
            continue
    return None


_ENGINES = {"LSTM": _LSTMEngine, "GRU": _GRUEngine, "RNN_TANH": _RNNEngine,
            "RNN_RELU": _RNNEngine}


def _engine(module, dtype, hidden_size=None):
    """The engine for this module's configuration and a work dtype, kept on the module
    (but never pickled or copied: see __getstate__)."""
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    proj = getattr(module, "proj_size", 0)
    key = (np_dtype, module.mode, module.input_size, module.hidden_size, module.num_layers,
           module.bias, module.bidirectional, proj)
    engines = module.__dict__.setdefault("_lf_engines", {})
    engine = engines.get(key)
    if engine is None:
        kw = dict(num_layers=module.num_layers, bias=module.bias,
                  bidirectional=module.bidirectional, dtype=np_dtype)
        if module.mode == "LSTM":
            kw["proj_size"] = proj
        elif module.mode.startswith("RNN"):
            kw["nonlinearity"] = module.mode[4:].lower()
        engine = _ENGINES[module.mode](module.input_size, module.hidden_size, **kw)
        omp = _openmp_functions()
        if omp is not None:  # the layer's calls run on torch's OpenMP team
            engine._scratch["pools"] = [_kernels.openmp_pool(*omp)]
        engines.clear()  # one configuration at a time: the work buffers can be large
        engines[key] = engine
    return engine


def _np(t):
    """A numpy view of a CPU tensor (a contiguous copy first if it is not contiguous)."""
    return t.detach().contiguous().numpy()


def _plain(t):
    """A dense CPU tensor with storage: what the kernels can read (not a fake, meta,
    functional or other wrapper tensor, as tracers and transforms pass)."""
    return (type(t) in (torch.Tensor, torch.nn.Parameter) and t.device.type == "cpu"
            and t.layout == torch.strided and not t.is_meta
            and not torch._C._functorch.is_functorch_wrapped_tensor(t)
            and not torch._is_functional_tensor(t))


def _torch_must_run(tensors):
    """Whether torch.nn's own forward must run instead of the kernels."""
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return True
    # torch.onnx is imported on first use (27 modules): an export has imported it
    onnx = sys.modules.get("torch.onnx")
    if onnx is not None and onnx.is_in_onnx_export():
        return True
    if torch.compiler.is_exporting():
        return True
    return not all(_plain(t) for t in tensors if isinstance(t, torch.Tensor))


class _Run:
    """What one call of the recurrence keeps for its backward: the engine and layout,
    numpy views of the inputs, the kernels' cache (consumed by a backward) and the
    dropout masks (so that a recomputation draws the same ones)."""

    def __init__(self, engine, pack, batch_sizes, names, dropout_p):
        self.engine, self.pack, self.batch_sizes = engine, pack, batch_sizes
        self.names, self.dropout_p = names, dropout_p
        self.init = self.params = self.layers = None
        self.masks = []

    def forward(self, x, training, draw):
        masks = iter(self.masks) if not draw else None

        def mask(shape):
            if masks is not None:
                return next(masks)
            p = self.dropout_p
            m = torch.from_numpy(np.empty(shape, x.dtype)).bernoulli_(1 - p)
            m = (m if p == 1 else m.div_(1 - p)).numpy()
            self.masks.append(m)
            return m

        return self.engine._forward_packed(x, self.init, self.pack, training,
                                           mask if self.dropout_p > 0 else None, self.params)


class _Recurrence(torch.autograd.Function):
    """Every layer and direction at once over packed rows; inputs are x [N, I], the
    initial states [L*D, B, F] in packed batch order, the weights in torch.nn's order."""

    @staticmethod
    def forward(run, keep, x, *tensors):
        engine = run.engine
        nstate = 2 if engine._has_cell_state else 1
        run.init = [_np(s) for s in tensors[:nstate]]
        run.params = dict(zip(run.names, (_np(w) for w in tensors[nstate:])))
        run.x = _np(x)
        y, finals, layers = run.forward(run.x, keep, draw=True)
        run.layers = layers if keep else None
        return (torch.from_numpy(y),) + tuple(torch.from_numpy(f) for f in finals)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.run = inputs[0]
        # saved so that autograd's version counters catch in-place changes before backward
        ctx.save_for_backward(*inputs[2:], output[0])

    @staticmethod
    def backward(ctx, dy, *dfinal):
        saved = ctx.saved_tensors  # raises if an input or the output was modified in place
        run = ctx.run
        if torch.is_grad_enabled():  # create_graph=True: a differentiable recomputation
            return (None, None) + _composite_backward(run, saved[:-1], dy, dfinal)
        engine = run.engine
        if run.layers is None:  # a second backward (retain_graph): recompute the cache
            _, _, run.layers = run.forward(run.x, True, draw=False)
        layers, run.layers = run.layers, None  # the kernels overwrite it
        dfinal = [np.zeros_like(s) if d is None else _np(d) for s, d in zip(run.init, dfinal)]
        dy = np.zeros((run.pack.rows, layers[-1][1].shape[1]), engine.dtype) \
            if dy is None else _np(dy)
        grads = {n: np.zeros_like(p) for n, p in run.params.items()}
        dx, dinit = engine._backward_packed(layers, run.init, run.pack, dy, dfinal,
                                            run.params, grads)
        return (None, None, torch.from_numpy(dx), *(torch.from_numpy(d) for d in dinit),
                *(torch.from_numpy(grads[n]) for n in run.names))


def _composite_backward(run, saved, dy, dfinal):
    """The gradients as differentiable torch operations (for create_graph=True): torch's
    own recurrence rerun on the saved inputs, layer by layer with the same dropout masks,
    and differentiated by autograd."""
    # shown once per process by Python's default warning filter (one call site)
    warnings.warn("lstmfast.torch: create_graph=True runs torch's own recurrence for the "
                  "differentiable backward (slower than the kernels)", stacklevel=3)
    engine, pack = run.engine, run.pack
    nstate = 2 if engine._has_cell_state else 1
    x, states, weights = saved[0], saved[1:1 + nstate], saved[1 + nstate:]
    named = dict(zip(run.names, weights))
    L, D = engine.num_layers, engine._directions
    with torch.enable_grad():
        inp, finals = x, [[] for _ in states]
        for k in range(L):
            if k > 0 and run.masks:
                inp = inp * torch.from_numpy(run.masks[k - 1])
            flat = [named[n] for d in range(D) for n in run.names
                    if n.endswith(_layers._suffix(k, d))]
            hx = [s[k * D:(k + 1) * D] for s in states]
            out, *fin = _torch_recurrence(engine, pack, run.batch_sizes, inp, hx, flat)
            for f, v in zip(finals, fin):
                f.append(v)
            inp = out
        outputs = [inp] + [torch.cat(f) for f in finals]
        grads = [dy] + list(dfinal)
        pairs = [(o, g) for o, g in zip(outputs, grads) if g is not None]
        inputs = [x, *states, *weights]
        wanted = [t for t in inputs if t.requires_grad]
        got = iter(torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs],
                                       create_graph=True, allow_unused=True))
    return tuple(next(got) if t.requires_grad else None for t in inputs)


def _torch_recurrence(engine, pack, batch_sizes, x, hx, flat):
    """One layer (both directions) of torch's own recurrence over packed rows x."""
    if isinstance(engine, _layers.RNN):
        fn = _VF.rnn_relu if engine.nonlinearity == "relu" else _VF.rnn_tanh
    else:
        fn = _VF.lstm if isinstance(engine, _layers.LSTM) else _VF.gru
    state = tuple(hx) if engine._has_cell_state else hx[0]
    args = (flat, engine.bias, 1, 0.0, True, engine.bidirectional)
    if batch_sizes is None:
        out, *fin = fn(x.reshape(pack.T, pack.B, x.shape[-1]), state, *args, False)
        out = out.reshape(pack.T * pack.B, out.shape[-1])
    else:
        out, *fin = fn(x, batch_sizes, state, *args)
    return (out, *fin)


def _autocast_dtype():
    f = getattr(torch._C, "_is_any_autocast_enabled", None)
    on = f() if f is not None else torch.is_autocast_enabled()
    return torch.get_autocast_dtype("cpu") if on and torch.is_autocast_enabled("cpu") else None


def _torch_class(module):
    """The torch.nn class a module derives from."""
    return next(c for c in type(module).__mro__ if c.__module__ == "torch.nn.modules.rnn")


def _torch_name(module):
    """The name of the torch.nn class a module derives from (for messages)."""
    return _torch_class(module).__name__


@torch.compiler.disable
def _outside_dynamo(fn, *args):
    return fn(*args)


class _KernelModule:
    """What the layers' and the cells' forward share: the pickled state and the dtypes."""

    # whether torch.nn's module returns the autocast dtype under CPU autocast (its LSTM,
    # RNN and their cells compute in it; GRU and GRUCell stay in the input's dtype)
    _autocast_lowers = True

    def __getstate__(self):
        # torch.nn's state only: the engine and its work buffers are this process's
        state = dict(super().__getstate__())
        state.pop("_lf_engines", None)
        return state

    def forward(self, input, hx=None):
        if torch.compiler.is_exporting():  # torch.nn's forward, traced (_torch_must_run)
            return self._forward(input, hx)
        # torch.compile breaks the graph at an RNN module ("Dynamo does not support RNN,
        # GRU, or LSTM") and would then trace this forward's pieces between the kernels'
        # opaque calls, recompiling them for every module's shapes (its limit of 8 was hit
        # in a model with a few drop-ins) and checking their guards on every call
        return _outside_dynamo(self._forward, input, hx)

    def __prepare_scriptable__(self):
        # torch.jit.script compiles torch.nn's forward (the kernels are no TorchScript):
        # the same module as a torch.nn one, holding these very parameters
        twin = copy.copy(self)
        twin.__class__ = _torch_class(self)
        return twin

    def _dtypes(self, dtype, input_dtype, autocast):
        """(output dtype, work dtype) for weights of `dtype`: half precision runs in
        float32 (the kernels' narrowest), casts tracked by autograd."""
        out = dtype
        if autocast is not None:
            out = autocast if self._autocast_lowers else input_dtype
        return out, torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


class _RNNMixin(_KernelModule):
    """forward for LSTM, GRU and RNN: torch.nn's argument handling and checks, the
    kernels for the recurrence."""

    def _forward(self, input, hx=None):
        is_lstm = self.mode == "LSTM"
        hxs = (hx if isinstance(hx, (tuple, list)) else [hx]) if hx is not None else []
        if _torch_must_run([input if not isinstance(input, PackedSequence) else input.data,
                            *hxs, *self._flat_weights]):
            return super(_KernelModule, self).forward(input, hx)  # torch.nn's
        self._update_flat_weights()
        name = _torch_name(self)
        orig_input = input
        batch_sizes = sorted_indices = unsorted_indices = None
        is_batched = True
        if isinstance(orig_input, PackedSequence):
            input, batch_sizes, sorted_indices, unsorted_indices = input
            if batch_sizes.numel() == 0:
                raise IndexError(f"{name}: the PackedSequence holds no steps "
                                 f"(batch_sizes is empty)")
            B = int(batch_sizes[0])
        else:
            if input.dim() not in (2, 3):
                raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D "
                                 f"instead")
            is_batched = input.dim() == 3
            batch_dim = 0 if self.batch_first else 1
            if not is_batched:
                input = input.unsqueeze(batch_dim)
            B = input.size(batch_dim)
        if hx is not None:
            hx = self._check_hx(hx, is_batched)
            if not is_batched:
                hx = tuple(h.unsqueeze(1) for h in hx) if is_lstm else hx.unsqueeze(1)
            hx = self.permute_hidden(hx, sorted_indices)
        else:
            D = 2 if self.bidirectional else 1
            size = self.proj_size if is_lstm and self.proj_size > 0 else self.hidden_size
            zeros = torch.zeros(self.num_layers * D, B, size, dtype=input.dtype)
            hx = (zeros, torch.zeros(self.num_layers * D, B, self.hidden_size,
                                     dtype=input.dtype)) if is_lstm else zeros
        self.check_forward_args(input, hx, batch_sizes)
        states = list(hx) if is_lstm else [hx]

        weights = list(self._flat_weights)
        dtype = weights[0].dtype
        for n, w in zip(self._flat_weights_names, weights):
            if w.dtype != dtype:
                raise RuntimeError(f"{name}: every parameter must have the dtype of "
                                   f"{self._flat_weights_names[0]}, {dtype}; {n} has {w.dtype}")
        autocast = _autocast_dtype()
        for s in states:
            if s.dtype != dtype and autocast is None:
                raise RuntimeError(f"{name}: the initial state must have the weights' dtype "
                                   f"{dtype}, got {s.dtype}")
        out_dtype, work = self._dtypes(dtype, input.dtype, autocast)
        engine = _engine(self, work)

        if batch_sizes is None:
            x = input.transpose(0, 1) if self.batch_first else input
            T = x.shape[0]
            if T == 0:
                raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
            pack = _layers._Packing(T, B, None)
            x = x.reshape(T * B, x.shape[2])
        else:
            x = input
            pack = _layers._Packing.from_batch_sizes(batch_sizes.numpy())
        x = x.to(work)
        states = [s.to(work) for s in states]
        weights = [w.to(work) for w in weights]
        keep = torch.is_grad_enabled() and any(
            t.requires_grad for t in [x, *states, *weights])
        dropout = self.dropout if self.training else 0.0
        run = _Run(engine, pack, batch_sizes, list(self._flat_weights_names), dropout)
        y, *finals = _Recurrence.apply(run, keep, x, *states, *weights)
        if out_dtype != work:
            y, finals = y.to(out_dtype), [f.to(out_dtype) for f in finals]
        hidden = tuple(finals) if is_lstm else finals[0]
        if batch_sizes is not None:
            return (PackedSequence(y, batch_sizes, sorted_indices, unsorted_indices),
                    self.permute_hidden(hidden, unsorted_indices))
        out = y.reshape(pack.T, B, y.shape[1])
        if self.batch_first:
            out = out.transpose(0, 1)
        if not is_batched:
            out = out.squeeze(batch_dim)
            hidden = tuple(h.squeeze(1) for h in hidden) if is_lstm else hidden.squeeze(1)
        return out, hidden

    def _check_hx(self, hx, is_batched):
        """torch.nn's checks of hx's kind and rank (the shapes follow in check_forward_args)."""
        want = 3 if is_batched else 2
        kind = "batched 3-D" if is_batched else "unbatched 2-D"
        if self.mode == "LSTM":
            if not (isinstance(hx, (tuple, list)) and len(hx) == 2
                    and all(isinstance(h, torch.Tensor) for h in hx)):
                got = (f"a {type(hx).__name__} of {len(hx)}" if isinstance(hx, (tuple, list))
                       else type(hx).__name__)
                raise RuntimeError(f"LSTM: hx must be a tuple (h_0, c_0) of two tensors, got "
                                   f"{got}")
            if hx[0].dim() != want or hx[1].dim() != want:
                raise RuntimeError(f"For {kind} input, hx and cx should also be {want}-D but "
                                   f"got ({hx[0].dim()}-D, {hx[1].dim()}-D) tensors")
            return tuple(hx)
        if not isinstance(hx, torch.Tensor):
            raise RuntimeError(f"hx must be a tensor, got {type(hx).__name__}")
        if hx.dim() != want:
            raise RuntimeError(f"For {kind} input, hx should also be {want}-D but got "
                               f"{hx.dim()}-D tensor")
        return hx


class LSTM(_RNNMixin, torch.nn.LSTM):
    """``torch.nn.LSTM`` on lstmfast's kernels (CPU). Same arguments, including proj_size."""


class GRU(_RNNMixin, torch.nn.GRU):
    """``torch.nn.GRU`` on lstmfast's kernels (CPU)."""

    _autocast_lowers = False


class RNN(_RNNMixin, torch.nn.RNN):
    """``torch.nn.RNN`` on lstmfast's kernels (CPU); nonlinearity "tanh" or "relu"."""


class _CellMixin(_KernelModule):
    """forward for the cells: one step of a one-layer recurrence in the kernels."""

    @property
    def mode(self):  # the recurrence's kind, as the layers' torch.nn attribute
        if isinstance(self, torch.nn.LSTMCell):
            return "LSTM"
        if isinstance(self, torch.nn.GRUCell):
            return "GRU"
        return "RNN_" + self.nonlinearity.upper()

    # for the engine, a cell is a one-layer, one-direction recurrence
    num_layers, bidirectional = 1, False

    def _forward(self, input, hx=None):
        is_lstm = isinstance(self, torch.nn.LSTMCell)
        name = _torch_name(self)
        hxs = (list(hx) if is_lstm else [hx]) if hx is not None else []
        weights = [self.weight_ih, self.weight_hh] + (
            [self.bias_ih, self.bias_hh] if self.bias else [])
        if _torch_must_run([input, *hxs, *weights]):
            return super(_KernelModule, self).forward(input, hx)  # torch.nn's
        if input.dim() not in (1, 2):
            raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D "
                             f"instead")
        for i, h in enumerate(hxs):
            if not isinstance(h, torch.Tensor):
                raise TypeError(f"{name}: hx must hold tensors, got {type(h).__name__}")
            if h.dim() not in (1, 2):
                what = f"hx[{i}]" if is_lstm else "hidden"
                raise ValueError(f"{name}: Expected {what} to be 1D or 2D, got {h.dim()}D "
                                 f"instead")
        if is_lstm and hx is not None and len(hxs) != 2:
            raise ValueError(f"{name}: hx must be a tuple (h_0, c_0), got {len(hxs)} items")
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
            hxs = [h.unsqueeze(0) for h in hxs]
        B = input.size(0)
        if input.size(1) != self.input_size:
            raise RuntimeError(f"input has inconsistent input_size: got {input.size(1)} "
                               f"expected {self.input_size}")
        if not hxs:
            hxs = [torch.zeros(B, self.hidden_size, dtype=input.dtype)
                   for _ in range(2 if is_lstm else 1)]
        for i, h in enumerate(hxs):
            if h.size(0) != B:
                raise RuntimeError(f"Input batch size {B} doesn't match hidden{i} batch size "
                                   f"{h.size(0)}")
            if h.size(1) != self.hidden_size:
                raise RuntimeError(f"hidden{i} has inconsistent hidden_size: got {h.size(1)}, "
                                   f"expected {self.hidden_size}")
        dtype = self.weight_ih.dtype
        autocast = _autocast_dtype()
        for what, t in [("input", input)] + [(f"hidden{i}", h) for i, h in enumerate(hxs)]:
            if t.dtype != dtype and autocast is None:
                raise RuntimeError(f"{name}: {what} must have the weights' dtype {dtype}, "
                                   f"got {t.dtype}")
        out_dtype, work = self._dtypes(dtype, input.dtype, autocast)
        engine = _engine(self, work)
        names = ["weight_ih_l0", "weight_hh_l0"] + (
            ["bias_ih_l0", "bias_hh_l0"] if self.bias else [])
        x = input.to(work)
        states = [h.to(work).unsqueeze(0) for h in hxs]
        weights = [w.to(work) for w in weights]
        keep = torch.is_grad_enabled() and any(t.requires_grad for t in [x, *states, *weights])
        run = _Run(engine, _layers._Packing(1, B, None), None, names, 0.0)
        _, *finals = _Recurrence.apply(run, keep, x, *states, *weights)
        finals = [f.squeeze(0).to(out_dtype) for f in finals]
        if not is_batched:
            finals = [f.squeeze(0) for f in finals]
        return tuple(finals) if is_lstm else finals[0]


class LSTMCell(_CellMixin, torch.nn.LSTMCell):
    """``torch.nn.LSTMCell`` on lstmfast's kernels (CPU)."""


class GRUCell(_CellMixin, torch.nn.GRUCell):
    """``torch.nn.GRUCell`` on lstmfast's kernels (CPU)."""

    _autocast_lowers = False


class RNNCell(_CellMixin, torch.nn.RNNCell):
    """``torch.nn.RNNCell`` on lstmfast's kernels (CPU); nonlinearity "tanh" or "relu"."""
