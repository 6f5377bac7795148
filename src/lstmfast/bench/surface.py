"""Benchmark cases for the LSTM surface beyond a single layer, all against torch:
training steps of torch programs holding the lstmfast.torch drop-in or torch.nn.LSTM
(a word-level language model, the standard shapes with a linear head), variable lengths
(torch's packed sequences), the single-step cell (per-call overhead), and a 2-layer
bidirectional LSTM with lengths through the numpy layer, the drop-in and torch.nn.LSTM. Shared by bench/ and ``python -m
lstmfast.bench --surface``. Each case returns {implementation: callable}, after checking
every implementation's output against torch's."""
import numpy as np

import lstmfast


def _close(a, b, tol=1e-4):
    a, b = (np.asarray(v.detach() if hasattr(v, "detach") else v) for v in (a, b))
    err = np.abs(a - b).max() / max(1.0, np.abs(b).max())
    if err > tol:
        raise AssertionError(f"implementations disagree: max difference {err:.2e}")


def lengths_inference(T=500, B=32, H=256, seed=0):
    """lstmfast with lengths / padded, torch packed / padded, lengths uniform in [1, T]."""
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, T + 1, B)
    x = rng.standard_normal((T, B, H)).astype(np.float32)
    ref = torch.nn.LSTM(H, H)
    ours = lstmfast.LSTM(H, H).eval()
    ours.load_state_dict(ref.state_dict())
    tx, tl = torch.from_numpy(x), torch.from_numpy(lengths)

    def torch_packed():
        with torch.inference_mode():
            y, _ = ref(pack_padded_sequence(tx, tl, enforce_sorted=False))
            return pad_packed_sequence(y, total_length=T)[0]

    def torch_padded():
        with torch.inference_mode():
            return ref(tx)[0]

    fns = {"lstmfast (lengths)": lambda: ours(x, lengths=lengths)[0],
           "lstmfast (padded)": lambda: ours(x)[0],
           "torch (packed)": torch_packed, "torch (padded)": torch_padded}
    _close(fns["lstmfast (lengths)"](), torch_packed())
    _close(fns["lstmfast (padded)"](), torch_padded())
    return fns, f"infer lengths T={T} B={B} H={H} (valid {lengths.sum() / (T * B):.0%})"


def cell_step(hidden=128):
    """One LSTMCell step at batch 1: per-call overhead against torch.nn.LSTMCell."""
    import torch

    ref = torch.nn.LSTMCell(hidden, hidden)
    cell = lstmfast.LSTMCell(hidden, hidden).eval()
    cell.load_state_dict(ref.state_dict())
    x = np.ones((1, hidden), np.float32)
    state = (np.zeros((1, hidden), np.float32),) * 2
    tx, tstate = torch.from_numpy(x), tuple(torch.from_numpy(s) for s in state)

    def torch_step():
        with torch.inference_mode():
            return ref(tx, tstate)[0]

    fns = {"lstmfast.LSTMCell": lambda: cell(x, state)[0], "torch.nn.LSTMCell": torch_step}
    _close(fns["lstmfast.LSTMCell"](), torch_step())
    return fns, f"cell step B=1 H={hidden}"


def bidirectional_lengths_train(T=100, B=32, H=256, seed=1):
    """A training step of a 2-layer bidirectional LSTM on packed variable lengths."""
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    from .. import torch as lt

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, H)).astype(np.float32)
    lengths = rng.integers(1, T + 1, B)
    dy = np.zeros((T, B, 2 * H), np.float32)
    for b, n in enumerate(lengths):
        dy[:n, b] = 1.0
    ref = torch.nn.LSTM(H, H, num_layers=2, bidirectional=True)
    dropin = lt.LSTM(H, H, num_layers=2, bidirectional=True)
    dropin.load_state_dict(ref.state_dict())
    ours = lstmfast.LSTM(H, H, 2, bidirectional=True)
    ours.load_state_dict(ref.state_dict())
    tx, tdy, tl = torch.from_numpy(x), torch.from_numpy(dy), torch.from_numpy(lengths)
    tx.requires_grad_()  # the input's gradient too, as the numpy layer always computes it

    def module_step(module):
        def step():
            module.zero_grad()
            tx.grad = None
            y, _ = module(pack_padded_sequence(tx, tl, enforce_sorted=False))
            y = pad_packed_sequence(y, total_length=T)[0]
            y.backward(tdy)
            return y
        return step

    def numpy_step():
        ours.zero_grad()
        y, _ = ours(x, lengths=lengths)
        ours.backward(dy)
        return y

    fns = {"lstmfast.LSTM": numpy_step, "lstmfast.torch.LSTM": module_step(dropin),
           "torch.nn.LSTM": module_step(ref)}
    want = module_step(ref)()
    dx_want = tx.grad.clone()
    _close(numpy_step(), want)
    _close(module_step(dropin)(), want)
    _close(tx.grad, dx_want, 1e-3)
    for name in ("weight_hh_l1_reverse", "weight_ih_l0"):
        _close(getattr(dropin, name).grad, getattr(ref, name).grad, 1e-3)
    return fns, f"train 2-layer bidirectional lengths T={T} B={B} H={H}"


def _train_loop_step(model, inputs, targets, classes, clip=0.25, lr=0.1):
    """One training step as a torch program writes it: forward, cross-entropy, backward,
    gradient clipping, SGD. Returns the loss."""
    import torch

    opt = torch.optim.SGD(model.parameters(), lr=lr)

    def step():
        opt.zero_grad()
        out = model(inputs)
        loss = torch.nn.functional.cross_entropy(out.reshape(-1, classes), targets.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        return loss.detach()
    return step


def _twins(build):
    """The same model twice, with torch.nn.LSTM and with the drop-in, equal weights."""
    import torch

    from .. import torch as lt

    torch.manual_seed(0)
    ref = build(torch.nn.LSTM)
    ours = build(lt.LSTM)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def word_lm_train(vocab=10000, T=35, B=20, size=200):
    """A word-level language model's training step in a torch program (PyTorch's
    word_language_model example: embedding, 2-layer LSTM, linear decoder, cross-entropy,
    clipping, SGD), with torch.nn.LSTM and with the drop-in."""
    import torch

    class WordLM(torch.nn.Module):
        def __init__(self, rnn):
            super().__init__()
            self.emb = torch.nn.Embedding(vocab, size)
            self.rnn = rnn(size, size, num_layers=2)
            self.dec = torch.nn.Linear(size, vocab)

        def forward(self, x):
            return self.dec(self.rnn(self.emb(x))[0])

    ref, ours = _twins(WordLM)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab, (T, B), generator=g)
    y = torch.randint(0, vocab, (T, B), generator=g)
    fns = {"lstmfast.torch.LSTM": _train_loop_step(ours, x, y, vocab),
           "torch.nn.LSTM": _train_loop_step(ref, x, y, vocab)}
    _close(fns["lstmfast.torch.LSTM"](), fns["torch.nn.LSTM"]())
    return fns, f"train word LM V={vocab} T={T} B={B} 2x LSTM({size}, {size}), in a torch loop"


def dropin_train(T, B, I, H, classes=10):
    """A training step of a one-layer LSTM with a linear head at a standard shape, in a
    torch program, with torch.nn.LSTM and with the drop-in."""
    import torch

    class Tagger(torch.nn.Module):
        def __init__(self, rnn):
            super().__init__()
            self.rnn = rnn(I, H)
            self.head = torch.nn.Linear(H, classes)

        def forward(self, x):
            return self.head(self.rnn(x)[0])

    ref, ours = _twins(Tagger)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(T, B, I, generator=g)
    y = torch.randint(0, classes, (T, B), generator=g)
    fns = {"lstmfast.torch.LSTM": _train_loop_step(ours, x, y, classes),
           "torch.nn.LSTM": _train_loop_step(ref, x, y, classes)}
    _close(fns["lstmfast.torch.LSTM"](), fns["torch.nn.LSTM"]())
    return fns, f"train T={T} B={B} I={I} H={H} + linear head, in a torch loop"


def _standard_dropin_cases():
    from . import LSTM_SHAPES

    return [lambda s=s: dropin_train(*s) for s in LSTM_SHAPES]


# (build, seconds per sample): a training loop's steps are timed as a loop runs them, one
# after another for a second; the other cases in short samples after a pause
LOOP_SAMPLE = 1.0
CASES = [(word_lm_train, LOOP_SAMPLE),
         *[(case, LOOP_SAMPLE) for case in _standard_dropin_cases()],
         (lengths_inference, None), (bidirectional_lengths_train, None),
         (lambda: cell_step(128), None), (lambda: cell_step(512), None)]
