"""Checkpoint files as an attacker would write them: every case a clear ValueError or
KeyError, no memory beyond what the modules hold, no hang, the modules unchanged; and
saving never follows a planted link."""
import io
import os
import threading
import tracemalloc
import zipfile

import numpy as np
import pytest

from lstmfast import checkpoint
from lstmfast.apps import textlm
from lstmfast.nn import Linear


def _linear(seed=0):
    return {"m": Linear(64, 64, dtype=np.float64, seed=seed)}


def _npy_header(shape, dtype="<f8"):
    """A .npy version 1.0 header (magic included) declaring shape and dtype."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _zip(path, members):
    """members: {name: bytes or (header, extra_zero_bytes)}, deflated."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            with zf.open(name, "w", force_zip64=True) as w:
                if isinstance(data, tuple):
                    header, zeros = data
                    w.write(header)
                    chunk = b"\0" * (1 << 20)
                    for _ in range(zeros >> 20):
                        w.write(chunk)
                else:
                    w.write(data)


def _params(modules):
    return {k: v.copy() for k, v in modules["m"].params.items()}


def _peak_of(fn):
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def _raises_small(fn, exc, match, limit=4 << 20):
    def call():
        with pytest.raises(exc, match=match):
            fn()
    assert _peak_of(call) < limit


def test_member_larger_than_its_header_is_refused_before_decompressing(tmp_path):
    """A 64 MiB run of zeros (deflated to ~64 KiB) behind a header of 64x64 float64."""
    path = tmp_path / "bomb.npz"
    _zip(path, {"m.weight.npy": (_npy_header((64, 64)), 64 << 20),
                "m.bias.npy": _npy_header((64,)) + bytes(64 * 8)})
    assert path.stat().st_size < 1 << 20
    dst = _linear(1)
    before = _params(dst)
    _raises_small(lambda: checkpoint.load(path, dst), ValueError, "declares .* bytes")
    for k, v in before.items():
        np.testing.assert_array_equal(dst["m"].params[k], v)


def test_header_declaring_a_huge_shape_is_refused_from_the_header(tmp_path):
    path = tmp_path / "big.npz"
    _zip(path, {"m.weight.npy": _npy_header((20000, 20000)),
                "m.bias.npy": _npy_header((64,)) + bytes(64 * 8)})
    _raises_small(lambda: checkpoint.load(path, _linear()), ValueError,
                  r"has shape \(20000, 20000\), expected \(64, 64\)")


def test_member_that_is_not_npy(tmp_path):
    path = tmp_path / "raw.npz"
    _zip(path, {"m.weight": b"not an array", "m.bias.npy": _npy_header((64,)) + bytes(512)})
    with pytest.raises(ValueError, match="member 'm.weight' is not a .npy array"):
        checkpoint.load(path, _linear())
    path2 = tmp_path / "badheader.npz"
    _zip(path2, {"m.weight.npy": b"\x93NUMPY garbage", "m.bias.npy": _npy_header((64,))})
    with pytest.raises(ValueError, match="no valid .npy header"):
        checkpoint.load(path2, _linear())


def test_thousands_of_members_are_refused_from_the_directory(tmp_path):
    path = tmp_path / "many.npz"
    _zip(path, {f"m.w{i}.npy": _npy_header((0,)) for i in range(5000)})
    _raises_small(lambda: checkpoint.load(path, _linear()), KeyError, "and 4990 more")


def test_a_fifo_or_a_directory_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    result = []

    def load():
        try:
            checkpoint.load(fifo, _linear())
        except Exception as e:  # noqa: BLE001 - the test inspects it
            result.append(e)

    t = threading.Thread(target=load, daemon=True)
    t.start()
    t.join(5)
    assert not t.is_alive(), "loading a FIFO blocked"
    assert isinstance(result[0], ValueError) and "not a regular file" in str(result[0])
    with pytest.raises(ValueError, match="not a regular file"):
        checkpoint.load(tmp_path, _linear())


def test_save_does_not_follow_a_planted_link_and_leaves_no_temporary(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    path = tmp_path / "c.npz"
    os.symlink(victim, str(path) + ".tmp")  # the name the old save wrote through
    for i in range(3):
        os.symlink(victim, tmp_path / f".c.npz.{i}.tmp")
    checkpoint.save(path, _linear())
    assert victim.read_bytes() == b"precious"
    dst = _linear(1)
    checkpoint.load(path, dst)
    np.testing.assert_array_equal(dst["m"].params["weight"], _linear()["m"].params["weight"])
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["victim", "c.npz", "c.npz.tmp"] + [f".c.npz.{i}.tmp" for i in range(3)])


@pytest.mark.parametrize("kind", ["str", "bytes", "pathlike"])
def test_paths_of_every_kind(tmp_path, kind):
    p = tmp_path / "c.npz"
    path = {"str": str(p), "bytes": os.fsencode(p), "pathlike": p}[kind]
    checkpoint.save(path, _linear())
    dst = _linear(1)
    checkpoint.load(path, dst)
    np.testing.assert_array_equal(dst["m"].params["bias"], _linear()["m"].params["bias"])
    with pytest.raises(TypeError, match="file objects are not supported"):
        checkpoint.load(open(p, "rb"), dst)


def test_save_keeps_an_existing_files_permissions(tmp_path):
    p = tmp_path / "c.npz"
    checkpoint.save(p, _linear())
    assert p.stat().st_mode & 0o777 == 0o644
    os.chmod(p, 0o600)
    checkpoint.save(p, _linear())
    assert p.stat().st_mode & 0o777 == 0o600


# --- python -m lstmfast text --load ------------------------------------------------------

def _text_members(V=5, E=4, H=6, layers=1, codes=None):
    vocab = textlm.Vocab("abcdefghijklmnopqrstuvwxyz"[:V - 1]).codepoints()  # UNK included
    assert len(vocab) == V
    members = {"vocab.codepoints.npy": _npy_header((V,)) + vocab.astype("<f8").tobytes()
               if codes is None else codes,
               "embed.weight.npy": _npy_header((V, E)) + bytes(V * E * 8),
               "head.weight.npy": _npy_header((V, H)) + bytes(V * H * 8),
               "head.bias.npy": _npy_header((V,)) + bytes(V * 8)}
    for k in range(layers):
        inp = E if k == 0 else H
        for name, shape in (("weight_ih", (4 * H, inp)), ("weight_hh", (4 * H, H)),
                            ("bias_ih", (4 * H,)), ("bias_hh", (4 * H,))):
            members[f"lstm.{name}_l{k}.npy"] = _npy_header(shape) + bytes(
                int(np.prod(shape)) * 8)
    return members


def test_text_load_reads_a_valid_handmade_checkpoint(tmp_path):
    path = tmp_path / "ok.npz"
    _zip(path, _text_members())
    model = textlm.load(path)
    assert model.config == dict(hidden=6, layers=1, embed=4) and len(model.vocab) == 5


def test_text_load_refuses_declared_sizes_beyond_its_limits(tmp_path):
    """A 1 KB file of zero-size arrays declaring a hidden size of 20000 (a 12 GiB model)."""
    path = tmp_path / "wide.npz"
    members = {"vocab.codepoints.npy": _npy_header((5,)) + bytes(40),
               "embed.weight.npy": _npy_header((5, 0)),
               "head.weight.npy": _npy_header((5, 0)), "head.bias.npy": _npy_header((5,)),
               "lstm.weight_ih_l0.npy": _npy_header((80000, 0)),
               "lstm.weight_hh_l0.npy": _npy_header((80000, 20000)),
               "lstm.bias_ih_l0.npy": _npy_header((80000,)),
               "lstm.bias_hh_l0.npy": _npy_header((80000,))}
    _zip(path, members)
    assert path.stat().st_size < 4096
    _raises_small(lambda: textlm.load(path), ValueError, "hidden size of 20000")


def test_text_load_refuses_thousands_of_layers(tmp_path):
    path = tmp_path / "deep.npz"
    members = _text_members()
    for k in range(1, 5000):
        members[f"lstm.weight_ih_l{k}.npy"] = _npy_header((0,))
    _zip(path, members)
    _raises_small(lambda: textlm.load(path), ValueError, "not a text-model checkpoint",
                  limit=16 << 20)


def test_text_load_refuses_a_vocabulary_of_strings_with_a_clear_error(tmp_path, capsys):
    path = tmp_path / "strings.npz"
    codes = _npy_header((5,), "<U3") + "abcdefghijklmno".encode("utf-32-le")
    _zip(path, _text_members(codes=codes))
    with pytest.raises(ValueError, match="vocab.codepoints' holds dtype <U3"):
        textlm.load(path)
    assert textlm.main(["--load", str(path), "--seconds", "0"]) == 1
    err = capsys.readouterr().err
    assert "error: cannot load" in err and "Traceback" not in err
