"""Save and load the parameters of named Modules as one .npz file.

The archive holds one array per parameter under the key "<module name>.<param name>",
e.g. {"encoder": lstm, "head": linear} -> "encoder.weight_ih_l0", ..., "head.bias".
It is plain numpy (no pickle), so ``np.load(path)`` reads it anywhere.

Files are treated as untrusted: only regular files are opened; the member names (from
the zip directory) and every member's .npy header (shape, dtype) are checked against
what the modules expect before any array data is decompressed, and a member is read only
up to the size its checked header implies, so a damaged or hostile file costs no more
memory than the parameters it claims to hold.
"""
from __future__ import annotations

import os
import stat
import tempfile
import zipfile
from typing import Dict, Iterator, Tuple, Union

import numpy as np

from .module import Module

__all__ = ["save", "load", "Archive"]

PathLike = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]

# a .npy header is short (numpy writes < 200 bytes for any shape we store); numpy's own
# default limit
_MAX_HEADER = 10000


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
    """path as a str (bytes decoded as the file system does); file objects are refused."""
    try:
        return os.fsdecode(path)
    except TypeError:
        raise TypeError(f"a checkpoint path must be a str, bytes or os.PathLike (file objects "
                        f"are not supported), got {type(path).__name__}") from None


def save(path: PathLike, modules: Dict[str, Module]) -> None:
    """Write every parameter of ``modules`` ({name: Module}) to the .npz file ``path``.

    ``path`` is used as given (numpy would append ".npz" to a bare name). The file is
    written to a new temporary file in the same directory (created exclusively, so no
    existing file or symbolic link there is followed) and then renamed over ``path``, so
    a crash mid-write leaves any previous checkpoint intact.
    """
    _check_modules(modules)
    arrays = {key: modules[m].params[p] for key, (m, p) in _flat_keys(modules).items()}
    path = _path(path)
    folder, name = os.path.split(os.path.abspath(path))
    try:  # keep an existing checkpoint's permissions; a new one gets the usual 0644
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        mode = 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy types its keywords as savez's flags
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


def _open_regular(path):
    """A binary file object for the regular file at path; a FIFO, device or directory is
    refused without blocking on it."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"cannot read checkpoint {path!r}: not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


class Archive:
    """An .npz checkpoint opened for checking before reading.

    ``keys`` come from the zip directory alone; ``header(key)`` reads one member's .npy
    header (shape, dtype); ``read(key)`` decompresses exactly the bytes that header
    implies. Use as a context manager. Every problem is a ValueError naming the file.
    """

    def __init__(self, path: PathLike) -> None:
        self.path = _path(path)
        self._file = _open_regular(self.path)
        if self._file.read(6) == b"\x93NUMPY":
            self._file.close()
            raise self._error("it holds a single .npy array, not an .npz archive")
        self._file.seek(0)
        try:
            self._zip = zipfile.ZipFile(self._file)
            infos = self._zip.infolist()
        except BaseException as e:
            self._file.close()
            if isinstance(e, (zipfile.BadZipFile, OSError, EOFError, ValueError)):
                raise self._error(f"not a valid .npz file ({type(e).__name__}: {e})") from e
            raise
        self._members = {}
        for info in infos:
            if not info.filename.endswith(".npy"):
                self.close()
                raise self._error(f"member {info.filename!r} is not a .npy array")
            self._members[info.filename[:-4]] = info
        self._headers: Dict[str, Tuple[Tuple[int, ...], np.dtype, bool, int]] = {}

    def _error(self, msg):
        return ValueError(f"cannot read checkpoint {self.path!r}: {msg}")

    def __enter__(self) -> "Archive":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._zip.close()
        self._file.close()

    @property
    def keys(self) -> Iterator[str]:
        return iter(self._members)

    def _parse(self, key, member):
        try:
            version = np.lib.format.read_magic(member)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(
                    member, max_header_size=_MAX_HEADER)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(
                    member, max_header_size=_MAX_HEADER)
            else:
                raise ValueError(f".npy format version {version}")
        except (ValueError, EOFError, zipfile.BadZipFile, OSError) as e:
            raise self._error(f"{key!r} has no valid .npy header ({e})") from e
        if dtype.hasobject or dtype.kind not in "biuf" or dtype.itemsize > 8:
            raise self._error(f"{key!r} holds dtype {dtype}, not real numbers")
        return shape, dtype, fortran, member.tell()

    def header(self, key: str) -> Tuple[Tuple[int, ...], np.dtype]:
        """(shape, dtype) from the member's .npy header; nothing else is decompressed."""
        if key not in self._headers:
            with self._zip.open(self._members[key]) as member:
                self._headers[key] = self._parse(key, member)
        shape, dtype, _, _ = self._headers[key]
        return shape, dtype

    def read(self, key: str) -> np.ndarray:
        """The member's array, after its header; its declared size must match the header."""
        info = self._members[key]
        with self._zip.open(info) as member:
            shape, dtype, fortran, offset = self._headers.get(key) or self._parse(key, member)
            if key in self._headers:
                member.seek(offset)
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if info.file_size != offset + nbytes:
                raise self._error(f"{key!r} declares {info.file_size} bytes; its header "
                                  f"{shape} {dtype} implies {offset + nbytes}")
            try:
                data = member.read(nbytes)
                member.read(1)  # at the end: zipfile checks the CRC
            except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
                raise self._error(f"{key!r} is damaged ({type(e).__name__}: {e})") from e
        if len(data) != nbytes:
            raise self._error(f"{key!r} is truncated")
        return np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C").copy()


def load(path: PathLike, modules: Dict[str, Module]) -> None:
    """Load the .npz at ``path`` into ``modules`` ({name: Module}), all or nothing.

    Everything is checked before any parameter is written: a missing or unexpected key
    raises KeyError (from the zip directory, before anything is decompressed); a wrong
    shape or dtype (from the .npy headers, before any data is), a size that does not
    match, or an unreadable file raises ValueError. Values are cast to each module's
    dtype.
    """
    _check_modules(modules)
    keys = _flat_keys(modules)
    with Archive(path) as archive:
        names = set(archive.keys)
        missing = sorted(set(keys) - names)
        unexpected = sorted(names - set(keys))
        if missing or unexpected:
            raise KeyError(f"checkpoint {archive.path!r} does not match the modules: missing "
                           f"keys {missing}, unexpected keys {unexpected[:10]}"
                           + (f" and {len(unexpected) - 10} more" if len(unexpected) > 10
                              else ""))
        for key, (mname, pname) in keys.items():
            shape, _ = archive.header(key)
            want = modules[mname].params[pname].shape
            if shape != want:
                raise ValueError(f"checkpoint[{key!r}] has shape {shape}, expected {want}")
        per_module: Dict[str, Dict[str, np.ndarray]] = {name: {} for name in modules}
        for key, (mname, pname) in keys.items():
            per_module[mname][pname] = archive.read(key)
    for name, state in per_module.items():
        modules[name].load_state_dict(state)
