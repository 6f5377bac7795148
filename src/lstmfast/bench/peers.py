"""The implementations the benchmark compares, behind one small interface.

Every peer is a class with

    name, modes, dtypes      what it can run ("infer", "train"; float32, float64)
    available()              classmethod -> (True, version) or (False, why); imports lazily
    setup(problem, mode, threads)   build the model on the problem's weights, once
    infer()                  one inference forward over problem.x; returns y [T, B, H]
    train_step()             forward + backward of sum(y * problem.dy); returns nothing
    gradients()              one training step from zero gradients, for verification:
                             {"y", "dx", "weight_ih", "weight_hh", "bias_ih", "bias_hh"}
    close()                  drop the model and its buffers

A Problem holds one benchmark case: cell, shape (T, B, I, H), dtype, the input x, the
output gradient dy and one layer's weights in PyTorch's layout and names. All peers get
the same weights. lstmfast is the reference: `verify` compares every peer with it, and a
peer that disagrees has a bug in its wrapper here (or lstmfast has one) and is not timed.

Peers that are not installed are reported by `available()`, never replaced by a stand-in.
"""
import importlib
import os
from typing import Any, Tuple

import numpy as np

__all__ = [
    "CELLS", "PEERS", "Problem", "PeerMismatch", "gflop", "verify", "set_threads",
    "thread_report",
]

# Gate blocks per cell; a forward is 2*T*B*G*H*(I+H) FLOP (the input and recurrent GEMMs;
# biases and the pointwise work are left out, as every benchmark of this kind does).
CELLS = {"lstm": 4, "gru": 3, "rnn": 1}


def gflop(cell, mode, T, B, I, H):
    """GFLOP of one call: forward, or a training step counted as 3x the forward
    (forward, the backward's recurrent GEMMs plus dx, and the weight-gradient GEMMs)."""
    fwd = 2.0 * T * B * CELLS[cell] * H * (I + H) / 1e9
    return 3.0 * fwd if mode == "train" else fwd


class Problem:
    """One case: weights, x and dy, drawn from a seeded generator (same seed, same data)."""

    def __init__(self, cell, T, B, I, H, dtype=np.float32, seed=0):
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {sorted(CELLS)}, got {cell!r}")
        self.cell, self.T, self.B, self.I, self.H = cell, T, B, I, H
        self.dtype = np.dtype(dtype)
        rng = np.random.default_rng(seed)
        G, k = CELLS[cell], 1.0 / np.sqrt(H)
        # PyTorch's init range; weights first so every T and B gets the same weights.
        self.params = {
            "weight_ih_l0": rng.uniform(-k, k, (G * H, I)),
            "weight_hh_l0": rng.uniform(-k, k, (G * H, H)),
            "bias_ih_l0": rng.uniform(-k, k, G * H),
            "bias_hh_l0": rng.uniform(-k, k, G * H),
        }
        self.params = {n: p.astype(self.dtype) for n, p in self.params.items()}
        self.x = rng.standard_normal((T, B, I)).astype(self.dtype)
        self.dy = rng.standard_normal((T, B, H)).astype(self.dtype)
        self._reference = {}

    @property
    def shape(self):
        return (self.T, self.B, self.I, self.H)

    def gflop(self, mode):
        return gflop(self.cell, mode, *self.shape)

    def reference(self, mode):
        """lstmfast's result ("infer": y; "train": gradients()), computed once."""
        if mode not in self._reference:
            ref = Lstmfast()
            ref.setup(self, mode, threads=None)
            self._reference[mode] = ref.infer() if mode == "infer" else ref.gradients()
            ref.close()
        return self._reference[mode]


# --- threads ---------------------------------------------------------------------------
_limiter = None


def set_threads(n):
    """Limit the BLAS pools (numpy's and scipy's bundled OpenBLAS, one each) to n threads.

    lstmfast runs on scipy's BLAS, the numpy peer on numpy's; torch and onnxruntime are
    set per peer in setup(). Returns a line for the report saying how it was done.
    """
    global _limiter
    done = []
    import lstmfast
    lstmfast.set_num_threads(n)
    done.append("lstmfast.set_num_threads")
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        env = os.environ.get("OPENBLAS_NUM_THREADS")
        done.append(f"threadpoolctl not installed; OPENBLAS_NUM_THREADS={env}"
                    + ("" if env == str(n) else " (BLAS threads NOT controlled)"))
        return "; ".join(done)
    _limiter = ThreadpoolController().limit(limits=n, user_api="blas")
    done.append("threadpoolctl (all BLAS pools)")
    return "; ".join(done)


def thread_report():
    """One line per native thread pool loaded in this process (threadpoolctl's view)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return ["threadpoolctl not installed: pools unknown"]
    lines = []
    for p in threadpool_info():
        where = os.sep.join(p["filepath"].split(os.sep)[-2:])
        extra = f" {p['architecture']}" if p.get("architecture") else ""
        lines.append(f"{p['internal_api']} {p.get('version') or ''}{extra} threads="
                     f"{p['num_threads']} ({where})")
    return lines


# --- the interface ---------------------------------------------------------------------
class Peer:
    name = "?"
    modes: Tuple[str, ...] = ("infer", "train")
    dtypes: Tuple[Any, ...] = (np.float32, np.float64)
    cells: Tuple[str, ...] = ("lstm", "gru", "rnn")
    requires: Tuple[str, ...] = ()   # modules imported by available()

    @classmethod
    def available(cls):
        versions = []
        for mod in cls.requires:
            try:
                m = importlib.import_module(mod)
            except Exception as e:  # ImportError, or a broken install
                return False, f"{mod} not importable ({type(e).__name__}: {e})"
            versions.append(f"{mod} {getattr(m, '__version__', '?')}")
        return True, ", ".join(versions)

    @classmethod
    def supports(cls, cell, mode, dtype):
        return cell in cls.cells and mode in cls.modes and np.dtype(dtype) in \
            [np.dtype(d) for d in cls.dtypes]

    def setup(self, problem, mode, threads):
        raise NotImplementedError

    def infer(self):
        raise NotImplementedError

    def train_step(self):
        raise NotImplementedError

    def gradients(self):
        raise NotImplementedError

    def close(self):
        self.__dict__.clear()


class Lstmfast(Peer):
    name = "lstmfast"
    requires = ("lstmfast",)

    def setup(self, problem, mode, threads):
        import lstmfast
        cls = {"lstm": lstmfast.LSTM, "gru": lstmfast.GRU, "rnn": lstmfast.RNN}[problem.cell]
        kw = {"nonlinearity": "tanh"} if problem.cell == "rnn" else {}
        self.m = cls(problem.I, problem.H, dtype=problem.dtype, seed=0, **kw)
        self.m.load_state_dict(problem.params)
        self.m.train(mode == "train")
        if mode == "infer":  # packed once, as onnxruntime's session (see LSTM.freeze)
            self.m = self.m.freeze()
        self.x, self.dy = problem.x, problem.dy

    def infer(self):
        return self.m(self.x)[0]

    def train_step(self):
        y, _ = self.m(self.x)
        self.m.backward(self.dy)

    def gradients(self):
        self.m.train()
        self.m.zero_grad()
        y, _ = self.m(self.x)
        dx, _ = self.m.backward(self.dy)
        g = {k[:-3]: v.copy() for k, v in self.m.grads.items()}   # strip "_l0"
        return dict(g, y=y, dx=dx)


# --- plain numpy -----------------------------------------------------------------------
def _sigmoid_(a):
    """In place; the tanh form needs no exp, so it cannot overflow."""
    a *= 0.5
    np.tanh(a, out=a)
    a *= 0.5
    a += 0.5
    return a


class _NumpyLayer:
    """One layer, PyTorch's equations, written the way a careful numpy user would: the input
    GEMM hoisted over all T, one matmul per step for the recurrence, and a hand-written
    BPTT whose weight gradients are again single GEMMs over all T."""

    def __init__(self, cell, params):
        self.cell = cell
        self.w_ih, self.w_hh = params["weight_ih_l0"], params["weight_hh_l0"]
        self.b_ih, self.b_hh = params["bias_ih_l0"], params["bias_hh_l0"]
        self.H = self.w_hh.shape[1]

    def forward(self, x, training):
        T, B, I = x.shape
        H, G = self.H, self.w_hh.shape[0] // self.H
        # a: per-step pre-activations [T, B, G*H]; overwritten in place by the activations.
        a = (x.reshape(T * B, I) @ self.w_ih.T).reshape(T, B, G * H)
        a += self.b_ih
        if self.cell != "gru":         # GRU keeps b_hh inside the reset gate's product
            a += self.b_hh
        hs = np.zeros((T + 1, B, H), x.dtype)            # hs[t+1] = h_t; hs[0] = h0 = 0
        rec = np.empty((B, G * H), x.dtype)              # h_{t-1} @ W_hh^T
        cache = dict(x=x, a=a, hs=hs)
        if self.cell == "lstm":
            cs = np.zeros((T + 1 if training else 1, B, H), x.dtype)
            tcs = np.empty((T, B, H), x.dtype) if training else np.empty((1, B, H), x.dtype)
            for t in range(T):
                np.matmul(hs[t], self.w_hh.T, out=rec)
                g = a[t]
                g += rec
                _sigmoid_(g[:, :2 * H])
                np.tanh(g[:, 2 * H:3 * H], out=g[:, 2 * H:3 * H])
                _sigmoid_(g[:, 3 * H:])
                i, f, gg, o = g[:, :H], g[:, H:2 * H], g[:, 2 * H:3 * H], g[:, 3 * H:]
                c_prev, c = (cs[t], cs[t + 1]) if training else (cs[0], cs[0])
                np.multiply(f, c_prev, out=c)
                c += i * gg
                tc = tcs[t] if training else tcs[0]
                np.tanh(c, out=tc)
                np.multiply(o, tc, out=hs[t + 1])
            cache.update(cs=cs, tcs=tcs)
        elif self.cell == "gru":
            ghn = np.empty((T, B, H), x.dtype) if training else np.empty((1, B, H), x.dtype)
            for t in range(T):
                np.matmul(hs[t], self.w_hh.T, out=rec)
                rec += self.b_hh
                g = a[t]
                g[:, :2 * H] += rec[:, :2 * H]
                _sigmoid_(g[:, :2 * H])
                r, z, n = g[:, :H], g[:, H:2 * H], g[:, 2 * H:]
                hn = ghn[t] if training else ghn[0]
                hn[...] = rec[:, 2 * H:]
                n += r * hn
                np.tanh(n, out=n)
                h = hs[t + 1]
                np.subtract(hs[t], n, out=h)             # h_t = n + z * (h_{t-1} - n)
                h *= z
                h += n
            cache.update(ghn=ghn)
        else:
            for t in range(T):
                np.matmul(hs[t], self.w_hh.T, out=rec)
                g = a[t]
                g += rec
                np.tanh(g, out=hs[t + 1])
        return hs[1:], cache

    def backward(self, cache, dy):
        """Returns dx and the weight gradients of one step, freshly allocated."""
        x, a, hs = cache["x"], cache["a"], cache["hs"]
        T, B, I = x.shape
        H, GH = self.H, a.shape[2]
        da = np.empty_like(a)            # gradient w.r.t. the pre-activations
        dh = np.zeros((B, H), x.dtype)
        if self.cell == "lstm":
            cs, tcs = cache["cs"], cache["tcs"]
            dc = np.zeros((B, H), x.dtype)
            for t in reversed(range(T)):
                dh += dy[t]
                i, f, g, o = (a[t][:, k * H:(k + 1) * H] for k in range(4))
                tc = tcs[t]
                d = da[t]
                dc += dh * o * (1 - tc * tc)
                np.multiply(dh * tc, o * (1 - o), out=d[:, 3 * H:])
                np.multiply(dc * g, i * (1 - i), out=d[:, :H])
                np.multiply(dc * cs[t], f * (1 - f), out=d[:, H:2 * H])
                np.multiply(dc * i, 1 - g * g, out=d[:, 2 * H:3 * H])
                dc *= f
                np.matmul(d, self.w_hh, out=dh)
            dgh = da
        elif self.cell == "gru":
            ghn = cache["ghn"]
            dgh = np.empty_like(a)       # differs from da only in the n block (r * ...)
            for t in reversed(range(T)):
                dh += dy[t]
                r, z, n = a[t][:, :H], a[t][:, H:2 * H], a[t][:, 2 * H:]
                dn = dh * (1 - z) * (1 - n * n)
                d, e = da[t], dgh[t]
                d[:, 2 * H:] = dn
                np.multiply(dn, r, out=e[:, 2 * H:])
                np.multiply(dn * ghn[t], r * (1 - r), out=d[:, :H])
                np.multiply(dh * (hs[t] - n), z * (1 - z), out=d[:, H:2 * H])
                e[:, :2 * H] = d[:, :2 * H]
                dh *= z
                dh += e @ self.w_hh
        else:
            for t in reversed(range(T)):
                dh += dy[t]
                h = hs[t + 1]
                np.multiply(dh, 1 - h * h, out=da[t])
                np.matmul(da[t], self.w_hh, out=dh)
            dgh = da
        da2, dgh2 = da.reshape(T * B, GH), dgh.reshape(T * B, GH)
        grads = {
            "weight_ih": da2.T @ x.reshape(T * B, I),
            "weight_hh": dgh2.T @ hs[:-1].reshape(T * B, H),
            "bias_ih": da2.sum(0),
            "bias_hh": dgh2.sum(0),
            "dx": (da2 @ self.w_ih).reshape(T, B, I),
        }
        return grads


class Numpy(Peer):
    name = "numpy"
    requires = ("numpy",)

    def setup(self, problem, mode, threads):
        self.layer = _NumpyLayer(problem.cell, problem.params)
        self.x, self.dy = problem.x, problem.dy

    def infer(self):
        return self.layer.forward(self.x, training=False)[0]

    def train_step(self):
        y, cache = self.layer.forward(self.x, training=True)
        self.layer.backward(cache, self.dy)

    def gradients(self):
        y, cache = self.layer.forward(self.x, training=True)
        return dict(self.layer.backward(cache, self.dy), y=y.copy())


# --- PyTorch ---------------------------------------------------------------------------
class Torch(Peer):
    name = "torch"
    requires = ("torch",)

    def setup(self, problem, mode, threads):
        import torch
        self.torch = torch
        if threads is not None:
            torch.set_num_threads(threads)
        cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[problem.cell]
        kw = {"nonlinearity": "tanh"} if problem.cell == "rnn" else {}
        tdtype = {np.dtype(np.float32): torch.float32,
                  np.dtype(np.float64): torch.float64}[problem.dtype]
        self.m = cls(problem.I, problem.H, dtype=tdtype, **kw)
        self.m.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in problem.params.items()})
        self.m.train(mode == "train")
        self.x = torch.from_numpy(problem.x)
        self.dy = torch.from_numpy(problem.dy)
        if mode == "train":
            self.x = self.x.clone().requires_grad_(True)   # lstmfast computes dx too
            # Gradient buffers exist before the first step, as lstmfast's do (both
            # accumulate into them), so a step's time and memory exclude creating them.
            for t in [self.x, *self.m.parameters()]:
                t.grad = torch.zeros_like(t)

    def infer(self):
        with self.torch.inference_mode():
            return self.m(self.x)[0]

    def train_step(self):
        y = self.m(self.x)[0]
        # = backward of sum(y * dy), without autograd's extra elementwise multiply
        y.backward(self.dy)

    def gradients(self):
        self.m.zero_grad()
        self.x.grad.zero_()
        y = self.m(self.x)[0]
        y.backward(self.dy)
        g = {k[:-3]: p.grad.numpy().copy() for k, p in self.m.named_parameters()}
        return dict(g, y=y.detach().numpy().copy(), dx=self.x.grad.numpy().copy())


# --- onnxruntime -----------------------------------------------------------------------
# Row blocks of PyTorch's weights in ONNX's gate order: LSTM i,f,g,o -> i,o,f,c;
# GRU r,z,n -> z,r,h (with linear_before_reset=1, PyTorch's GRU).
_ONNX_GATES = {"lstm": [0, 3, 1, 2], "gru": [1, 0, 2], "rnn": [0]}


def _onnx_model(problem):
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    H, p = problem.H, problem.params
    order = _ONNX_GATES[problem.cell]

    def reorder(w):
        return np.concatenate([w[k * H:(k + 1) * H] for k in order])

    W = reorder(p["weight_ih_l0"])[None]
    R = reorder(p["weight_hh_l0"])[None]
    Bias = np.concatenate([reorder(p["bias_ih_l0"]), reorder(p["bias_hh_l0"])])[None]
    op = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}[problem.cell]
    attrs = {"hidden_size": H}
    if problem.cell == "gru":
        attrs["linear_before_reset"] = 1
    if problem.cell == "rnn":
        attrs["activations"] = ["Tanh"]
    node = helper.make_node(op, ["X", "W", "R", "B"], ["Y"], **attrs)
    x_info = helper.make_tensor_value_info("X", TensorProto.FLOAT, list(problem.x.shape))
    y_info = helper.make_tensor_value_info("Y", TensorProto.FLOAT,
                                           [problem.T, 1, problem.B, H])
    graph = helper.make_graph(
        [node], f"{op.lower()}_bench", [x_info], [y_info],
        initializer=[numpy_helper.from_array(np.ascontiguousarray(a), n)
                     for a, n in ((W, "W"), (R, "R"), (Bias, "B"))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8     # old enough for any onnxruntime that has opset 14
    onnx.checker.check_model(model)
    return model.SerializeToString()


class OnnxRuntime(Peer):
    name = "onnxruntime"
    requires = ("onnxruntime", "onnx")
    modes = ("infer",)          # no training step in onnxruntime's inference package
    dtypes = (np.float32,)      # its CPU LSTM/GRU/RNN kernels are float32 only

    def setup(self, problem, mode, threads):
        import onnxruntime as ort
        so = ort.SessionOptions()
        if threads is not None:
            so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.sess = ort.InferenceSession(_onnx_model(problem), so,
                                         providers=["CPUExecutionProvider"])
        self.feed = {"X": problem.x}
        self.shape = (problem.T, problem.B, problem.H)

    def infer(self):
        # Y is [T, num_directions=1, B, H]; the reshape is a view.
        return self.sess.run(["Y"], self.feed)[0].reshape(self.shape)


PEERS = {p.name: p for p in (Lstmfast, Numpy, Torch, OnnxRuntime)}


# --- verification ----------------------------------------------------------------------
class PeerMismatch(AssertionError):
    """A peer's result differs from lstmfast's on the same weights."""


# Tolerances: outputs absolute (|y| < 1); gradients relative to the largest entry.
_TOL = {np.dtype(np.float32): (1e-4, 1e-3), np.dtype(np.float64): (1e-10, 1e-9)}


def _to_numpy(a):
    if hasattr(a, "detach"):
        a = a.detach().numpy()
    return np.asarray(a)


def verify(peer, problem, mode):
    """Compare a set-up peer with lstmfast; returns the largest error found, or raises
    PeerMismatch naming the quantity that differs. Runs the peer once (a warm-up too)."""
    ytol, gtol = _TOL[problem.dtype]
    ref = problem.reference(mode)
    if mode == "infer":
        y = _to_numpy(peer.infer())
        if y.shape != ref.shape:
            raise PeerMismatch(f"{peer.name}: y has shape {y.shape}, lstmfast {ref.shape}")
        err = float(np.max(np.abs(y - ref)))
        if not err <= ytol:
            raise PeerMismatch(f"{peer.name} {problem.cell} inference: max |y - y_lstmfast| = "
                               f"{err:.3g} > {ytol:g}")
        return err
    got = peer.gradients()
    worst = 0.0
    for k, r in ref.items():
        g = _to_numpy(got[k])
        if g.shape != r.shape:
            raise PeerMismatch(f"{peer.name}: {k} has shape {g.shape}, lstmfast {r.shape}")
        diff = float(np.max(np.abs(g - r)))
        if k == "y":
            ok, err = diff <= ytol, diff
        else:
            err = diff / max(float(np.max(np.abs(r))), np.finfo(r.dtype).tiny)
            ok = err <= gtol
        if not ok:
            raise PeerMismatch(f"{peer.name} {problem.cell} training step: {k} differs from "
                               f"lstmfast's by {err:.3g} "
                               f"({'absolute' if k == 'y' else 'relative to max'})")
        worst = max(worst, err)
    return worst

