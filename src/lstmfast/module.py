"""The base every lstmfast layer shares: parameters, gradients, train/eval, state_dict."""
from __future__ import annotations

import contextlib
import threading
from typing import Any, Dict, Iterator, List, Mapping, NamedTuple, Optional, Tuple

import numpy as np
from numpy.typing import DTypeLike

__all__ = ["Module", "Parameter"]


class Parameter(np.ndarray):
    """A view of a module's parameter array that carries its gradient as ``.grad``, as
    ``module.parameters()`` and ``named_parameters()`` hand them out (torch's habit:
    ``p.grad``). Writing into it writes the module's parameter; ``.grad`` is the
    module's gradient array, which ``backward`` adds into. Arrays computed from it are
    plain arrays."""

    grad: Optional[np.ndarray]

    def __array_finalize__(self, obj):
        self.grad = None

    def __array_wrap__(self, arr, context=None, return_scalar=False):
        # results of arithmetic are values, not parameters
        arr = arr.view(np.ndarray)
        return arr[()] if return_scalar else arr


def _parameter(value, grad):
    p = value.view(Parameter)
    p.grad = grad
    return p


def _from_torch(t):
    """A torch tensor's values as an ndarray (bfloat16, which numpy lacks, as float32)."""
    t = t.detach().cpu()
    if str(t.dtype) == "torch.bfloat16":
        t = t.float()
    return t.numpy()


class Module:
    """A layer that owns named parameters and their gradients.

    ``params`` and ``grads`` are dicts of numpy arrays with the same keys and shapes;
    ``backward`` accumulates into ``grads`` (as ``loss.backward()`` does in PyTorch) and
    optimizers update ``params`` in place, so an array taken from ``params`` stays live.
    """

    def __init__(self, dtype: DTypeLike = np.float32) -> None:
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        self.dtype = dtype
        self.params: Dict[str, np.ndarray] = {}
        self.grads: Dict[str, np.ndarray] = {}
        self.training = True

    def _add_random(self, name, draw, shape):
        """A parameter of `shape` filled from draw(n), n float64 values at a time, in
        order: the values equal one draw of the whole (so a seed gives the same weights
        in float32 and float64), without a float64 copy of the whole parameter (a large
        float32 layer would have needed three times its size)."""
        value = np.empty(shape, self.dtype)
        flat = value.reshape(-1)
        block = 1 << 20
        for i in range(0, flat.size, block):
            flat[i:i + block] = draw(min(block, flat.size - i))
        self.params[name] = value
        self.grads[name] = np.zeros_like(value)

    def _add_param(self, name, value):
        value = np.array(value, dtype=self.dtype, order="C")  # always a copy: params are updated in place
        self.params[name] = value
        self.grads[name] = np.zeros_like(value)

    # A frozen module (freeze()): {name: array} of its read-only parameters, else None.
    _frozen: Optional[Dict[str, np.ndarray]] = None

    def _frozen_message(self, what):
        return (f"this {type(self).__name__} is frozen (made by freeze(), for inference "
                f"only) and {what}: change the module it was frozen from, and freeze it "
                f"again")

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_busy", None)  # a lock: not picklable, and not the copy's
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        for p in (self._frozen or {}).values():  # a copy or unpickled frozen module
            p.flags.writeable = False

    @contextlib.contextmanager
    def _training_call(self):
        """A training-mode call, refused while another thread is in one: a training layer
        keeps one pending forward and adds into its grads, neither of which two threads
        can share (eval-mode calls can run concurrently)."""
        if not self.training:
            yield
            return
        busy = self.__dict__.setdefault("_busy", threading.Lock())
        if not busy.acquire(blocking=False):
            raise RuntimeError(f"this {type(self).__name__} is in a training-mode call in "
                               f"another thread: in training mode a layer keeps one pending "
                               f"forward and its grads, so threads cannot share it (in eval "
                               f"mode they can)")
        try:
            yield
        finally:
            busy.release()

    def _check_grads(self):
        """Every gradient array as the kernels need it, checked before a backward starts
        (one that fails half-way has already overwritten its cache)."""
        for k, p in self.params.items():
            g = self.grads.get(k)
            if not (isinstance(g, np.ndarray) and g.dtype == self.dtype and g.shape == p.shape
                    and g.flags.c_contiguous and g.flags.writeable):
                got = (f"{g.dtype} {g.shape}, C-contiguous {g.flags.c_contiguous}, writable "
                       f"{g.flags.writeable}" if isinstance(g, np.ndarray) else type(g).__name__)
                raise ValueError(f"grads[{k!r}] must be a writable C-contiguous {self.dtype} "
                                 f"array of shape {p.shape}, got {got}")

    def parameters(self) -> Iterator[Parameter]:
        """Every parameter, as a view carrying its gradient (``p.grad``), as in torch."""
        for _, p in self.named_parameters():
            yield p

    def named_parameters(self) -> Iterator[Tuple[str, Parameter]]:
        """``(name, parameter)`` for every parameter, as in torch; each parameter is a view
        of the module's array carrying its gradient as ``.grad``."""
        for name, p in self.params.items():
            yield name, _parameter(p, self.grads[name])

    def named_grads(self) -> Iterator[Tuple[str, np.ndarray]]:
        """``(name, gradient)`` for every parameter: the arrays ``backward`` adds into."""
        yield from self.grads.items()

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Set every gradient to zero, in place.

        set_to_none is accepted for torch's signature; the gradients stay arrays (the
        kernels add into them), so zeros are what "no gradient yet" looks like here.
        """
        for g in self.grads.values():
            g[...] = 0

    def train(self, mode: bool = True) -> "Module":
        """Training mode (forward keeps the cache for backward) or, with False, eval."""
        if not isinstance(mode, (bool, np.bool_)):  # train("False") would mean training
            raise ValueError(f"training mode is expected to be a bool, got {mode!r}")
        if mode and self._frozen:
            raise RuntimeError(self._frozen_message("cannot train"))
        self.training = bool(mode)
        return self

    def eval(self) -> "Module":
        """Eval mode: no cache, no dropout; threads may share the layer."""
        return self.train(False)

    def state_dict(self) -> Dict[str, np.ndarray]:
        """A copy of every parameter, keyed by name."""
        return {k: v.copy() for k, v in self.params.items()}

    def load_state_dict(self, state_dict: Mapping[str, Any],
                        strict: bool = True) -> "IncompatibleKeys":
        """Copy parameters in from ``state_dict`` (arrays, torch tensors or array-likes).

        strict: every parameter must be in ``state_dict`` and nothing else (KeyError
        otherwise); with False, the keys present are loaded and the others reported.
        Every shape is checked before anything is copied, so a bad dict leaves the layer
        unchanged. Returns (missing_keys, unexpected_keys), as torch does.
        """
        if not hasattr(state_dict, "keys"):
            raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
        if self._frozen:
            raise RuntimeError(self._frozen_message("cannot load a state_dict"))
        missing = sorted(set(self.params) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(self.params), key=str)
        if strict and (missing or unexpected):
            raise KeyError(f"state_dict mismatch for {type(self).__name__}: "
                           f"missing keys {missing}, unexpected keys {unexpected}")
        new = {}
        for k, p in self.params.items():
            if k not in state_dict:
                continue
            v = state_dict[k]
            if hasattr(v, "detach"):  # a torch tensor
                v = _from_torch(v)
            v = np.asarray(v)
            if v.shape != p.shape:
                raise ValueError(f"state_dict[{k!r}] has shape {v.shape}, expected {p.shape}")
            if v.dtype.kind not in "fiub":
                raise TypeError(f"state_dict[{k!r}] must hold real numbers, got dtype {v.dtype}")
            new[k] = v
        for k, v in new.items():
            self.params[k][...] = v
        return IncompatibleKeys(missing, unexpected)


class IncompatibleKeys(NamedTuple):
    """What load_state_dict(strict=False) did not load, as torch reports it."""
    missing_keys: List[str]
    unexpected_keys: List[str]
