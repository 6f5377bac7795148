"""Save and load the parameters of named Modules as one .npz file.

The archive holds one array per parameter under the key "<module name>.<param name>",
e.g. {"encoder": lstm, "head": linear} -> "encoder.weight_ih_l0", ..., "head.bias".
It is plain numpy (no pickle), so ``np.load(path)`` reads it anywhere.
"""
from __future__ import annotations

import os
from typing import Dict, Union

import numpy as np

from .module import Module

__all__ = ["save", "load"]


def _check_modules(modules):
    if not isinstance(modules, dict):
        raise TypeError(f"modules must be a dict of name -> Module, got {type(modules).__name__}")
    for name, m in modules.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"module names must be non-empty strings, got {name!r}")
        if not isinstance(m, Module):
            raise TypeError(f"modules[{name!r}] must be a Module, got {type(m).__name__}")


def _flat_keys(modules):
    """{"<module>.<param>": (module name, param name)}, refusing ambiguous keys."""
    keys = {}
    for mname, m in modules.items():
        for pname in m.params:
            key = f"{mname}.{pname}"
            if key in keys:
                # e.g. module "a" param "b.c" and module "a.b" param "c".
                raise ValueError(f"checkpoint key {key!r} is produced by two modules; "
                                 f"rename one of them")
            keys[key] = (mname, pname)
    return keys


def _path(path) -> str:
    """path as a str; file objects are refused (save renames its file into place)."""
    try:
        return os.fspath(path)
    except TypeError:
        raise TypeError(f"a checkpoint path must be a str or os.PathLike (file objects are "
                        f"not supported), got {type(path).__name__}") from None


def save(path: Union[str, "os.PathLike[str]"], modules: Dict[str, Module]) -> None:
    """Write every parameter of ``modules`` ({name: Module}) to the .npz file ``path``.

    ``path`` is used as given (numpy would append ".npz" to a bare name). The file is
    written next to ``path`` and then renamed over it, so a crash mid-write leaves any
    previous checkpoint intact.
    """
    _check_modules(modules)
    arrays = {key: modules[m].params[p] for key, (m, p) in _flat_keys(modules).items()}
    path = _path(path)
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy types its keywords as savez's flags
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _read(path):
    """Every array of the .npz at ``path``, read fully (so CRC errors surface here)."""
    try:
        # Our own file handle: np.load(path) leaks its handle when the zip is damaged.
        with open(path, "rb") as f:
            data = np.load(f, allow_pickle=False)
            if isinstance(data, np.lib.npyio.NpzFile):
                with data:
                    return {k: data[k] for k in data.files}
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as e:
        # zipfile and numpy raise a zoo of types on damaged files (BadZipFile, EOFError,
        # zlib.error, struct.error, ValueError for pickled data, ...): one clear error.
        raise ValueError(f"cannot read checkpoint {path!r}: not a valid .npz file "
                         f"({type(e).__name__}: {e})") from e
    raise ValueError(f"cannot read checkpoint {path!r}: it holds a single .npy array, "
                     f"not an .npz archive")


def load(path: Union[str, "os.PathLike[str]"], modules: Dict[str, Module]) -> None:
    """Load the .npz at ``path`` into ``modules`` ({name: Module}), all or nothing.

    Everything is checked before any parameter is written: a missing or unexpected key
    raises KeyError; a wrong shape, a non-numeric array or an unreadable file raises
    ValueError. Values are cast to each module's dtype.
    """
    _check_modules(modules)
    keys = _flat_keys(modules)
    path = _path(path)
    arrays = _read(path)
    missing = sorted(set(keys) - set(arrays))
    unexpected = sorted(set(arrays) - set(keys))
    if missing or unexpected:
        raise KeyError(f"checkpoint {path!r} does not match the modules: missing keys "
                       f"{missing}, unexpected keys {unexpected}")
    per_module: Dict[str, Dict[str, np.ndarray]] = {name: {} for name in modules}
    for key, (mname, pname) in keys.items():
        value, param = arrays[key], modules[mname].params[pname]
        if value.shape != param.shape:
            raise ValueError(f"checkpoint[{key!r}] has shape {value.shape}, "
                             f"expected {param.shape}")
        if value.dtype.kind not in "iuf":
            raise ValueError(f"checkpoint[{key!r}] has non-numeric dtype {value.dtype}")
        per_module[mname][pname] = value
    for name, state in per_module.items():
        modules[name].load_state_dict(state)
