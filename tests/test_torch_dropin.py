"""The torch drop-ins as a PyTorch program sees them: identity, errors, autograd (repeated,
double, torch.func), autocast, serialization, export, cells, threads. Oracle: torch.nn
with the same weights."""
import copy
import io
import os
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

import lstmfast.torch as lt  # noqa: E402

LAYERS = [("LSTM", {}), ("LSTM", {"proj_size": 2}), ("GRU", {}), ("RNN", {}),
          ("RNN", {"nonlinearity": "relu"})]
LAYER_IDS = ["lstm", "lstm_proj", "gru", "rnn_tanh", "rnn_relu"]
CELLS = [("LSTMCell", {}), ("GRUCell", {}), ("RNNCell", {}), ("RNNCell", {"nonlinearity": "relu"}),
         ("LSTMCell", {"bias": False})]
CELL_IDS = ["lstm", "gru", "rnn_tanh", "rnn_relu", "lstm_nobias"]


def _pair(kind, kw, dtype=torch.float64, **cfg):
    ours = getattr(lt, kind)(4, 5, **cfg, **kw, dtype=dtype)
    ref = getattr(torch.nn, kind)(4, 5, **cfg, **kw, dtype=dtype)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


def _state(module, B, dtype=torch.float64, batched=True):
    D = 2 if module.bidirectional else 1
    P = getattr(module, "proj_size", 0) or module.hidden_size
    shape = lambda F: (module.num_layers * D, B, F) if batched else (module.num_layers * D, F)
    h = torch.randn(shape(P), dtype=dtype)
    if module.mode == "LSTM":
        return h, torch.randn(shape(module.hidden_size), dtype=dtype)
    return h


# --- identity ----------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"])
def test_isinstance_of_torch_classes(kind):
    m = getattr(lt, kind)(3, 4)
    assert isinstance(m, getattr(torch.nn, kind))
    base = torch.nn.RNNBase if "Cell" not in kind else torch.nn.RNNCellBase
    assert isinstance(m, base)
    ref = getattr(torch.nn, kind)(3, 4)
    assert repr(m) == repr(ref)
    assert [n for n, _ in m.named_parameters()] == [n for n, _ in ref.named_parameters()]


# --- errors: the same exception type as torch.nn, for every misuse torch.nn refuses ---

def _misuses():
    x = torch.randn(3, 2, 4)
    h = torch.zeros(1, 2, 5)
    return [
        ("LSTM", "input 4-d", lambda m: m(torch.randn(3, 2, 4, 1))),
        ("LSTM", "input size", lambda m: m(torch.randn(3, 2, 6))),
        ("LSTM", "empty sequence", lambda m: m(torch.randn(0, 2, 4))),
        ("LSTM", "input dtype", lambda m: m(x.double())),
        ("LSTM", "input int", lambda m: m(x.long())),
        ("LSTM", "hx shape", lambda m: m(x, (torch.zeros(1, 3, 5), torch.zeros(1, 3, 5)))),
        ("LSTM", "cx shape", lambda m: m(x, (h, torch.zeros(1, 2, 6)))),
        ("LSTM", "hx 2-d for batched", lambda m: m(x, (h[0], h[0]))),
        ("LSTM", "hx 3-d for unbatched", lambda m: m(x[:, 0], (h, h))),
        ("LSTM", "hx dtype", lambda m: m(x, (h.double(), h))),
        ("GRU", "hx 3-d for unbatched", lambda m: m(x[:, 0], h)),
        ("GRU", "hx 2-d for batched", lambda m: m(x, h[0])),
        ("GRU", "hx shape", lambda m: m(x, torch.zeros(2, 2, 5))),
        ("GRU", "input dtype", lambda m: m(x.double())),
        ("RNN", "input 1-d", lambda m: m(torch.randn(4))),
        ("RNN", "hx batch", lambda m: m(x, torch.zeros(1, 3, 5))),
        ("LSTMCell", "input 3-d", lambda m: m(x)),
        ("LSTMCell", "input size", lambda m: m(torch.randn(2, 6))),
        ("LSTMCell", "hx batch", lambda m: m(x[0], (torch.zeros(3, 5), torch.zeros(3, 5)))),
        ("LSTMCell", "hx size", lambda m: m(x[0], (torch.zeros(2, 6), torch.zeros(2, 6)))),
        ("LSTMCell", "hx 3-d", lambda m: m(x[0], (h, h))),
        ("GRUCell", "hx 3-d", lambda m: m(x[0], h)),
        ("GRUCell", "input size", lambda m: m(torch.randn(2, 3))),
        ("RNNCell", "hx batch", lambda m: m(x[0], torch.zeros(3, 5))),
    ]


@pytest.mark.parametrize("kind, what, call", _misuses(), ids=[f"{k}-{w}" for k, w, _ in _misuses()])
def test_misuse_raises_torch_exception_type(kind, what, call):
    ours, ref = getattr(lt, kind)(4, 5), getattr(torch.nn, kind)(4, 5)
    with pytest.raises(Exception) as want:
        call(ref)
    with pytest.raises(want.type) as got:
        call(ours)
    assert str(got.value)  # a message, naming what was passed (checked below for some)


def test_misuse_messages_name_what_was_passed():
    m = lt.LSTM(4, 5)
    with pytest.raises(RuntimeError, match="Expected 4, got 6"):
        m(torch.randn(3, 2, 6))
    with pytest.raises(RuntimeError, match=r"Expected hidden\[0\] size \(1, 2, 5\), got \[1, 3, 5\]"):
        m(torch.randn(3, 2, 4), (torch.zeros(1, 3, 5), torch.zeros(1, 3, 5)))
    with pytest.raises(RuntimeError, match="got torch.float64"):
        m(torch.randn(3, 2, 4), (torch.zeros(1, 2, 5, dtype=torch.float64), torch.zeros(1, 2, 5)))
    with pytest.raises(RuntimeError, match="got a tuple of 3"):
        m(torch.randn(3, 2, 4), (torch.zeros(1, 2, 5),) * 3)
    with pytest.raises(RuntimeError, match="but got 3-D tensor"):
        lt.GRU(4, 5)(torch.randn(3, 4), torch.zeros(1, 1, 5))
    with pytest.raises(IndexError, match="batch_sizes is empty"):
        m(torch.nn.utils.rnn.PackedSequence(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)))


@pytest.mark.parametrize("args, kw", [((4, 5), {"proj_size": 5}), ((4, 0), {}),
                                      ((4, 5), {"num_layers": 0}), ((4, 5), {"bias": 0}),
                                      ((4, 5), {"batch_first": 1}), ((4, 5), {"dropout": 2.0}),
                                      ((4, 5), {"bogus": 1})],
                         ids=["proj", "hidden0", "layers0", "bias", "batch_first", "dropout", "kw"])
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_constructor_errors_as_torch(kind, args, kw):
    with pytest.raises(Exception) as want:
        getattr(torch.nn, kind)(*args, **kw)
    with pytest.raises(want.type, match=None):
        getattr(lt, kind)(*args, **kw)


# --- autograd ------------------------------------------------------------------------

def _gradcheck_case(kind, kw, packed, **cfg):
    m, _ = _pair(kind, kw, num_layers=2, bidirectional=True, **cfg)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    hx = _state(m, 3)
    hx = tuple(h.requires_grad_() for h in hx) if isinstance(hx, tuple) else hx.requires_grad_()
    names = [n for n, _ in m.named_parameters()]

    def f(x, *args):
        n = len(hx) if isinstance(hx, tuple) else 1
        state = tuple(args[:n]) if isinstance(hx, tuple) else args[0]
        inp = pack_padded_sequence(x, torch.tensor([4, 2, 3]), enforce_sorted=False) \
            if packed else x
        y, st = torch.func.functional_call(m, dict(zip(names, args[n:])), (inp, state))
        if packed:
            y = pad_packed_sequence(y)[0]
        return (y,) + (st if isinstance(st, tuple) else (st,))

    leaves = (x,) + (hx if isinstance(hx, tuple) else (hx,)) + tuple(
        p.detach().requires_grad_() for p in m.parameters())
    return f, leaves


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("kind, kw", LAYERS, ids=LAYER_IDS)
def test_gradcheck_every_layer(kind, kw, packed):
    f, leaves = _gradcheck_case(kind, kw, packed)
    assert torch.autograd.gradcheck(f, leaves)


@pytest.mark.parametrize("kind, kw", CELLS, ids=CELL_IDS)
def test_gradcheck_every_cell(kind, kw):
    m, _ = _pair(kind, kw)
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    hx = _cell_state(m, 3, requires_grad=True)
    names = [n for n, _ in m.named_parameters()]
    params = tuple(p.detach().requires_grad_() for p in m.parameters())

    def f(x, *args):
        n = len(hx) if isinstance(hx, tuple) else 1
        state = tuple(args[:n]) if isinstance(hx, tuple) else args[0]
        return torch.func.functional_call(m, dict(zip(names, args[n:])), (x, state))

    assert torch.autograd.gradcheck(f, (x,) + (hx if isinstance(hx, tuple) else (hx,)) + params)


def test_repeated_backward_with_retain_graph_gives_the_same_gradients():
    m, ref = _pair("LSTM", {}, num_layers=2, bidirectional=True, dropout=0.5)
    torch.manual_seed(0)
    x = torch.randn(5, 3, 4, dtype=torch.float64, requires_grad=True)
    y, (h, c) = m(x)
    loss = y.pow(2).sum() + c.sum()
    first = torch.autograd.grad(loss, [x, *m.parameters()], retain_graph=True)
    second = torch.autograd.grad(loss, [x, *m.parameters()], retain_graph=True)
    loss.backward()
    third = [x.grad, *(p.grad for p in m.parameters())]
    for a, b, c3 in zip(first, second, third):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # same kernels, same masks
        torch.testing.assert_close(a, c3, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        loss.backward()  # as torch.nn: freed after a backward without retain_graph


@pytest.mark.parametrize("kind, kw", LAYERS, ids=LAYER_IDS)
def test_double_backward_gradient_penalty_equals_torch(kind, kw):
    ours, ref = _pair(kind, kw, num_layers=2, bidirectional=True)
    x = torch.randn(5, 3, 4, dtype=torch.float64, requires_grad=True)
    hx = _state(ours, 3)
    results = []
    for m in (ours, ref):
        y, _ = m(x, hx)
        g = torch.autograd.grad(y.pow(2).sum(), [x, m.weight_hh_l0], create_graph=True)
        penalty = sum(gi.pow(2).sum() for gi in g)
        results.append(torch.autograd.grad(penalty, [x, m.weight_ih_l0, m.weight_hh_l1]))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_gradgradcheck_and_packed_double_backward():
    m, ref = _pair("GRU", {}, bidirectional=True)
    x = torch.randn(4, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x: m(x)[0], (x,))
    results = []
    for mod in (m, ref):
        inp = pack_padded_sequence(x, torch.tensor([4, 1, 3]), enforce_sorted=False)
        y, h = mod(inp)
        (gx,) = torch.autograd.grad(y.data.pow(2).sum() + h.sum(), [x], create_graph=True)
        results.append(torch.autograd.grad(gx.pow(2).sum(), [x, mod.weight_hh_l0]))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_torch_func_grad_equals_torch_and_vmap_raises_as_torch():
    ours, ref = _pair("LSTM", {}, num_layers=2)
    x = torch.randn(5, 3, 4, dtype=torch.float64)

    def loss(params, m):
        return torch.func.functional_call(m, params, (x,))[0].pow(2).sum()

    g1 = torch.func.grad(loss)(dict(ours.named_parameters()), ours)
    g2 = torch.func.grad(loss)(dict(ref.named_parameters()), ref)
    for k in g1:
        torch.testing.assert_close(g1[k], g2[k], rtol=1e-10, atol=1e-12)
    xs = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    with pytest.raises(Exception) as want:
        torch.func.vmap(lambda a: ref(a)[0])(xs)
    with pytest.raises(want.type):
        torch.func.vmap(lambda a: ours(a)[0])(xs)


@pytest.mark.parametrize("kind", ["GRU", "RNN", "GRUCell", "RNNCell"])
def test_autocast_output_dtype_as_torch(kind):
    ours, ref = _pair(kind, {}, dtype=torch.float32)
    x = torch.randn(3, 2, 4) if "Cell" not in kind else torch.randn(2, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = ref(x)
        got = ours(x)
    want = want[0] if isinstance(want, tuple) else want
    got = got[0] if isinstance(got, tuple) else got
    assert got.dtype == want.dtype
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)


def test_autocast_lstm_answers_in_the_autocast_dtype():
    """torch.nn.LSTM computes in the autocast dtype under CPU autocast (on a CPU without
    bfloat16 RNN support its oneDNN call fails); the drop-in computes in float32 and
    answers in the autocast dtype."""
    ours, ref = _pair("LSTM", {}, dtype=torch.float32)
    x = torch.randn(3, 2, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, (h, c) = ours(x.bfloat16())
    assert y.dtype == h.dtype == c.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ref(x.bfloat16().float())[0], rtol=1e-2, atol=1e-2)


# --- serialization and memory ---------------------------------------------------------

class _Model(torch.nn.Module):
    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn
        self.out = torch.nn.Linear(5, 2)

    def forward(self, x):
        return self.out(self.rnn(x)[0])


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN", "LSTMCell"])
def test_torch_save_load_with_weights_only(kind, tmp_path):
    ours, ref = _pair(kind, {}, dtype=torch.float32)
    x = torch.randn(3, 2, 4) if "Cell" not in kind else torch.randn(2, 4)
    ours(x)  # an engine with work buffers exists now: it must not be saved
    # the pickled state is torch.nn's
    assert set(ours.__getstate__()) == set(ref.__getstate__())
    path = tmp_path / "m.pt"
    torch.save(ours, path)
    torch.save(ref, tmp_path / "ref.pt")
    assert path.stat().st_size <= (tmp_path / "ref.pt").stat().st_size + 64
    with torch.serialization.safe_globals([getattr(lt, kind)]):
        back = torch.load(path)  # weights_only=True, torch's default
    assert type(back) is type(ours)
    a, b = back(x), ours(x)
    a, b = (a[0], b[0]) if isinstance(a, tuple) else (a, b)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    for clone in (copy.deepcopy(ours), pickle.loads(pickle.dumps(ours))):
        c = clone(x)
        torch.testing.assert_close(c[0] if isinstance(c, tuple) else c, b, rtol=0, atol=0)


def test_model_with_dropins_saves_and_loads_whole():
    model = _Model(lt.LSTM(4, 5, num_layers=2))
    x = torch.randn(3, 2, 4)
    want = model(x)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    with torch.serialization.safe_globals([_Model, lt.LSTM, torch.nn.Linear]):
        back = torch.load(buf)
    torch.testing.assert_close(back(x), want, rtol=0, atol=0)


def test_module_holds_its_parameters_once():
    """No shadow copies: the engine behind the module has no parameters or gradients of its
    own, and after a training step the module holds torch.nn's tensors and nothing else
    of their size."""
    m = lt.LSTM(64, 128, num_layers=2)
    x = torch.randn(5, 3, 64)
    m(x)[0].sum().backward()
    (engine,) = m._lf_engines.values()
    assert engine.params == {} and engine.grads == {}
    shapes = {tuple(p.shape) for p in m.parameters()}

    def arrays(obj, seen):
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, np.ndarray):
            yield obj
        elif isinstance(obj, dict):
            for v in obj.values():
                yield from arrays(v, seen)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                yield from arrays(v, seen)

    # the kernels' work buffers are flat; a shadow parameter or gradient would have a
    # parameter's shape
    assert not [a.shape for a in arrays(engine.__dict__, set()) if a.shape in shapes]


# --- export and tracing -----------------------------------------------------------------

@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_jit_trace_matches(kind):
    ours, _ = _pair(kind, {}, dtype=torch.float32, num_layers=2, bidirectional=True)
    x = torch.randn(5, 3, 4)
    traced = torch.jit.trace(ours, (x,))
    torch.testing.assert_close(traced(x)[0], ours(x)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("strict", [False, True], ids=["nonstrict", "strict"])
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_torch_export_traces_torch_operator(kind, strict):
    """torch.export, strict (dynamo) or not: the program holds aten's RNN operator (the
    kernels cannot be traced) and computes the module's output."""
    ours, _ = _pair(kind, {}, dtype=torch.float32, num_layers=2)
    ours.eval()
    x = torch.randn(5, 3, 4)
    program = torch.export.export(ours, (x,), strict=strict)
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert any(kind.lower() in t for t in targets), targets
    torch.testing.assert_close(program.module()(x)[0], ours(x)[0], rtol=1e-5, atol=1e-6)


class _Scriptable(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = lt.LSTM(3, 4, num_layers=2, bidirectional=True, dtype=torch.float64)
        self.b = lt.GRU(8, 5, dtype=torch.float64)
        self.c = lt.RNNCell(5, 6, nonlinearity="relu", dtype=torch.float64)

    def forward(self, x):
        y, _ = self.a(x)
        z, _ = self.b(y)
        return self.c(z[-1])


def test_torch_jit_script_compiles_torch_modules_holding_the_same_parameters():
    """torch.jit.script of a model holding drop-ins: the kernels are no TorchScript, so
    each drop-in offers (__prepare_scriptable__) the torch.nn module of its
    configuration holding its very parameters; the scripted model computes the drop-ins'
    outputs, trains their parameters, and saves and loads without lstmfast's classes."""
    torch.manual_seed(0)
    m = _Scriptable()
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    want = m(x)
    params = dict(m.named_parameters())
    scripted = torch.jit.script(m)
    torch.testing.assert_close(scripted(x), want, rtol=1e-12, atol=1e-14)
    for name, p in scripted.named_parameters():
        assert p is params[name], name
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    buf.seek(0)
    torch.testing.assert_close(torch.jit.load(buf)(x), want, rtol=1e-12, atol=1e-14)
    # torch.jit.script puts what __prepare_scriptable__ returned in the model's place;
    # the model still computes the same
    torch.testing.assert_close(m(x), want, rtol=1e-12, atol=1e-14)


def test_torch_compile_breaks_the_graph_once_per_module():
    """torch.compile of a model holding drop-ins of five sizes and the cells: torch.nn's
    losses and gradients, with dynamo compiling none of the drop-ins' own code (traced,
    their argument handling was recompiled for every module's shapes, hit dynamo's
    recompile limit and tripled a small model's step time)."""
    import logging

    from torch._dynamo.utils import counters

    class Stack(torch.nn.Module):
        def __init__(self, mod):
            super().__init__()
            self.rnns = torch.nn.ModuleList(
                [mod.LSTM(4 + i, 5 + i, num_layers=1 + i % 2) for i in range(4)]
                + [mod.GRU(8, 6, bidirectional=True)])
            self.cell = mod.LSTMCell(12, 3)

        def forward(self, x):
            for rnn in self.rnns:
                x = rnn(x)[0]
            return self.cell(x[-1])[0].sum() + x.square().sum()

    torch.manual_seed(0)
    ref = Stack(torch.nn).double()
    ours = Stack(lt).double()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(3, 2, 4, dtype=torch.float64)
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("torch._dynamo")
    logger.addHandler(handler)
    torch._dynamo.reset()
    counters.clear()
    try:
        compiled = torch.compile(ours)
        for _ in range(2):
            ours.zero_grad()
            loss = compiled(x)
            loss.backward()
    finally:
        logger.removeHandler(handler)
    ref(x).backward()
    torch.testing.assert_close(loss, ref(x), rtol=1e-12, atol=0)
    for (n, p), q in zip(ours.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12, msg=n)
    assert not records, [r.getMessage() for r in records]
    assert counters["frames"]["total"] <= 3, dict(counters["frames"])


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_onnx_export_emits_the_standard_operator(kind, dynamo, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    if dynamo:
        pytest.importorskip("onnxscript")
    ours, _ = _pair(kind, {}, dtype=torch.float32, num_layers=2, bidirectional=True)
    ours.eval()
    x = torch.randn(5, 3, 4)
    path = str(tmp_path / "m.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(ours, (x,), path, dynamo=dynamo)
    ops = {n.op_type for n in onnx.load(path).graph.node}
    ref = getattr(torch.nn, kind)(4, 5, num_layers=2, bidirectional=True).eval()
    ref_path = str(tmp_path / "ref.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(ref, (x,), ref_path, dynamo=dynamo)
    assert ops == {n.op_type for n in onnx.load(ref_path).graph.node}
    # torch's dynamo exporter writes ONNX's RNN operator out in primitives
    assert kind in ops or (dynamo and kind == "RNN")
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = ours(x)
    np.testing.assert_allclose(got[0], want[0].numpy(), rtol=1e-5, atol=1e-6)


def test_onnx_export_with_sequence_lengths(tmp_path):
    """A packed batch exports as ONNX's LSTM with sequence_lens (torch's exporter)."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")

    class Packed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = lt.LSTM(4, 5, bidirectional=True)

        def forward(self, x, lengths):
            y, (h, c) = self.rnn(pack_padded_sequence(x, lengths, enforce_sorted=False))
            return pad_packed_sequence(y, total_length=x.shape[0])[0], h

    model = Packed().eval()
    x, lengths = torch.randn(5, 3, 4), torch.tensor([5, 2, 4])
    path = str(tmp_path / "p.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x, lengths), path, dynamo=False)
    graph = onnx.load(path).graph
    lstm = [n for n in graph.node if n.op_type == "LSTM"]
    assert lstm and len(lstm[0].input) >= 5 and lstm[0].input[4]  # sequence_lens wired
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    feeds = dict(zip([i.name for i in sess.get_inputs()], [x.numpy(), lengths.numpy()]))
    got = sess.run(None, feeds)
    with torch.no_grad():
        want = model(x, lengths)
    np.testing.assert_allclose(got[0], want[0].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[1], want[1].numpy(), rtol=1e-5, atol=1e-6)


# --- cells ------------------------------------------------------------------------------

def _cell_state(m, B, requires_grad=False):
    make = lambda: torch.randn(B, m.hidden_size, dtype=torch.float64,
                               requires_grad=requires_grad)
    return (make(), make()) if isinstance(m, torch.nn.LSTMCell) else make()


@pytest.mark.parametrize("kind, kw", CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("with_state", [True, False], ids=["state", "nostate"])
def test_cells_match_torch(kind, kw, batched, with_state):
    ours, ref = _pair(kind, kw)
    x = torch.randn(3, 4, dtype=torch.float64)
    hx = _cell_state(ours, 3) if with_state else None
    if not batched:
        x = x[0]
        hx = None if hx is None else (tuple(h[0] for h in hx) if isinstance(hx, tuple) else hx[0])
    outs = []
    for m in (ours, ref):
        xi = x.clone().requires_grad_()
        out = m(xi, hx)
        parts = out if isinstance(out, tuple) else (out,)
        sum((p * torch.arange(p.numel(), dtype=p.dtype).reshape(p.shape)).sum()
            for p in parts).backward()
        outs.append([*parts, xi.grad, *(p.grad for p in m.parameters())])
        m.zero_grad()
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)


def test_cell_in_a_loop_trains_like_torch():
    ours, ref = _pair("LSTMCell", {})
    xs = torch.randn(6, 2, 4, dtype=torch.float64)
    grads = []
    for m in (ours, ref):
        h = c = torch.zeros(2, 5, dtype=torch.float64)
        for x in xs:
            h, c = m(x, (h, c))
        h.sum().backward()
        grads.append([p.grad.clone() for p in m.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)


# --- threads ------------------------------------------------------------------------------

def _run_py(code, **env):
    full = dict(os.environ, **env)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=full, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_dropin_runs_on_torch_openmp_threads_and_thread_count():
    """Inside a torch process the drop-in's calls start no threads of their own when torch
    runs on OpenMP: they borrow torch's team (whose threads would otherwise spin against
    ours), and they follow torch.set_num_threads."""
    code = """
import os, torch, lstmfast.torch as lt
from lstmfast.torch import _openmp_functions
torch.set_num_threads(2)
omp = "parallel backend: OpenMP" in torch.__config__.parallel_info()
print("omp", omp, _openmp_functions() is not None)
a = torch.randn(512, 512); (a @ a).sum()  # torch's workers exist now
before = len(os.listdir("/proc/self/task"))
m = lt.LSTM(64, 256, num_layers=2)
x = torch.randn(50, 16, 64, requires_grad=True)
for _ in range(3):
    m(x)[0].sum().backward()
engine, = m._lf_engines.values()
print("threads", engine._num_threads(), "new", len(os.listdir("/proc/self/task")) - before)
torch.set_num_threads(1)
print("threads", engine._num_threads())
"""
    out = _run_py(code).split("\n")
    omp, found = out[0].split()[1:]
    assert omp == found  # found exactly when torch's backend is OpenMP
    threads, new = out[1].split()[1], out[1].split()[3]
    assert threads == "2"
    if omp == "True":
        assert new == "0"
    assert out[2] == "threads 1"


def test_dropin_threads_give_the_same_numbers_on_any_team():
    """Results do not depend on whether the OpenMP team or lstmfast's own helpers run."""
    m = lt.LSTM(32, 96, num_layers=2)
    x = torch.randn(40, 8, 32, requires_grad=True)
    y1, _ = m(x)
    y1.sum().backward()
    g1 = m.weight_hh_l0.grad.clone()
    (engine,) = m._lf_engines.values()
    engine._scratch["pools"] = []  # own helpers from now on
    m.zero_grad()
    y2, _ = m(x)
    y2.sum().backward()
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)
    torch.testing.assert_close(m.weight_hh_l0.grad, g1, rtol=0, atol=0)


def test_numpy_api_threads_follow_omp_num_threads_and_cgroup_quota(tmp_path):
    out = _run_py("import lstmfast; print(lstmfast.get_num_threads())", OMP_NUM_THREADS="1")
    assert out.strip() == "1"
    from lstmfast.threads import _cgroup_cpu_quota
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert _cgroup_cpu_quota(str(tmp_path)) == 2
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert _cgroup_cpu_quota(str(tmp_path)) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert _cgroup_cpu_quota(str(v1)) == 1


def test_numpy_api_reads_the_cgroup_quota_once_a_second(monkeypatch):
    """get_num_threads, asked on every kernel call, applies the container's quota but
    reads its files again only after a second (they took ~100 us a call)."""
    from lstmfast import threads

    reads, clock = [], [1000.0]
    monkeypatch.setattr(threads, "_requested", None)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "_quota_read", (-float("inf"), None))
    monkeypatch.setattr(threads, "_cgroup_cpu_quota", lambda: reads.append(1) or 1)
    monkeypatch.setattr(threads.time, "monotonic", lambda: clock[0])
    assert [threads.get_num_threads() for _ in range(50)] == [1] * 50
    assert len(reads) == 1
    clock[0] += 0.5
    threads.get_num_threads()
    assert len(reads) == 1
    clock[0] += 0.6
    assert threads.get_num_threads() == 1
    assert len(reads) == 2
