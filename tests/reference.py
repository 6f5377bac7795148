"""A plain float64 numpy oracle for PyTorch's recurrent layers: LSTM, GRU and RNN.

It exists to test lstmfast's kernels against, so it is written to be read, not to be fast:
one function per cell with the textbook formulas, a loop over layers, directions, sequences
and timesteps, and a hand-written backward pass through time (BPTT) that mirrors the forward
line by line. It imports nothing but numpy and shares no code with the package.

Semantics are PyTorch's (torch.nn.LSTM / GRU / RNN), time-major:

    x       [T, B, I]
    y       [T, B, D*H_out]          D = 2 if bidirectional else 1
    h0, h_n [num_layers*D, B, H_out] H_out = proj_size if proj_size else hidden_size
    c0, c_n [num_layers*D, B, H]     LSTM only
    the state of layer k, direction d sits at index k*D + d.

Parameters are a dict with PyTorch's state_dict names (suffix "" or "_reverse"):

    weight_ih_l{k}{sfx} [G*H, I_k]   I_0 = input_size, I_k = D*H_out for k > 0
    weight_hh_l{k}{sfx} [G*H, H_out]
    bias_ih_l{k}{sfx}   [G*H]        both biases absent when bias=False
    bias_hh_l{k}{sfx}   [G*H]
    weight_hr_l{k}{sfx} [P, H]       LSTM with proj_size = P > 0 only

with G = 4 (LSTM, gates i, f, g, o), 3 (GRU, gates r, z, n) or 1 (RNN).

Variable-length batches (``lengths``) follow packed-sequence semantics: each sequence b is run
on its own first lengths[b] steps only. The outputs after its end are zero, h_n / c_n are its
state after its last valid step, and the reverse direction starts at its own last valid
element. The plainest way to get that right is to run every sequence separately, which is
what this file does: the cells below are called with a batch of one row.
"""
import numpy as np

__all__ = [
    "GATES",
    "sigmoid",
    "lstm_cell_forward", "lstm_cell_backward",
    "gru_cell_forward", "gru_cell_backward",
    "rnn_cell_forward", "rnn_cell_backward",
    "cell_forward", "cell_backward",
    "rnn_forward", "rnn_backward",
    "param_names", "init_params", "numerical_grad",
]

# Number of gate blocks stacked in weight_ih / weight_hh, per mode.
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def _linear(x, w, b):
    """x @ w.T + b, with b = None meaning no bias.  x [B, in], w [out, in], b [out]."""
    out = x @ w.T
    if b is not None:
        out = out + b
    return out


# ---------------------------------------------------------------------------------------------
# LSTM cell
# ---------------------------------------------------------------------------------------------

def lstm_cell_forward(x_t, h, c, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None):
    """One LSTM step.

    x_t [B, I], h [B, H_out], c [B, H]; w_ih [4H, I], w_hh [4H, H_out], b_* [4H] or None,
    w_hr [P, H] or None.  Returns (h_new [B, H_out], c_new [B, H], cache).

        i = sigmoid(W_ii x + b_ii + W_hi h + b_hi)
        f = sigmoid(W_if x + b_if + W_hf h + b_hf)
        g = tanh   (W_ig x + b_ig + W_hg h + b_hg)
        o = sigmoid(W_io x + b_io + W_ho h + b_ho)
        c_new = f * c + i * g
        m     = o * tanh(c_new)
        h_new = W_hr m   if projecting, else m
    """
    H = w_ih.shape[0] // 4
    a = _linear(x_t, w_ih, b_ih) + _linear(h, w_hh, b_hh)  # [B, 4H] pre-activations
    i = sigmoid(a[:, 0 * H:1 * H])
    f = sigmoid(a[:, 1 * H:2 * H])
    g = np.tanh(a[:, 2 * H:3 * H])
    o = sigmoid(a[:, 3 * H:4 * H])
    c_new = f * c + i * g
    tanh_c = np.tanh(c_new)
    m = o * tanh_c
    if w_hr is not None:
        h_new = m @ w_hr.T
    else:
        h_new = m
    cache = dict(x_t=x_t, h=h, c=c, w_ih=w_ih, w_hh=w_hh, w_hr=w_hr,
                 has_bias=(b_ih is not None, b_hh is not None),
                 i=i, f=f, g=g, o=o, tanh_c=tanh_c, m=m)
    return h_new, c_new, cache


def lstm_cell_backward(cache, dh_new, dc_new):
    """Backward of one LSTM step.

    dh_new [B, H_out], dc_new [B, H] are the gradients of the loss w.r.t. h_new and c_new
    coming from outside the step (the next step and/or the output).
    Returns (dx_t, dh, dc, grads) with grads keys w_ih, w_hh, b_ih, b_hh, w_hr (None where
    the parameter does not exist).
    """
    i, f, g, o = cache["i"], cache["f"], cache["g"], cache["o"]
    tanh_c, m = cache["tanh_c"], cache["m"]
    w_hr = cache["w_hr"]

    if w_hr is not None:
        dm = dh_new @ w_hr           # h_new = m @ w_hr.T
        dw_hr = dh_new.T @ m
    else:
        dm = dh_new
        dw_hr = None

    do = dm * tanh_c
    dc_total = dc_new + dm * o * (1.0 - tanh_c ** 2)   # c_new feeds both c_out and m
    di = dc_total * g
    df = dc_total * cache["c"]
    dg = dc_total * i
    dc = dc_total * f

    # through the nonlinearities: sigmoid' = s (1 - s), tanh' = 1 - t^2
    da = np.concatenate([
        di * i * (1.0 - i),
        df * f * (1.0 - f),
        dg * (1.0 - g ** 2),
        do * o * (1.0 - o),
    ], axis=1)                                          # [B, 4H]

    dx_t = da @ cache["w_ih"]
    dh = da @ cache["w_hh"]
    has_b_ih, has_b_hh = cache["has_bias"]
    grads = dict(
        w_ih=da.T @ cache["x_t"],
        w_hh=da.T @ cache["h"],
        b_ih=da.sum(axis=0) if has_b_ih else None,
        b_hh=da.sum(axis=0) if has_b_hh else None,
        w_hr=dw_hr,
    )
    return dx_t, dh, dc, grads


# ---------------------------------------------------------------------------------------------
# GRU cell
# ---------------------------------------------------------------------------------------------

def gru_cell_forward(x_t, h, w_ih, w_hh, b_ih=None, b_hh=None):
    """One GRU step, PyTorch's variant (the reset gate multiplies W_hn h + b_hn).

    x_t [B, I], h [B, H]; w_ih [3H, I], w_hh [3H, H], b_* [3H] or None.
    Returns (h_new [B, H], cache).

        r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
        z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
        n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
        h_new = (1 - z) * n + z * h
    """
    H = w_ih.shape[0] // 3
    gi = _linear(x_t, w_ih, b_ih)   # [B, 3H] input part
    gh = _linear(h, w_hh, b_hh)     # [B, 3H] hidden part, kept apart for r * (W_hn h + b_hn)
    r = sigmoid(gi[:, 0 * H:1 * H] + gh[:, 0 * H:1 * H])
    z = sigmoid(gi[:, 1 * H:2 * H] + gh[:, 1 * H:2 * H])
    gh_n = gh[:, 2 * H:3 * H]
    n = np.tanh(gi[:, 2 * H:3 * H] + r * gh_n)
    h_new = (1.0 - z) * n + z * h
    cache = dict(x_t=x_t, h=h, w_ih=w_ih, w_hh=w_hh,
                 has_bias=(b_ih is not None, b_hh is not None),
                 r=r, z=z, n=n, gh_n=gh_n)
    return h_new, cache


def gru_cell_backward(cache, dh_new):
    """Backward of one GRU step.  Returns (dx_t, dh, grads) with keys w_ih, w_hh, b_ih, b_hh."""
    r, z, n, gh_n, h = cache["r"], cache["z"], cache["n"], cache["gh_n"], cache["h"]

    dn = dh_new * (1.0 - z)
    dz = dh_new * (h - n)
    dh = dh_new * z                      # direct path h -> h_new

    da_n = dn * (1.0 - n ** 2)           # pre-activation of n
    dr = da_n * gh_n
    dgh_n = da_n * r
    da_r = dr * r * (1.0 - r)
    da_z = dz * z * (1.0 - z)

    dgi = np.concatenate([da_r, da_z, da_n], axis=1)    # [B, 3H]
    dgh = np.concatenate([da_r, da_z, dgh_n], axis=1)   # [B, 3H]

    dx_t = dgi @ cache["w_ih"]
    dh = dh + dgh @ cache["w_hh"]
    has_b_ih, has_b_hh = cache["has_bias"]
    grads = dict(
        w_ih=dgi.T @ cache["x_t"],
        w_hh=dgh.T @ h,
        b_ih=dgi.sum(axis=0) if has_b_ih else None,
        b_hh=dgh.sum(axis=0) if has_b_hh else None,
    )
    return dx_t, dh, grads


# ---------------------------------------------------------------------------------------------
# Elman RNN cell
# ---------------------------------------------------------------------------------------------

def rnn_cell_forward(x_t, h, w_ih, w_hh, b_ih=None, b_hh=None, nonlinearity="tanh"):
    """One Elman RNN step: h_new = act(W_ih x + b_ih + W_hh h + b_hh), act = tanh or relu.

    x_t [B, I], h [B, H]; w_ih [H, I], w_hh [H, H], b_* [H] or None.
    Returns (h_new [B, H], cache).
    """
    a = _linear(x_t, w_ih, b_ih) + _linear(h, w_hh, b_hh)
    if nonlinearity == "tanh":
        h_new = np.tanh(a)
    elif nonlinearity == "relu":
        h_new = np.maximum(a, 0.0)
    else:
        raise ValueError(f"unknown nonlinearity {nonlinearity!r}")
    cache = dict(x_t=x_t, h=h, w_ih=w_ih, w_hh=w_hh, nonlinearity=nonlinearity,
                 has_bias=(b_ih is not None, b_hh is not None), h_new=h_new)
    return h_new, cache


def rnn_cell_backward(cache, dh_new):
    """Backward of one RNN step.  Returns (dx_t, dh, grads) with keys w_ih, w_hh, b_ih, b_hh."""
    h_new = cache["h_new"]
    if cache["nonlinearity"] == "tanh":
        da = dh_new * (1.0 - h_new ** 2)
    else:
        # relu' = 1 where the output is positive, 0 elsewhere (PyTorch's choice at 0 too)
        da = dh_new * (h_new > 0.0)
    dx_t = da @ cache["w_ih"]
    dh = da @ cache["w_hh"]
    has_b_ih, has_b_hh = cache["has_bias"]
    grads = dict(
        w_ih=da.T @ cache["x_t"],
        w_hh=da.T @ cache["h"],
        b_ih=da.sum(axis=0) if has_b_ih else None,
        b_hh=da.sum(axis=0) if has_b_hh else None,
    )
    return dx_t, dh, grads


# ---------------------------------------------------------------------------------------------
# One cell, any mode
# ---------------------------------------------------------------------------------------------

def cell_forward(mode, x_t, h, c, w_ih, w_hh, b_ih, b_hh, w_hr=None, nonlinearity="tanh"):
    """One step of an LSTMCell / GRUCell / RNNCell (plus LSTM projection via w_hr).

    c is the LSTM cell state and ignored (pass None) for GRU and RNN.
    Returns (h_new, c_new or None, cache); pass the cache to cell_backward.
    """
    if mode == "LSTM":
        h_new, c_new, cache = lstm_cell_forward(x_t, h, c, w_ih, w_hh, b_ih, b_hh, w_hr)
    elif mode == "GRU":
        if w_hr is not None:
            raise ValueError("projection (w_hr) is only defined for LSTM")
        h_new, cache = gru_cell_forward(x_t, h, w_ih, w_hh, b_ih, b_hh)
        c_new = None
    elif mode == "RNN":
        if w_hr is not None:
            raise ValueError("projection (w_hr) is only defined for LSTM")
        h_new, cache = rnn_cell_forward(x_t, h, w_ih, w_hh, b_ih, b_hh, nonlinearity)
        c_new = None
    else:
        raise ValueError(f"mode must be 'LSTM', 'GRU' or 'RNN', got {mode!r}")
    cache["mode"] = mode
    return h_new, c_new, cache


def cell_backward(cache, dh_new, dc_new=None):
    """Backward of cell_forward.

    dc_new is used by LSTM only; None means zero.
    Returns (dx_t, dh, dc or None, grads) with grads keys w_ih, w_hh, b_ih, b_hh (None when
    there is no bias) and, for LSTM, w_hr (None without projection).
    """
    mode = cache["mode"]
    if mode == "LSTM":
        if dc_new is None:
            dc_new = np.zeros_like(cache["c"])
        return lstm_cell_backward(cache, dh_new, dc_new)
    if mode == "GRU":
        dx_t, dh, grads = gru_cell_backward(cache, dh_new)
    else:
        dx_t, dh, grads = rnn_cell_backward(cache, dh_new)
    return dx_t, dh, None, grads


# ---------------------------------------------------------------------------------------------
# Multi-layer, (bi)directional, variable-length layer
# ---------------------------------------------------------------------------------------------

def _suffix(d):
    return "_reverse" if d == 1 else ""


def param_names(mode, num_layers=1, bidirectional=False, proj_size=0, bias=True):
    """PyTorch's state_dict names, in PyTorch's order (layer, direction, then
    weight_ih, weight_hh, bias_ih, bias_hh, weight_hr)."""
    D = 2 if bidirectional else 1
    names = []
    for k in range(num_layers):
        for d in range(D):
            sfx = f"_l{k}{_suffix(d)}"
            names += ["weight_ih" + sfx, "weight_hh" + sfx]
            if bias:
                names += ["bias_ih" + sfx, "bias_hh" + sfx]
            if proj_size > 0:
                names += ["weight_hr" + sfx]
    return names


def _layer_params(params, k, d):
    """The five per-(layer, direction) arrays; missing ones are None."""
    sfx = f"_l{k}{_suffix(d)}"
    return (params["weight_ih" + sfx], params["weight_hh" + sfx],
            params.get("bias_ih" + sfx), params.get("bias_hh" + sfx),
            params.get("weight_hr" + sfx))


def rnn_forward(mode, x, params, num_layers=1, bidirectional=False, proj_size=0,
                h0=None, c0=None, lengths=None, nonlinearity="tanh", dropout_masks=None):
    """Forward pass of torch.nn.LSTM / GRU / RNN (time-major, batch_first=False).

    mode           'LSTM', 'GRU' or 'RNN'
    x              [T, B, I]
    params         dict of PyTorch state_dict names -> arrays (see the module docstring)
    h0             [num_layers*D, B, H_out] or None (zeros)
    c0             [num_layers*D, B, H] or None (zeros); LSTM only
    lengths        int array [B] with 1 <= lengths[b] <= T, or None (all T)
    nonlinearity   'tanh' or 'relu'; RNN only
    dropout_masks  None, or a list of num_layers-1 arrays [T, B, D*H_out], already scaled by
                   1/(1-p); mask k-1 multiplies the input of layer k (k >= 1)

    Returns (y [T, B, D*H_out], h_n [num_layers*D, B, H_out], c_n [num_layers*D, B, H] or None,
    cache); pass the cache to rnn_backward.
    """
    if mode not in GATES:
        raise ValueError(f"mode must be 'LSTM', 'GRU' or 'RNN', got {mode!r}")
    if proj_size and mode != "LSTM":
        raise ValueError("proj_size is only supported for LSTM")
    x = np.asarray(x, dtype=np.float64)
    params = {name: np.asarray(p, dtype=np.float64) for name, p in params.items()}
    T, B, _ = x.shape
    D = 2 if bidirectional else 1
    H = params["weight_ih_l0"].shape[0] // GATES[mode]
    H_out = proj_size if proj_size else H

    if h0 is None:
        h0 = np.zeros((num_layers * D, B, H_out))
    h0 = np.asarray(h0, dtype=np.float64)
    assert h0.shape == (num_layers * D, B, H_out), h0.shape
    if mode == "LSTM":
        if c0 is None:
            c0 = np.zeros((num_layers * D, B, H))
        c0 = np.asarray(c0, dtype=np.float64)
        assert c0.shape == (num_layers * D, B, H), c0.shape

    if lengths is None:
        lengths = np.full(B, T, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    assert lengths.shape == (B,), lengths.shape
    assert np.all(lengths >= 1) and np.all(lengths <= T), lengths

    if dropout_masks is not None:
        assert len(dropout_masks) == num_layers - 1, len(dropout_masks)
        dropout_masks = [np.asarray(mk, dtype=np.float64) for mk in dropout_masks]

    h_n = np.zeros((num_layers * D, B, H_out))
    c_n = np.zeros((num_layers * D, B, H)) if mode == "LSTM" else None
    # steps[(k, d, b)] = [(t, cell cache), ...] in the order the steps were taken
    steps = {}
    layer_in = x
    for k in range(num_layers):
        if k > 0 and dropout_masks is not None:
            layer_in = layer_in * dropout_masks[k - 1]
        layer_out = np.zeros((T, B, D * H_out))   # stays zero after each sequence's end
        for d in range(D):
            w_ih, w_hh, b_ih, b_hh, w_hr = _layer_params(params, k, d)
            out_cols = slice(d * H_out, (d + 1) * H_out)
            for b in range(B):
                L = int(lengths[b])
                # forward runs t = 0 .. L-1; reverse runs t = L-1 .. 0 (its own last element)
                time_order = range(L) if d == 0 else range(L - 1, -1, -1)
                h = h0[k * D + d, b:b + 1]            # [1, H_out]: a batch of one row
                c = c0[k * D + d, b:b + 1] if mode == "LSTM" else None
                taken = []
                for t in time_order:
                    h, c, cc = cell_forward(mode, layer_in[t, b:b + 1], h, c,
                                            w_ih, w_hh, b_ih, b_hh, w_hr, nonlinearity)
                    layer_out[t, b, out_cols] = h[0]
                    taken.append((t, cc))
                steps[(k, d, b)] = taken
                h_n[k * D + d, b] = h[0]
                if mode == "LSTM":
                    c_n[k * D + d, b] = c[0]
        layer_in = layer_out
    y = layer_in

    cache = dict(mode=mode, x_shape=x.shape, params=params, num_layers=num_layers, D=D,
                 H=H, H_out=H_out, lengths=lengths, dropout_masks=dropout_masks, steps=steps)
    return y, h_n, c_n, cache


def rnn_backward(cache, dy, dh_n=None, dc_n=None):
    """Backward pass through time of rnn_forward.

    dy [T, B, D*H_out], dh_n like h_n, dc_n like c_n (LSTM only); None means zero.
    dy at padded positions (t >= lengths[b]) is ignored: those outputs are constant zero.
    Returns (dx [T, B, I], dh0, dc0 or None, grads) with grads keyed like params.
    """
    mode, params = cache["mode"], cache["params"]
    num_layers, D, H, H_out = cache["num_layers"], cache["D"], cache["H"], cache["H_out"]
    T, B, _ = cache["x_shape"]
    masks, steps = cache["dropout_masks"], cache["steps"]

    dy = np.asarray(dy, dtype=np.float64)
    if dh_n is None:
        dh_n = np.zeros((num_layers * D, B, H_out))
    dh_n = np.asarray(dh_n, dtype=np.float64)
    if mode == "LSTM":
        if dc_n is None:
            dc_n = np.zeros((num_layers * D, B, H))
        dc_n = np.asarray(dc_n, dtype=np.float64)

    grads = {name: np.zeros_like(p) for name, p in params.items()}
    dh0 = np.zeros((num_layers * D, B, H_out))
    dc0 = np.zeros((num_layers * D, B, H)) if mode == "LSTM" else None

    d_layer_out = dy   # gradient w.r.t. the output of layer k, starting from the top
    for k in reversed(range(num_layers)):
        in_size = params[f"weight_ih_l{k}"].shape[1]
        d_layer_in = np.zeros((T, B, in_size))
        for d in range(D):
            sfx = f"_l{k}{_suffix(d)}"
            out_cols = slice(d * H_out, (d + 1) * H_out)
            for b in range(B):
                dh = dh_n[k * D + d, b:b + 1].copy()
                dc = dc_n[k * D + d, b:b + 1].copy() if mode == "LSTM" else None
                # undo the steps in reverse order of how they were taken
                for t, cc in reversed(steps[(k, d, b)]):
                    dh = dh + d_layer_out[t, b:b + 1, out_cols]   # h_t is also the output
                    dx_t, dh, dc, g = cell_backward(cc, dh, dc)
                    d_layer_in[t, b:b + 1] += dx_t
                    grads["weight_ih" + sfx] += g["w_ih"]
                    grads["weight_hh" + sfx] += g["w_hh"]
                    if g["b_ih"] is not None:
                        grads["bias_ih" + sfx] += g["b_ih"]
                    if g["b_hh"] is not None:
                        grads["bias_hh" + sfx] += g["b_hh"]
                    if g.get("w_hr") is not None:
                        grads["weight_hr" + sfx] += g["w_hr"]
                dh0[k * D + d, b] = dh[0]
                if mode == "LSTM":
                    dc0[k * D + d, b] = dc[0]
        if k > 0 and masks is not None:
            d_layer_in = d_layer_in * masks[k - 1]   # layer_in = layer_out * mask
        d_layer_out = d_layer_in
    dx = d_layer_out
    return dx, dh0, dc0, grads


# ---------------------------------------------------------------------------------------------
# Utilities
# ---------------------------------------------------------------------------------------------

def init_params(mode, input_size, hidden_size, num_layers=1, bidirectional=False,
                proj_size=0, bias=True, rng=None):
    """A float64 params dict with PyTorch's names, order and shapes, every entry drawn from
    U(-1/sqrt(H), 1/sqrt(H)) as PyTorch does.  rng: a numpy Generator (None: seed 0)."""
    if rng is None:
        rng = np.random.default_rng(0)
    if proj_size and mode != "LSTM":
        raise ValueError("proj_size is only supported for LSTM")
    D = 2 if bidirectional else 1
    G = GATES[mode]
    H = hidden_size
    H_out = proj_size if proj_size else H
    bound = 1.0 / np.sqrt(H)
    shapes = {}
    for k in range(num_layers):
        in_size = input_size if k == 0 else D * H_out
        for d in range(D):
            sfx = f"_l{k}{_suffix(d)}"
            shapes["weight_ih" + sfx] = (G * H, in_size)
            shapes["weight_hh" + sfx] = (G * H, H_out)
            if bias:
                shapes["bias_ih" + sfx] = (G * H,)
                shapes["bias_hh" + sfx] = (G * H,)
            if proj_size > 0:
                shapes["weight_hr" + sfx] = (proj_size, H)
    assert list(shapes) == param_names(mode, num_layers, bidirectional, proj_size, bias)
    return {name: rng.uniform(-bound, bound, size=shape) for name, shape in shapes.items()}


def numerical_grad(f, arr, eps=1e-6):
    """Central differences of the scalar f() w.r.t. every element of arr.

    arr is perturbed in place (f must read it) and restored exactly afterwards.
    Returns an array shaped like arr.
    """
    grad = np.zeros(arr.shape, dtype=np.float64)
    for idx in np.ndindex(arr.shape):
        orig = arr[idx]
        arr[idx] = orig + eps
        f_plus = f()
        arr[idx] = orig - eps
        f_minus = f()
        arr[idx] = orig
        grad[idx] = (f_plus - f_minus) / (2.0 * eps)
    return grad
