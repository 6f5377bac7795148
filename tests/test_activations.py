"""The kernels' own tanh and sigmoid (csrc/pointwise.h) against numpy's, element by element.

A one-unit layer with unit input weight and zero bias and recurrence computes exactly the
activation of its input: an RNN gives tanh(x); a GRU with h0 = 0 gives (1 - z) n, with
z = sigmoid(x) and n = tanh(x) when its weights are all ones.
"""
import numpy as np
import pytest

import lstmfast

# relative error bounds: float32's fitted tanh measures 3.1e-7 on a dense grid (a few ulp
# near +-1), its exp-based sigmoid about 1e-7; double's are within a few ulp
RTOL = {np.float32: 4e-7, np.float64: 1e-15}


def _grid(dtype):
    x = np.concatenate([np.linspace(-12, 12, 200001), np.geomspace(1e-30, 1, 3001)])
    x = np.concatenate([x, -x]).astype(dtype)
    return x


def _layer(cls, dtype, **kw):
    m = cls(1, 1, dtype=dtype, **kw).eval()
    for name, a in m.params.items():
        a[...] = 1 if name.startswith("weight_ih") else 0
    return m


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_tanh_is_accurate_everywhere(dtype):
    x = _grid(dtype)
    y = _layer(lstmfast.RNN, dtype, nonlinearity="tanh")(x.reshape(1, -1, 1))[0].ravel()
    want = np.tanh(x.astype(np.float64))
    assert np.all(np.abs(y) <= 1)
    np.testing.assert_allclose(y, want, rtol=RTOL[dtype], atol=0)
    assert np.array_equal(np.sign(y), np.sign(x))  # odd, and exact at 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_gru_gates_are_accurate_everywhere(dtype):
    """(1 - sigmoid(x)) tanh(x): both activations over the whole range."""
    x = _grid(dtype)
    m = _layer(lstmfast.GRU, dtype)
    y = m(x.reshape(1, -1, 1))[0].ravel()
    xd = x.astype(np.float64)
    want = (1 - 1 / (1 + np.exp(-xd))) * np.tanh(xd)
    # (1 - z) in the kernel's precision loses relative accuracy where z is near 1
    tol = RTOL[dtype] * 2 + np.finfo(dtype).eps * (1 / (1 + np.exp(-xd))) / (1 - 1 / (1 + np.exp(-xd)) + 1e-300)
    assert np.all(np.abs(y - want) <= tol * np.abs(want) + np.finfo(dtype).tiny)
