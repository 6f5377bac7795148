"""The long-term dependency demo: a plain RNN forgets, an LSTM remembers.

The task is made on the fly. A sequence opens with a *cue* token (one of ``classes``),
then ``N`` distractor tokens drawn at random from a small vocabulary, then a query token;
the answer, read from the last output, is which cue opened the sequence::

    cue  d d d ... d  query   ->  class of the cue        (T = N + 2 steps)

Both models are Embedding -> RNN (tanh) or LSTM of the same hidden size -> Linear on the
last output, trained with cross-entropy, Adam and gradient-norm clipping on the same
sequences, a fresh pair for every N. Accuracy is measured on held-out sequences.

Why the RNN fails is visible in the gradient: the loss sits at the last step, so the cue
is learnt only through dL/dh_t at distance N + 1 from the end. The layers record
||dL/dh_t|| per step when ``record_grad_norms`` is set; through a tanh RNN it shrinks
geometrically with the distance (the Jacobian dh_t/dh_{t-1} = diag(1 - h_t^2) W_hh has
norm < 1 at the usual initialisation), while the LSTM's cell state carries it along a
path scaled only by the forget gate. That gate must start near 1 for the path to exist:
the LSTM's forget-gate bias is raised by ``forget_bias`` (+4: f = 0.98, a memory of ~50
steps at initialisation, in the spirit of chrono initialisation; ``LSTM(...,
forget_bias=4.0)``). A third model, the same LSTM with torch's default initialisation
(biases uniform around 0), is trained beside them, so the tables show what the setting
buys: with it at 0 or 1 the LSTM, too, stayed at chance for N >= 50 within this budget.

Both models get the same budget and hyperparameters. The RNN is starved rather than
incapable: given lr 1e-2 and 2000 steps it learnt N=20 on 3 of 3 seeds and N=50 on 1 of 3,
slowly and erratically, as a gradient of 1e-13 of the last step's suggests. The defaults
(hidden 64, 800 steps of 32, lr 2e-3) solved N=50 and N=100 with the LSTM on 16 of 16
seeds and take about 30 s on two quiet cores.

``python -m lstmfast demo --help`` lists the options; ``run`` is the programmatic entry.
"""
import argparse
import contextlib
import dataclasses
import os
import sys
import time

import numpy as np

from .. import nn, optim
from ..layers import LSTM, RNN
from .common import limit_threads, positive, progress_bar

# "LSTM" starts with the forget-gate bias set to cfg.forget_bias; "LSTM0" is the same
# LSTM with torch's default initialisation (every bias uniform around 0), shown beside it
KINDS = ("RNN", "LSTM", "LSTM0")
_LABELS = {"RNN": "RNN (tanh)", "LSTM": "LSTM", "LSTM0": "LSTM (torch init)"}
# Distances from the end at which the gradient table samples ||dL/dh_t||.
GRAD_DISTANCES = (0, 10, 25, 50, 100)


@dataclasses.dataclass
class DemoConfig:
    """Everything a demo run depends on; two runs with equal configs print equal numbers
    (timings aside) when the BLAS runs on one thread."""
    lengths: tuple = (5, 10, 20, 50, 100)   # N, the distractors between cue and query
    hidden: int = 64
    steps: int = 800                        # Adam steps per (model, N)
    batch: int = 32
    lr: float = 2e-3
    clip: float = 1.0                       # max gradient norm
    forget_bias: float = 4.0                # added to the LSTM's forget-gate bias at init
    classes: int = 4                        # cue tokens; chance = 1 / classes
    distractors: int = 8                    # distinct distractor tokens
    embed: int = 16
    eval_size: int = 1000                   # held-out sequences per N
    probe_size: int = 256                   # sequences for the gradient-norm probe
    seed: int = 0

    @property
    def chance(self):
        return 1.0 / self.classes

    @property
    def vocab(self):
        return self.classes + self.distractors + 1   # + the query token


QUICK = dict(lengths=(5, 40), hidden=32, steps=200)


# --- the task -----------------------------------------------------------------------------
def make_batch(rng, n, batch, classes=4, distractors=8):
    """``batch`` sequences with ``n`` distractors: tokens [n + 2, batch], labels [batch].

    Tokens 0..classes-1 are cues, the next ``distractors`` ids are distractors, the last id
    is the query.
    """
    tokens = np.empty((n + 2, batch), np.intp)
    labels = rng.integers(0, classes, batch)
    tokens[0] = labels
    tokens[1:-1] = rng.integers(classes, classes + distractors, (n, batch))
    tokens[-1] = classes + distractors
    return tokens, labels


class CueClassifier:
    """Embedding -> RNN/LSTM -> Linear on the last output, with a hand-written backward."""

    def __init__(self, kind, cfg, seed):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        # Same embedding and head initialisation for both kinds: only the recurrence differs.
        # The two LSTMs share their initial weights: only the forget-gate bias differs.
        seeds = np.random.SeedSequence(seed).spawn(2 + len(KINDS))
        s_embed, s_head = seeds[0], seeds[1]
        s_rnn = seeds[2 + KINDS.index("LSTM" if kind == "LSTM0" else kind)]
        self.kind = kind
        self.embed = nn.Embedding(cfg.vocab, cfg.embed, seed=s_embed)
        if kind == "LSTM":
            self.rnn = LSTM(cfg.embed, cfg.hidden, seed=s_rnn, forget_bias=cfg.forget_bias)
        elif kind == "LSTM0":
            self.rnn = LSTM(cfg.embed, cfg.hidden, seed=s_rnn)
        else:
            self.rnn = RNN(cfg.embed, cfg.hidden, nonlinearity="tanh", seed=s_rnn)
        self.head = nn.Linear(cfg.hidden, cfg.classes, seed=s_head)
        self.modules = [self.embed, self.rnn, self.head]
        self._y_shape = None

    def train(self, mode=True):
        for m in self.modules:
            m.train(mode)
        return self

    def __call__(self, tokens):
        """tokens [T, B] -> logits [B, classes]."""
        y, _ = self.rnn(self.embed(tokens))
        self._y_shape = y.shape
        return self.head(y[-1])

    def backward(self, dlogits):
        dy = np.zeros(self._y_shape, self.rnn.dtype)
        dy[-1] = self.head.backward(dlogits)
        dx, _ = self.rnn.backward(dy)
        self.embed.backward(dx)

    def accuracy(self, tokens, labels):
        self.train(False)
        try:
            return float(np.mean(self(tokens).argmax(-1) == labels))
        finally:
            self.train(True)

    def grad_norms_by_distance(self, tokens, labels):
        """||dL/dh_t|| over a batch, indexed by distance from the last step: [T].

        One forward and backward on the batch; the gradients it leaves are cleared.
        """
        loss, dlogits = nn.cross_entropy(self(tokens), labels)
        self.rnn.record_grad_norms = True
        try:
            self.backward(dlogits)
        finally:
            self.rnn.record_grad_norms = False
        for m in self.modules:
            m.zero_grad()
        return self.rnn.grad_norms[0][::-1].copy()


# --- training -----------------------------------------------------------------------------
@dataclasses.dataclass
class RunResult:
    kind: str
    n: int
    accuracy: float
    final_loss: float
    seconds: float           # training time (forward, backward, clipping, Adam)
    sequences: int
    timesteps: int
    norms_init: np.ndarray   # ||dL/dh_t|| by distance from the end, before training
    norms_trained: np.ndarray

    @property
    def seq_per_s(self):
        return self.sequences / self.seconds

    @property
    def timesteps_per_s(self):
        return self.timesteps / self.seconds


@dataclasses.dataclass
class DemoResults:
    """What ``run`` measured: ``results[kind, n]`` is the RunResult of one model and N."""
    cfg: DemoConfig
    runs: dict

    def __getitem__(self, key):
        return self.runs[key]

    @property
    def longest(self):
        return max(self.cfg.lengths)


def _seed(cfg, *parts):
    """A seed for one purpose of one run, independent of the others."""
    return [cfg.seed, *parts]


def train_one(kind, n, cfg, progress=None):
    """Train a fresh ``kind`` model on the N = ``n`` task; returns a RunResult."""
    model = CueClassifier(kind, cfg, _seed(cfg, 1))
    probe = make_batch(np.random.default_rng(_seed(cfg, 2, n)), n, cfg.probe_size,
                       cfg.classes, cfg.distractors)
    norms_init = model.grad_norms_by_distance(*probe)
    opt = optim.Adam(model.modules, lr=cfg.lr)
    # The same training stream for both kinds: the comparison is on identical data.
    data = np.random.default_rng(_seed(cfg, 3, n))
    losses = []
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        tokens, labels = make_batch(data, n, cfg.batch, cfg.classes, cfg.distractors)
        opt.zero_grad()
        loss, dlogits = nn.cross_entropy(model(tokens), labels)
        try:
            nn.check_finite(loss)
        except FloatingPointError as e:
            raise FloatingPointError(f"{kind}, N={n}, step {step + 1}: {e}") from None
        model.backward(dlogits)
        optim.clip_grad_norm(model.modules, cfg.clip)
        opt.step()
        losses.append(loss)
        if progress is not None:
            progress.update(1)
    seconds = time.perf_counter() - t0
    tokens, labels = make_batch(np.random.default_rng(_seed(cfg, 4, n)), n, cfg.eval_size,
                                cfg.classes, cfg.distractors)
    return RunResult(kind, n, model.accuracy(tokens, labels),
                     float(np.mean(losses[-20:])), seconds, cfg.steps * cfg.batch,
                     cfg.steps * cfg.batch * (n + 2), norms_init,
                     model.grad_norms_by_distance(*probe))


def run(cfg, log=print, progress=True):
    """Train both models for every N in ``cfg.lengths``; returns DemoResults.

    ``log`` receives one line per finished (model, N); ``progress`` shows a tqdm bar over
    all steps when tqdm is installed and stderr is a terminal.
    """
    runs = {}
    total = len(cfg.lengths) * len(KINDS) * cfg.steps
    with progress_bar(total, "training", "step", progress) as bar:
        for n in cfg.lengths:
            for kind in KINDS:
                bar.set_description(f"{kind:>4} N={n}")
                r = train_one(kind, n, cfg, bar)
                runs[kind, n] = r
                bar.write(f"  {_LABELS[kind]:<10} N={n:<4} accuracy {100 * r.accuracy:5.1f}%"
                          f"  loss {r.final_loss:.3f}  {r.seconds:5.1f}s"
                          f"  {r.seq_per_s:7,.0f} seq/s  {r.timesteps_per_s:9,.0f} timesteps/s",
                          log)
    return DemoResults(cfg, runs)


# --- output -------------------------------------------------------------------------------
def _fmt_ratio(x):
    if not np.isfinite(x):
        return "nan"
    if x == 0:
        return "0"
    if 1e-2 <= x < 1e3:
        return f"{x:.2f}"
    return f"{x:.0e}"


def _distances(n):
    """GRAD_DISTANCES up to the cue, plus the cue's own distance n + 1."""
    return [d for d in GRAD_DISTANCES if d < n + 1] + [n + 1]


def grad_table(results):
    """(distances, rows) for the longest N: rows are (label, {d: norm(d) / norm(0)})."""
    n = results.longest
    dists = _distances(n)
    named = [(f"{_LABELS[k]}, init", results[k, n].norms_init) for k in KINDS]
    named += [(f"{_LABELS[k]}, trained", results[k, n].norms_trained) for k in KINDS]
    return dists, [(label, {d: v[d] / v[0] for d in dists}) for label, v in named]


def format_summary(results):
    """The closing report as a string."""
    cfg = results.cfg
    lines = []
    ns = list(cfg.lengths)
    w = max(7, max(len(str(n)) for n in ns) + 2)
    lines.append(f"Accuracy on {cfg.eval_size} held-out sequences "
                 f"(chance {100 * cfg.chance:.0f}%), hidden size {cfg.hidden}, "
                 f"{cfg.steps} Adam steps of {cfg.batch} sequences per model and N")
    lines.append(f"  (LSTM: {cfg.forget_bias:+g} added to the forget-gate bias at "
                 f"initialisation, LSTM(..., forget_bias={cfg.forget_bias:g});")
    lines.append("   LSTM (torch init): the same LSTM with torch.nn.LSTM's default, every "
                 "bias uniform in +-1/sqrt(H))")
    lines.append(f"  {'N distractors':<28}" + "".join(f"{n:>{w}}" for n in ns))
    for kind in KINDS:
        lines.append(f"  {_LABELS[kind]:<28}" + "".join(
            f"{100 * results[kind, n].accuracy:>{w - 1}.1f}%" for n in ns))
    lines.append("")
    n_max = max(ns)
    dists, rows = grad_table(results)
    lines.append(f"Gradient reaching the past: ||dL/dh_t|| at distance d from the last step, "
                 f"relative to d=0 (N={n_max}, {cfg.probe_size} sequences; the cue is at "
                 f"d={n_max + 1})")
    wd = 9
    lines.append(f"  {'':<28}" + "".join(f"{'d=' + str(d):>{wd}}" for d in dists))
    for label, vals in rows:
        lines.append(f"  {label:<28}" + "".join(f"{_fmt_ratio(vals[d]):>{wd}}" for d in dists))
    lines += _explain(results)
    lines.append("")
    lines.append("Training throughput (forward + backward + clipping + Adam, all N):")
    for kind in KINDS:
        rs = [results[kind, n] for n in ns]
        secs = sum(r.seconds for r in rs)
        seqs = sum(r.sequences for r in rs)
        steps = sum(r.timesteps for r in rs)
        lines.append(f"  {_LABELS[kind]:<28}{seqs / secs:>10,.0f} sequences/s"
                     f"{steps / secs:>13,.0f} timesteps/s   ({secs:.1f}s)")
    lines.append("")
    lines.append(verdict(results))
    return "\n".join(lines)


def _explain(results):
    """Two or three lines reading the gradient table, when the story held."""
    n, cfg = results.longest, results.cfg
    rnn_r, lstm_r = results["RNN", n], results["LSTM", n]
    cue = n + 1
    rnn = rnn_r.norms_trained[cue] / rnn_r.norms_trained[0]
    lstm = lstm_r.norms_trained[cue] / lstm_r.norms_trained[0]
    if rnn_r.accuracy < cfg.chance + 0.1 and lstm_r.accuracy >= 0.9:
        return [f"  Through the tanh RNN the gradient shrinks by a near-constant factor per "
                f"step: the cue gets {_fmt_ratio(rnn)} of the last",
                "  step's gradient, nothing to learn from. The LSTM's cell state passes it "
                "on scaled by the forget gate, so after a",
                f"  fast drop over the first steps it levels off instead of vanishing: the "
                f"cue gets {_fmt_ratio(lstm)}."]
    return [f"  At N={n} the RNN reached {100 * rnn_r.accuracy:.0f}% and the LSTM "
            f"{100 * lstm_r.accuracy:.0f}%; after training the cue gets {_fmt_ratio(rnn)} "
            f"(RNN) and {_fmt_ratio(lstm)} (LSTM) of the last step's gradient."]


def verdict(results):
    """One sentence on where each model stops solving the task."""
    cfg = results.cfg
    def solved(kind):
        return [n for n in cfg.lengths if results[kind, n].accuracy >= 0.9]

    def at_chance(kind):
        return [n for n in cfg.lengths if results[kind, n].accuracy < cfg.chance + 0.1]

    parts = []
    for kind in KINDS:
        s, c = solved(kind), at_chance(kind)
        text = f"the {_LABELS[kind]} solves N = {', '.join(map(str, s))}" if s else \
            f"the {_LABELS[kind]} solves no N"
        if c:
            text += f" and is at chance for N = {', '.join(map(str, c))}"
        parts.append(text)
    return "Verdict: " + "; ".join(parts) + "."


def _import_pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("--plot needs matplotlib, which is not installed (pip install "
                          "matplotlib, or pip install 'lstmfast[plot]')") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot(results, path):
    """Two panels: accuracy against N, and ||dL/dh_t|| against distance (log scale)."""
    plt = _import_pyplot()
    cfg = results.cfg
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ns = list(cfg.lengths)
    colors = {"RNN": "tab:red", "LSTM": "tab:blue", "LSTM0": "tab:cyan"}
    for kind in KINDS:
        ax1.plot(ns, [100 * results[kind, n].accuracy for n in ns], "o-", color=colors[kind],
                 label=_LABELS[kind])
    ax1.axhline(100 * cfg.chance, color="gray", ls=":", label="chance")
    ax1.set_xscale("log")
    ax1.set_xticks(ns)
    ax1.set_xticklabels([str(n) for n in ns])
    ax1.set_ylim(0, 105)
    ax1.set_xlabel("N (distractors between cue and query)")
    ax1.set_ylabel("held-out accuracy (%)")
    ax1.set_title("Accuracy against the length of the dependency")
    ax1.legend(loc="center right")
    n = max(ns)
    d = np.arange(n + 2)
    for kind in KINDS:
        r = results[kind, n]
        for attr, style, when in (("norms_init", "--", "init"), ("norms_trained", "-",
                                                                  "trained")):
            norms = getattr(r, attr)
            rel = norms / norms[0]
            # log scale: underflowed zeros would be dropped silently; clamp so they show.
            ax2.plot(d, np.maximum(rel, 1e-45), style, color=colors[kind],
                     label=f"{_LABELS[kind]}, {when}")
    ax2.set_yscale("log")
    ax2.set_xlabel("distance from the last step (steps)")
    ax2.set_ylabel("||dL/dh_t|| / ||dL/dh_T||")
    ax2.set_title(f"Gradient reaching back in time (N={n})")
    ax2.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _int_list(text):
    try:
        values = tuple(int(v) for v in text.replace(",", " ").split())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 5,10,20, got {text!r}")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"lengths must be positive integers, got {text!r}")
    return values


def build_parser(prog="python -m lstmfast demo"):
    p = argparse.ArgumentParser(
        prog=prog, description="Vanishing gradients, shown: a tanh RNN and an LSTM of the "
        "same size learn to recall a cue token across N distractors. Default run: 30-60 s "
        "on 2 cores.")
    d = DemoConfig()
    p.add_argument("--quick", action="store_true",
                   help=f"a few seconds' run (N={','.join(map(str, QUICK['lengths']))}, "
                        f"hidden {QUICK['hidden']}, {QUICK['steps']} steps) unless overridden")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed (default %(default)s)")
    p.add_argument("--hidden", type=positive(int), help=f"hidden size (default {d.hidden})")
    p.add_argument("--lengths", type=_int_list,
                   help=f"distractor counts N (default {','.join(map(str, d.lengths))})")
    p.add_argument("--steps", type=positive(int),
                   help=f"Adam steps per model and N (default {d.steps})")
    p.add_argument("--batch", type=positive(int), default=d.batch,
                   help="sequences per step (default %(default)s)")
    p.add_argument("--lr", type=positive(float), default=d.lr,
                   help="Adam learning rate (default %(default)s)")
    p.add_argument("--clip", type=positive(float), default=d.clip,
                   help="max gradient norm (default %(default)s)")
    p.add_argument("--forget-bias", type=float, default=d.forget_bias,
                   help="added to the LSTM's forget-gate bias at init (LSTM(..., "
                        "forget_bias=)); a third model keeps torch's default init "
                        "(default %(default)s)")
    p.add_argument("--classes", type=int, choices=range(2, 10), default=d.classes,
                   metavar="{2..9}", help="number of cue tokens (default %(default)s)")
    p.add_argument("--plot", metavar="OUT.png",
                   help="save accuracy-vs-N and gradient-vs-distance panels (matplotlib)")
    p.add_argument("--threads", type=positive(int), default=1,
                   help="threads for lstmfast and numpy's BLAS; results repeat exactly "
                        "for a fixed seed and thread count (default %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def config_from_args(args):
    cfg = DemoConfig(seed=args.seed, batch=args.batch, lr=args.lr, clip=args.clip,
                     forget_bias=args.forget_bias, classes=args.classes)
    preset = QUICK if args.quick else {}
    for name in ("lengths", "hidden", "steps"):
        value = getattr(args, name)
        if value is None:
            value = preset.get(name, getattr(cfg, name))
        setattr(cfg, name, value)
    cfg.lengths = tuple(sorted(set(cfg.lengths)))
    return cfg


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.plot:
        try:
            _import_pyplot()   # fail now, not after a minute of training
        except ImportError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    cfg = config_from_args(args)
    t0 = time.perf_counter()
    with limit_threads(args.threads) as threads_note:
        print(f"lstmfast demo: recall a cue across N distractors; RNN (tanh) vs LSTM "
              f"(and the LSTM with torch's default init), "
              f"hidden {cfg.hidden}, {cfg.classes} classes (chance {100 * cfg.chance:.0f}%),"
              f" seed {cfg.seed}")
        print(f"N = {', '.join(map(str, cfg.lengths))}; {cfg.steps} Adam steps "
              f"(lr {cfg.lr:g}, batch {cfg.batch}, clip {cfg.clip:g}) per model and N; "
              f"LSTM forget-gate bias {cfg.forget_bias:+g} (forget_bias={cfg.forget_bias:g});"
              f" {threads_note}")
        results = run(cfg, progress=not args.no_progress)
    print()
    print(format_summary(results))
    if args.plot:
        plot(results, args.plot)
        print(f"\nplot saved to {args.plot}")
    print(f"\ntotal time {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
