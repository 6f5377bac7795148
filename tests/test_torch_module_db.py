"""PyTorch's own test inputs for its recurrent modules and cells (the module database
shipped in the torch wheel, torch.testing._internal.common_modules.module_db) run through
the drop-ins and through torch.nn with the same weights: outputs, gradients, state_dict,
pickling, repr, and every error input torch lists (same type, same message)."""
import copy
import pickle

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("expecttest")  # common_modules imports it
from torch.testing._internal.common_modules import ModuleErrorEnum, module_db  # noqa: E402

import lstmfast.torch as lt  # noqa: E402

KINDS = ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"]
INFOS = [m for m in module_db if m.module_cls in [getattr(torch.nn, k) for k in KINDS]]


def _cases():
    for info in INFOS:
        for dtype in (torch.float32, torch.float64):
            for training in (True, False):
                inputs = info.module_inputs_func(info, device="cpu", dtype=dtype,
                                                 requires_grad=True, training=training)
                for i in range(len(inputs)):
                    yield pytest.param(info, dtype, training, i,
                                       id=f"{info.module_cls.__name__}-{str(dtype)[6:]}-"
                                          f"{'train' if training else 'eval'}-{i}")


def _flat(obj):
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for o in obj for t in _flat(o)]
    return []


def _clone_inputs(args, kwargs):
    def clone(o):
        if isinstance(o, torch.Tensor):
            return o.detach().clone().requires_grad_(o.requires_grad)
        if isinstance(o, (tuple, list)):
            return type(o)(clone(v) for v in o)
        return o
    return clone(args), {k: clone(v) for k, v in kwargs.items()}


def _pair(info, cin, dtype, training):
    ref = info.module_cls(*cin.args, **cin.kwargs).to(dtype)
    ours = getattr(lt, info.module_cls.__name__)(*cin.args, **cin.kwargs).to(dtype)
    ours.load_state_dict(ref.state_dict())
    ref.train(training)
    ours.train(training)
    return ours, ref


def _run(module, fin):
    args, kwargs = _clone_inputs(fin.args, fin.kwargs)
    out = module(*args, **kwargs)
    outs = _flat(out)
    leaves = [t for t in _flat((args, list(kwargs.values()))) if t.requires_grad]
    params = list(module.parameters())
    loss = sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).reshape(o.shape)).sum()
               for o in outs)
    grads = torch.autograd.grad(loss, leaves + params, allow_unused=True)
    return outs, list(grads)


@pytest.mark.parametrize("info, dtype, training, i", list(_cases()))
def test_module_db_input_through_dropin_equals_torch(info, dtype, training, i):
    inputs = info.module_inputs_func(info, device="cpu", dtype=dtype, requires_grad=True,
                                     training=training)
    mi = inputs[i]
    torch.manual_seed(0)
    ours, ref = _pair(info, mi.constructor_input, dtype, training)
    assert repr(ours) == repr(ref)
    assert list(ours.state_dict()) == list(ref.state_dict())
    dropout = training and getattr(ref, "dropout", 0) > 0 and ref.num_layers > 1
    if dropout:  # different generators draw the masks: compare in eval mode instead
        ours.eval()
        ref.eval()
    got, want = _run(ours, mi.forward_input), _run(ref, mi.forward_input)
    # float32: the kernels' and oneDNN's summation orders differ (a few ulps of the
    # values, which are O(1)); float64: ~1e-13
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    assert len(got[0]) == len(want[0])
    for a, b in zip(got[0], want[0]):
        assert a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(a, b, **tol)
    for a, b in zip(got[1], want[1]):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, **tol)
    # a pickled or deep-copied drop-in is the same module
    args, kwargs = _clone_inputs(mi.forward_input.args, mi.forward_input.kwargs)
    for clone in (pickle.loads(pickle.dumps(ours)), copy.deepcopy(ours)):
        assert type(clone) is type(ours)
        for a, b in zip(_flat(clone(*args, **kwargs)), got[0]):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def _error_cases():
    for info in INFOS:
        if info.module_error_inputs_func is None:
            continue
        errors = info.module_error_inputs_func(info, device="cpu", dtype=torch.float32,
                                               requires_grad=False, training=True)
        for i in range(len(errors)):
            yield pytest.param(info, i, id=f"{info.module_cls.__name__}-{i}")


@pytest.mark.parametrize("info, i", list(_error_cases()))
def test_module_db_error_inputs_raise_as_torch(info, i):
    err = info.module_error_inputs_func(info, device="cpu", dtype=torch.float32,
                                        requires_grad=False, training=True)[i]
    mi = err.module_error_input
    cls = getattr(lt, info.module_cls.__name__)
    cin, fin = mi.constructor_input, mi.forward_input
    with pytest.raises(err.error_type, match=err.error_regex):
        m = cls(*cin.args, **cin.kwargs)
        if err.error_on == ModuleErrorEnum.FORWARD_ERROR:
            m(*fin.args, **fin.kwargs)
