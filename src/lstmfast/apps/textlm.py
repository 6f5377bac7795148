"""A character-level LSTM language model, trained on this Python's own standard library.

The corpus is found at run time, never shipped: the ``.py`` files under
``sysconfig.get_paths()["stdlib"]`` (installed packages, tests, codec tables and other
generated files left out), shuffled by file with the seed and cut at ``max_chars``. The
last 5% is held out for validation. Characters outside printable ASCII become one
placeholder, so the vocabulary stays near 100 symbols.

Model: Embedding -> LSTM -> Linear over the vocabulary, cross-entropy at every position.
Training is truncated BPTT: ``batch`` parallel streams through the text, ``bptt``
characters per step; the final state of one chunk is the initial state of the next, but
the gradient stops at the chunk boundary. The loss is printed in nats and in bits per
character (nats / ln 2), with temperature-controlled samples as it learns.

Checkpoints are ``lstmfast.checkpoint`` .npz files holding the three layers and the
vocabulary (as a one-parameter module, key ``vocab.codepoints``), so ``--load`` needs no
other file and recovers the sizes from the arrays' headers, within stated limits
(MAX_VOCAB, MAX_HIDDEN, MAX_EMBED, MAX_LAYERS) checked before anything is built.
"""
import argparse
import math
import os
import sys
import sysconfig
import time

import numpy as np

from .. import checkpoint, nn, optim
from ..layers import LSTM
from .common import cannot_write, limit_threads, positive, progress_bar
from ..module import Module

UNK = "\ufffd"   # stands for every character outside printable ASCII
# Directories under the stdlib whose .py files are not representative source: installed
# packages, test suites (full of deliberately odd code), codec tables and generated data.
_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test",
              "encodings", "pydoc_data", "lib2to3"}
_MAX_FILE_BYTES = 200_000   # larger files are mostly generated tables


def find_stdlib_sources(root=None):
    """Sorted paths of the standard library's .py source files (see ``_SKIP_DIRS``)."""
    root = sysconfig.get_paths()["stdlib"] if root is None else root
    if not os.path.isdir(root):
        raise FileNotFoundError(f"the standard library directory {root!r} does not exist")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for f in filenames:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                try:
                    if os.path.getsize(path) <= _MAX_FILE_BYTES:
                        found.append(path)
                except OSError:
                    pass
    return sorted(found)


def _clean(text):
    """Tabs become 4 spaces, CRLF becomes LF, non-printable/non-ASCII becomes UNK."""
    text = text.replace("\r\n", "\n").replace("\t", "    ")
    if text.isascii() and text.isprintable():
        return text
    return "".join(c if (" " <= c <= "~" or c == "\n") else UNK for c in text)


def load_corpus(max_chars=2_000_000, seed=0, root=None):
    """(text, number of files): stdlib sources in a seeded file order, up to max_chars."""
    paths = find_stdlib_sources(root)
    if not paths:
        raise FileNotFoundError(f"no Python source files found under "
                                f"{root or sysconfig.get_paths()['stdlib']!r}")
    order = np.random.default_rng(seed).permutation(len(paths))
    parts, total = [], 0
    for i in order:
        try:
            with open(paths[i], encoding="utf-8", errors="replace") as f:
                text = _clean(f.read())
        except OSError:
            continue
        parts.append(text)
        total += len(text) + 1
        if total >= max_chars:
            break
    return "\n".join(parts)[:max_chars], len(parts)


class Vocab:
    """Characters <-> ids. ``UNK`` is always present and stands for unknown characters."""

    def __init__(self, chars):
        chars = sorted(set(chars) | {UNK})
        self.chars = chars
        codes = np.array([ord(c) for c in chars], np.int64)
        self._lookup = np.full(codes.max() + 1, chars.index(UNK), np.int64)
        self._lookup[codes] = np.arange(len(chars))
        self.unk = chars.index(UNK)

    def __len__(self):
        return len(self.chars)

    @classmethod
    def from_text(cls, text):
        return cls(set(text))

    @classmethod
    def from_codepoints(cls, codes):
        codes = np.asarray(codes)
        if codes.ndim != 1 or not np.all(np.isfinite(codes)) or np.any(codes != np.round(codes)) \
                or np.any(codes < 0) or np.any(codes > sys.maxunicode) \
                or len(np.unique(codes)) != len(codes):
            raise ValueError("the vocabulary must be distinct integer code points")
        return cls(chr(int(c)) for c in codes)

    def codepoints(self):
        return np.array([ord(c) for c in self.chars], np.float64)

    def encode(self, text):
        codes = np.frombuffer(text.encode("utf-32-le"), np.uint32).astype(np.int64)
        ids = np.full(len(codes), self.unk, np.int64)
        known = codes < len(self._lookup)
        ids[known] = self._lookup[codes[known]]
        return ids

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids)


class _VocabModule(Module):
    """The vocabulary as a parameterless-in-spirit Module, so that ``checkpoint`` stores it.

    Code points are kept as float64, exact for every Unicode code point (< 2**21). It is
    never handed to an optimizer.
    """

    def __init__(self, vocab):
        super().__init__(np.float64)
        self._add_param("codepoints", vocab.codepoints())


class CharLSTM:
    """Embedding -> LSTM -> Linear over the vocabulary."""

    def __init__(self, vocab, hidden=256, layers=1, embed=32, seed=0):
        self.vocab = vocab
        s_embed, s_lstm, s_head = np.random.SeedSequence(seed).spawn(3)
        self.embed = nn.Embedding(len(vocab), embed, seed=s_embed)
        self.lstm = LSTM(embed, hidden, layers, seed=s_lstm)
        self.head = nn.Linear(hidden, len(vocab), seed=s_head)
        self.layers = [self.embed, self.lstm, self.head]

    @property
    def config(self):
        return dict(hidden=self.lstm.hidden_size, layers=self.lstm.num_layers,
                    embed=self.embed.embedding_dim)

    def train(self, mode=True):
        for m in self.layers:
            m.train(mode)
        return self

    def __call__(self, ids, state=None):
        """ids [T, B] -> logits [T, B, V], final (h, c)."""
        y, state = self.lstm(self.embed(ids), state)
        return self.head(y), state

    def backward(self, dlogits):
        dx, _ = self.lstm.backward(self.head.backward(dlogits))
        self.embed.backward(dx)

    def checkpoint_modules(self):
        return {"embed": self.embed, "lstm": self.lstm, "head": self.head,
                "vocab": _VocabModule(self.vocab)}


# --- checkpoints ----------------------------------------------------------------------------
def save(path, model):
    checkpoint.save(path, model.checkpoint_modules())


# What ``--load`` accepts: a checkpoint declaring more is refused before anything is
# built or decompressed (a hostile file could otherwise ask for any amount of memory).
MAX_VOCAB = 4096       # the model keeps ~100 symbols; a vocabulary is at most this long
MAX_HIDDEN = 4096
MAX_EMBED = 1024
MAX_LAYERS = 8


def _peek(path):
    """The vocabulary and layer sizes stored in a checkpoint, before building the model.

    Reads the zip directory and the .npy headers, checks them against the model's layout
    and the limits above, then decompresses only the vocabulary; ``checkpoint.load``
    then reads and checks every array.
    """
    with checkpoint.Archive(path) as archive:
        keys = set(archive.keys)
        layers = sum(1 for k in keys if k.startswith("lstm.weight_ih_l"))
        need = {"vocab.codepoints", "embed.weight", "head.weight", "head.bias"} | {
            f"lstm.{w}_l{k}" for k in range(layers)
            for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
        if "lstm.weight_hh_l0" not in keys or keys != need:
            raise ValueError(f"{archive.path!r} is not a text-model checkpoint: missing "
                             f"{sorted(need - keys)[:6]}, unexpected {sorted(keys - need)[:6]}")
        if layers > MAX_LAYERS:
            raise ValueError(f"checkpoint {archive.path!r} has {layers} layers; --load takes "
                             f"at most {MAX_LAYERS}")
        (V,), (hh, ee) = _dims(archive, "vocab.codepoints", 1), _dims(archive, "embed.weight", 2)
        four_h, hidden = _dims(archive, "lstm.weight_hh_l0", 2)
        for what, value, limit in (("vocabulary", V, MAX_VOCAB), ("hidden size", hidden,
                                   MAX_HIDDEN), ("embedding size", ee, MAX_EMBED)):
            if not 1 <= value <= limit:
                raise ValueError(f"checkpoint {archive.path!r} declares a {what} of {value}; "
                                 f"--load takes 1 to {limit}")
        if hh != V or four_h != 4 * hidden:
            raise ValueError(f"checkpoint {archive.path!r}: embed.weight {(hh, ee)} and "
                             f"lstm.weight_hh_l0 {(four_h, hidden)} do not fit a vocabulary "
                             f"of {V}")
        codes = archive.read("vocab.codepoints")
    try:
        vocab = Vocab.from_codepoints(codes)
    except ValueError as e:
        raise ValueError(f"checkpoint {path!r}: {e}") from None
    return vocab, dict(hidden=hidden, layers=layers, embed=ee)


def _dims(archive, key, ndim):
    shape, _ = archive.header(key)
    if len(shape) != ndim:
        raise ValueError(f"checkpoint {archive.path!r}: {key} has shape {shape}, expected "
                         f"{ndim}-d")
    return shape


def load(path, **expected):
    """The CharLSTM stored at ``path``. Keyword sizes (hidden, layers, embed) that are not
    None must match the checkpoint's; every array is checked by ``checkpoint.load``."""
    vocab, config = _peek(path)
    for k, v in expected.items():
        if v is not None and v != config[k]:
            raise ValueError(f"checkpoint {path!r} has {k}={config[k]}, but {k}={v} was "
                             f"asked for (leave --{k} out to use the checkpoint's)")
    model = CharLSTM(vocab, **config)
    checkpoint.load(path, model.checkpoint_modules())
    return model


# --- training and sampling ------------------------------------------------------------------
def _streams(ids, batch):
    """ids [N] -> [L, batch]: column b is the b-th contiguous slice of the text."""
    L = len(ids) // batch
    if L < 2:
        raise ValueError(f"the text is too short ({len(ids)} characters) for {batch} streams")
    return np.ascontiguousarray(ids[:L * batch].reshape(batch, L).T)


def evaluate(model, ids, batch=16, bptt=256, max_chars=16_384):
    """Mean cross-entropy (nats per character) on ids, up to max_chars of them."""
    ids = ids[:max_chars + batch]
    data = _streams(ids, min(batch, max(1, len(ids) // 2)))
    model.train(False)
    try:
        state, total, count = None, 0.0, 0
        for t in range(0, len(data) - 1, bptt):
            x, y = data[t:t + bptt], data[t + 1:t + bptt + 1]
            x = x[:len(y)]
            logits, state = model(x, state)
            loss, _ = nn.cross_entropy(logits, y, reduction="sum")
            total += loss
            count += y.size
    finally:
        model.train(True)
    return total / count


def train(model, train_ids, val_ids, seconds, *, batch=32, bptt=64, lr=2e-3, clip=1.0,
          print_every=10.0, sample_every=30.0, temperature=0.8, sample_chars=200, seed=0,
          log=print, progress=True, max_steps=None):
    """Train for ``seconds`` of wall time (or ``max_steps``); returns a stats dict.

    A non-finite loss raises FloatingPointError naming the step: the run stops instead of
    stepping on NaN weights.
    """
    data = _streams(train_ids, batch)
    opt = optim.Adam(model.layers, lr=lr)
    rng = np.random.default_rng([seed, 1])
    state, pos, step, chars = None, 0, 0, 0
    window, window_n = 0.0, 0
    t0 = time.perf_counter()
    last_print = last_sample = 0.0
    stats = {"steps": 0, "chars": 0, "seconds": 0.0, "train_loss": math.nan,
             "val_loss": math.nan}
    with progress_bar(max(1, int(seconds)), "training", "s", progress,
                      "{desc}: {percentage:3.0f}%|{bar}| {n}/{total}s{postfix}") as bar:
        shown = 0
        while True:
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds or (max_steps is not None and step >= max_steps):
                break
            if pos + 2 > len(data):   # an epoch is done: start over, with a fresh state
                pos, state = 0, None
            x, y = data[pos:pos + bptt], data[pos + 1:pos + bptt + 1]
            x = x[:len(y)]
            pos += len(y)
            opt.zero_grad()
            logits, state = model(x, state)
            loss, dlogits = nn.cross_entropy(logits, y)
            step += 1
            try:
                nn.check_finite(loss)
            except FloatingPointError as e:
                raise FloatingPointError(f"step {step}: {e}") from None
            model.backward(dlogits)
            optim.clip_grad_norm(model.layers, clip)
            opt.step()
            chars += y.size
            window += loss
            window_n += 1
            elapsed = time.perf_counter() - t0
            bar.update(min(int(elapsed), int(seconds)) - shown)
            shown = min(int(elapsed), int(seconds))
            bar.set_postfix_str(f"loss {loss:.3f}")
            done = elapsed >= seconds or (max_steps is not None and step >= max_steps)
            if elapsed - last_print >= print_every or done:
                last_print = elapsed
                train_loss = window / window_n
                val_loss = evaluate(model, val_ids)
                try:
                    nn.check_finite(val_loss)
                except FloatingPointError as e:
                    raise FloatingPointError(f"step {step} (validation): {e}") from None
                window = window_n = 0
                stats.update(train_loss=train_loss, val_loss=val_loss)
                bar.write(f"{elapsed:6.0f}s  step {step:5d}  {chars / 1e6:6.2f}M chars  "
                          f"train {train_loss:.3f} nats = {train_loss / math.log(2):.2f} "
                          f"bits/char  val {val_loss / math.log(2):.2f} bits/char  "
                          f"{chars / elapsed:8,.0f} chars/s", log)
            if sample_every and elapsed - last_sample >= sample_every and not done:
                last_sample = elapsed
                text = sample(model, sample_chars, temperature, rng)
                bar.write(f"--- sample at {elapsed:.0f}s (temperature {temperature:g}) ---\n"
                          f"{text}\n---", log)
    if window_n:  # the budget ran out during a sample, after the last report
        stats.update(train_loss=window / window_n, val_loss=evaluate(model, val_ids))
    stats.update(steps=step, chars=chars, seconds=time.perf_counter() - t0)
    return stats


def sample(model, n, temperature=0.8, rng=None, prime="\n"):
    """``n`` characters drawn from the model after reading ``prime``; returns them."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    rng = np.random.default_rng(rng)
    model.train(False)
    try:
        ids = model.vocab.encode(prime or "\n")
        logits, state = model(ids[:, None])
        out = []
        for _ in range(n):
            z = logits[-1, 0].astype(np.float64) / temperature
            p = np.exp(z - z.max())
            cdf = np.cumsum(p)
            i = min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")),
                    len(cdf) - 1)
            out.append(i)
            logits, state = model(np.array([[i]]), state)
    finally:
        model.train(True)
    return model.vocab.decode(out)


# --- command line ---------------------------------------------------------------------------
DEFAULTS = dict(hidden=256, layers=1, embed=32)


def build_parser(prog="python -m lstmfast text"):
    p = argparse.ArgumentParser(
        prog=prog, description="Train a character-level LSTM on this Python's standard "
        "library source (found at run time) and sample from it.")
    p.add_argument("--seconds", type=float, default=180.0,
                   help="training time budget in seconds; 0 only samples "
                        "(default %(default)s)")
    p.add_argument("--save", metavar="PATH.npz", help="write a checkpoint when done")
    p.add_argument("--load", metavar="PATH.npz",
                   help="start from a checkpoint (its sizes and vocabulary)")
    p.add_argument("--hidden", type=positive(int),
                   help=f"LSTM hidden size (default {DEFAULTS['hidden']})")
    p.add_argument("--layers", type=positive(int),
                   help=f"LSTM layers (default {DEFAULTS['layers']})")
    p.add_argument("--embed", type=positive(int),
                   help=f"embedding size (default {DEFAULTS['embed']})")
    p.add_argument("--batch", type=positive(int), default=32,
                   help="parallel streams (default %(default)s)")
    p.add_argument("--bptt", type=positive(int), default=64,
                   help="characters per truncated-BPTT chunk (default %(default)s)")
    p.add_argument("--lr", type=positive(float), default=2e-3,
                   help="Adam learning rate (default %(default)s)")
    p.add_argument("--clip", type=positive(float), default=1.0,
                   help="max gradient norm (default %(default)s)")
    p.add_argument("--temperature", type=positive(float), default=0.8,
                   help="sampling temperature: lower is safer, higher is wilder "
                        "(default %(default)s)")
    p.add_argument("--sample-chars", type=positive(int), default=600,
                   help="length of the final sample (default %(default)s)")
    p.add_argument("--prime", default="\n",
                   help="text the model reads before sampling (default a newline)")
    p.add_argument("--print-every", type=positive(float), default=10.0,
                   help="seconds between loss lines (default %(default)s)")
    p.add_argument("--sample-every", type=float, default=30.0,
                   help="seconds between samples during training; 0 for none "
                        "(default %(default)s)")
    p.add_argument("--max-chars", type=positive(int), default=2_000_000,
                   help="corpus size cap in characters (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    p.add_argument("--threads", type=positive(int), default=1,
                   help="threads for lstmfast and numpy's BLAS (default %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    for flag, v in (("--seconds", args.seconds), ("--sample-every", args.sample_every)):
        if not 0 <= v < math.inf:
            print(f"error: {flag} must be a number of seconds >= 0, got {v}", file=sys.stderr)
            return 2
    why = args.save and cannot_write(args.save)
    if why:
        print(f"error: --save {why}", file=sys.stderr)
        return 2
    with limit_threads(args.threads) as threads_note:
        return _run(args, threads_note)


def _error(message):
    print(f"error: {message}", file=sys.stderr)
    return 1


def _run(args, threads_note):
    t_start = time.perf_counter()
    model = text = None
    if args.load:
        try:
            model = load(args.load, hidden=args.hidden, layers=args.layers, embed=args.embed)
        except (OSError, ValueError, KeyError) as e:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else e
            return _error(f"cannot load {args.load}: {msg}")
        print(f"loaded {args.load}: {model.config}, vocabulary of {len(model.vocab)}")
    if args.seconds > 0 or model is None:   # a new model needs the corpus's vocabulary
        try:
            text, n_files = load_corpus(args.max_chars, args.seed)
        except FileNotFoundError as e:
            return _error(f"no training text: {e}")
    if model is None:
        config = {k: getattr(args, k) or v for k, v in DEFAULTS.items()}
        model = CharLSTM(Vocab.from_text(text), seed=args.seed, **config)
    if args.seconds > 0:
        ids = model.vocab.encode(text)
        n_val = max(len(ids) // 20, 2 * 16)
        train_ids, val_ids = ids[:-n_val], ids[-n_val:]
        if len(train_ids) < 4 * args.batch:
            return _error(f"the corpus ({len(ids)} characters) is too small for "
                          f"--batch {args.batch}; raise --max-chars")
        print(f"corpus: {len(text):,} characters from {n_files} files of "
              f"{sysconfig.get_paths()['stdlib']} ({len(val_ids):,} held out); "
              f"vocabulary {len(model.vocab)}")
        cfg = model.config
        print(f"model: Embedding({len(model.vocab)}, {cfg['embed']}) -> LSTM(hidden "
              f"{cfg['hidden']}, {cfg['layers']} layer{'s' * (cfg['layers'] > 1)}) -> "
              f"Linear; Adam lr {args.lr:g}, batch {args.batch} x {args.bptt} chars, clip "
              f"{args.clip:g}; {threads_note}; training for {args.seconds:g}s")
        print(f"(uniform guessing is {math.log2(len(model.vocab)):.2f} bits/char)")
        try:
            stats = train(model, train_ids, val_ids, args.seconds, batch=args.batch,
                          bptt=args.bptt, lr=args.lr, clip=args.clip,
                          print_every=args.print_every, sample_every=args.sample_every,
                          temperature=args.temperature, seed=args.seed,
                          progress=not args.no_progress)
            print(f"trained {stats['steps']} steps, {stats['chars']:,} characters in "
                  f"{stats['seconds']:.0f}s; val {stats['val_loss'] / math.log(2):.2f} "
                  f"bits/char")
        except FloatingPointError as e:
            return _error(f"training stopped at {e}; no checkpoint was written")
        except KeyboardInterrupt:
            print("\ninterrupted: training stopped")
    elif not args.load:
        print("no training (--seconds 0) and no --load: sampling from an untrained model")
    if args.save:
        save(args.save, model)
        print(f"saved {args.save}")
    sampled = sample(model, args.sample_chars, args.temperature, [args.seed, 2], args.prime)
    print(f"--- sample (temperature {args.temperature:g}, seed {args.seed}) ---")
    print(args.prime.lstrip("\n") + sampled)
    print("---")
    print(f"total time {time.perf_counter() - t_start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
