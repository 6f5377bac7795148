"""The command line and its demos: the RNN-vs-LSTM story, and the text language model.

Budgets are small (the whole file runs in well under 30 s). Accuracy margins come from
12 seeds of the same configuration: at N=40 after 200 steps the RNN scored 0.22-0.28
(chance 0.25) and the LSTM 1.00 on every seed.
"""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from lstmfast import __main__ as cli
from lstmfast import bench
from lstmfast.apps import common, demo, textlm


def run_cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "lstmfast", *args], capture_output=True,
                          text=True, timeout=timeout)


# --- the long-term dependency demo ---------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
def test_lstm_remembers_where_rnn_forgets(seed):
    cfg = demo.DemoConfig(lengths=(40,), hidden=32, steps=200, seed=seed)
    with common.limit_threads(1):
        results = demo.run(cfg, log=lambda line: None, progress=False)
    rnn, lstm = results["RNN", 40], results["LSTM", 40]
    assert lstm.accuracy >= 0.9
    assert abs(rnn.accuracy - cfg.chance) <= 0.1
    # ...and the gradient says why: the cue (d=41) is out of reach through the RNN only.
    assert rnn.norms_trained[41] / rnn.norms_trained[0] < 1e-6
    assert lstm.norms_trained[41] / lstm.norms_trained[0] > 1e-4
    # the same LSTM with torch's default initialisation, trained beside it
    default = results["LSTM0", 40]
    assert default.norms_init.shape == (42,)
    assert default.norms_init[41] / default.norms_init[0] < lstm.norms_init[41] / lstm.norms_init[0]


def test_task_puts_cue_first_and_query_last():
    tokens, labels = demo.make_batch(np.random.default_rng(0), 7, 50, classes=3,
                                     distractors=5)
    assert tokens.shape == (9, 50)
    np.testing.assert_array_equal(tokens[0], labels)
    assert set(np.unique(labels)) == {0, 1, 2}
    assert tokens[1:-1].min() >= 3 and tokens[1:-1].max() < 8
    assert (tokens[-1] == 8).all()


def test_demo_is_deterministic_for_a_seed():
    cfg = demo.DemoConfig(lengths=(6,), hidden=8, steps=20, seed=3)
    with common.limit_threads(1):
        a = demo.train_one("LSTM", 6, cfg)
        b = demo.train_one("LSTM", 6, cfg)
    assert a.accuracy == b.accuracy and a.final_loss == b.final_loss
    np.testing.assert_array_equal(a.norms_trained, b.norms_trained)


def test_cli_help_lists_the_subcommands(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("demo", "text", "bench"):
        assert f"  {name} " in out
    assert cli.main(["nonsense"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_cli_demo_quick_end_to_end(capsys):
    r = run_cli("demo", "--quick", "--no-progress")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for text in ("Accuracy on 1000 held-out sequences", "RNN (tanh)", "LSTM",
                 "Gradient reaching the past", "timesteps/s", "Verdict:"):
        assert text in out
    # demo is the default command, and the summary repeats exactly for the seed.
    assert cli.main(["--quick", "--no-progress"]) == 0
    table = out[out.index("Accuracy on"):out.index("Training throughput")]
    assert table in capsys.readouterr().out


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    cfg = demo.DemoConfig(lengths=(3, 6), hidden=8, steps=5)
    results = demo.run(cfg, log=lambda line: None, progress=False)
    path = tmp_path / "demo.png"
    demo.plot(results, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_rejects_bad_lengths(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["demo", "--lengths", "5,x"])
    assert e.value.code == 2 and "--lengths" in capsys.readouterr().err


# --- the character-level language model ----------------------------------------------------
def test_corpus_is_the_stdlib_source():
    paths = textlm.find_stdlib_sources()
    assert len(paths) > 100
    assert not any(os.sep + "site-packages" + os.sep in p for p in paths)
    text, n_files = textlm.load_corpus(50_000, seed=0)
    assert len(text) == 50_000 and n_files >= 1
    assert "def " in text and "return" in text
    vocab = textlm.Vocab.from_text(text)
    assert vocab.decode(vocab.encode(text[:500])) == text[:500]
    assert vocab.decode(vocab.encode("\u00e9")) == textlm.UNK


TINY = ["--seconds", "1.5", "--hidden", "16", "--embed", "8", "--bptt", "16",
        "--batch", "8", "--max-chars", "40000", "--sample-chars", "80",
        "--print-every", "1", "--no-progress", "--seed", "5"]


def _sample_of(stdout):
    return stdout.split("--- sample (")[1].split("\n---")[0]


def test_text_checkpoint_round_trip(tmp_path):
    ck = str(tmp_path / "lm.npz")
    r = run_cli("text", *TINY, "--save", ck)
    assert r.returncode == 0, r.stderr
    assert "bits/char" in r.stdout and "saved" in r.stdout
    r2 = run_cli("text", "--load", ck, "--seconds", "0", "--sample-chars", "80",
                 "--seed", "5")
    assert r2.returncode == 0, r2.stderr
    assert _sample_of(r2.stdout) == _sample_of(r.stdout)
    # The vocabulary and sizes come back from the one file.
    model = textlm.load(ck)
    assert model.config == dict(hidden=16, layers=1, embed=8)


def test_text_checkpoint_errors_are_clear(tmp_path):
    text, _ = textlm.load_corpus(5_000, seed=0)
    model = textlm.CharLSTM(textlm.Vocab.from_text(text), hidden=8, embed=4)
    good = tmp_path / "good.npz"
    textlm.save(good, model)

    damaged = tmp_path / "damaged.npz"
    damaged.write_bytes(good.read_bytes()[:300])
    with pytest.raises(ValueError, match="not a valid .npz"):
        textlm.load(damaged)

    other = tmp_path / "other.npz"
    np.savez(other, weight=np.zeros(3))
    with pytest.raises(ValueError, match="not a text-model checkpoint"):
        textlm.load(other)

    with pytest.raises(ValueError, match="hidden=8, but hidden=32"):
        textlm.load(good, hidden=32)

    # A head whose vocabulary size disagrees with the stored vocabulary.
    arrays = dict(np.load(good))
    arrays["head.weight"] = arrays["head.weight"][:-1]
    arrays["head.bias"] = arrays["head.bias"][:-1]
    np.savez(tmp_path / "mismatch.npz", **arrays)
    with pytest.raises(ValueError, match="head.weight"):
        textlm.load(tmp_path / "mismatch.npz")

    r = run_cli("text", "--load", str(damaged), "--seconds", "0")
    assert r.returncode == 1 and "error: cannot load" in r.stderr
    assert "Traceback" not in r.stderr


def test_nan_loss_stops_training(tmp_path):
    text, _ = textlm.load_corpus(20_000, seed=0)
    vocab = textlm.Vocab.from_text(text)
    model = textlm.CharLSTM(vocab, hidden=8, embed=4)
    model.head.params["bias"][0] = np.nan
    ids = vocab.encode(text)
    with pytest.raises(FloatingPointError, match="step 1: loss is nan"):
        textlm.train(model, ids[:-2000], ids[-2000:], seconds=30, batch=4, bptt=8,
                     progress=False, log=lambda line: None)

    # From the command line: reported, exit status 1, and no checkpoint written.
    ck = tmp_path / "nan.npz"
    textlm.save(ck, model)
    out = tmp_path / "after.npz"
    r = run_cli("text", "--load", str(ck), "--seconds", "5", "--max-chars", "20000",
                "--batch", "4", "--bptt", "8", "--no-progress", "--save", str(out))
    assert r.returncode == 1
    assert "loss is nan" in r.stderr and "no checkpoint was written" in r.stderr
    assert not out.exists()


def test_sampling_temperature():
    text, _ = textlm.load_corpus(5_000, seed=0)
    model = textlm.CharLSTM(textlm.Vocab.from_text(text), hidden=8, embed=4)
    a = textlm.sample(model, 50, 0.5, rng=1)
    assert len(a) == 50 and a == textlm.sample(model, 50, 0.5, rng=1)
    with pytest.raises(ValueError, match="temperature"):
        textlm.sample(model, 5, 0.0)


@pytest.mark.parametrize("argv, msg", [
    (["--pause", "-1"], "--pause takes seconds >= 0"),
    (["--pause", "nan"], "--pause takes seconds >= 0"),
    (["--json", "{tmp}/missing/run.json"], "--json .* cannot write there"),
    (["--plot", "{tmp}"], "--plot .* cannot write there"),
], ids=["negative-pause", "nan-pause", "json-folder-missing", "plot-is-a-folder"])
def test_bench_rejects_bad_arguments_before_running(tmp_path, capsys, argv, msg):
    """Refused as argparse errors before any timing: the outputs are written at the end of
    a run of many minutes, which a bad path would have lost."""
    with pytest.raises(SystemExit) as e:
        bench.main([a.format(tmp=tmp_path) for a in argv])
    assert e.value.code == 2
    assert re.search(msg, capsys.readouterr().err)


@pytest.mark.parametrize("argv, msg", [
    (["--seconds", "nan"], "--seconds must be a number of seconds >= 0"),
    (["--seconds", "-1"], "--seconds must be a number of seconds >= 0"),
    (["--sample-every", "-1"], "--sample-every must be a number of seconds >= 0"),
    (["--save", "{tmp}/missing/model.npz"], "--save .* cannot write there"),
], ids=["nan-seconds", "negative-seconds", "negative-sample-every", "save-folder-missing"])
def test_text_rejects_bad_arguments_before_training(tmp_path, capsys, argv, msg):
    """A NaN budget skipped training silently; a negative sample period sampled after
    every step; an unwritable --save path lost the run at its end."""
    assert textlm.main([a.format(tmp=tmp_path) for a in argv]) == 2
    assert re.search(msg, capsys.readouterr().err)


def test_text_training_ends_with_a_validation_loss_after_a_late_sample():
    """When a sample runs past the time budget the loop stops before its next report:
    the last steps still get a train and validation loss (it was NaN with no report)."""
    text, _ = textlm.load_corpus(20_000, seed=0)
    vocab = textlm.Vocab.from_text(text)
    model = textlm.CharLSTM(vocab, hidden=8, embed=4)
    ids = vocab.encode(text)
    stats = textlm.train(model, ids[:-2000], ids[-2000:], seconds=0.3, batch=4, bptt=8,
                         print_every=1e9, sample_every=1e-9, sample_chars=2000,
                         progress=False, log=lambda line: None)
    assert stats["steps"] >= 1
    assert np.isfinite(stats["train_loss"]) and np.isfinite(stats["val_loss"])
