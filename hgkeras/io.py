"""File access for local and remote paths, and the one atomic-write helper of hgkeras.

Paths with a scheme (``gs://``, ``s3://``, ``hdfs://``, ...) go through ``tf.io.gfile`` (TensorFlow is
imported only for them); local paths use the standard library, so JAX and torch users need no
TensorFlow to write files.

Every file hgkeras writes (manifests, prediction files, checkpoints, configs, exports) is written
under a temporary name in the target's folder and renamed over the target when complete, so a kill
leaves either the old file or the new one, never a partial one. Temporary names start with
``.{name}.tmp-`` (see :func:`is_temporary`), so a later run can find and remove leftovers.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: Marker inside temporary names: ``.{name}.tmp-{hex}{suffix}``.
TMP_MARKER = ".tmp-"


def is_remote(path: str | os.PathLike) -> bool:
    """True for paths with a URL scheme (``gs://bucket/x``), which need ``tf.io.gfile``."""
    return "://" in os.fspath(path)


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def join(path: str | os.PathLike, *parts: str) -> str:
    """``path / part / ...`` for local and remote paths (forward slashes for remote ones)."""
    base = os.fspath(path)
    if is_remote(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return os.path.join(base, *parts)


def exists(path: str | os.PathLike) -> bool:
    return _gfile().exists(os.fspath(path)) if is_remote(path) else os.path.exists(path)


def isdir(path: str | os.PathLike) -> bool:
    return _gfile().isdir(os.fspath(path)) if is_remote(path) else os.path.isdir(path)


def makedirs(path: str | os.PathLike) -> None:
    if is_remote(path):
        _gfile().makedirs(os.fspath(path))
    else:
        os.makedirs(path, exist_ok=True)


def listdir(path: str | os.PathLike) -> list[str]:
    """Entry names in a folder (sorted)."""
    if is_remote(path):
        return sorted(name.rstrip("/") for name in _gfile().listdir(os.fspath(path)))
    return sorted(os.listdir(path))


def glob(pattern: str | os.PathLike) -> list[str]:
    """Sorted paths matching a glob pattern."""
    if is_remote(pattern):
        return sorted(_gfile().glob(os.fspath(pattern)))
    import glob as _glob

    return sorted(_glob.glob(os.fspath(pattern)))


def read_bytes(path: str | os.PathLike) -> bytes:
    if is_remote(path):
        with _gfile().GFile(os.fspath(path), "rb") as handle:
            return handle.read()
    return Path(path).read_bytes()


def read_text(path: str | os.PathLike) -> str:
    return read_bytes(path).decode("utf-8")


def remove(path: str | os.PathLike) -> None:
    """Delete a file or a folder tree; nothing happens when it does not exist."""
    if is_remote(path):
        gfile = _gfile()
        name = os.fspath(path)
        if gfile.isdir(name):
            gfile.rmtree(name)
        elif gfile.exists(name):
            gfile.remove(name)
        return
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def temporary_name(path: str | os.PathLike) -> str:
    """A fresh temporary path beside ``path`` (same folder, same suffix, hidden name)."""
    name = os.fspath(path).rstrip("/")
    folder, base = name.rsplit("/", 1) if is_remote(name) else os.path.split(name)
    stem, suffix = os.path.splitext(base)
    temp = f".{stem}{TMP_MARKER}{uuid.uuid4().hex[:12]}{suffix}"
    return join(folder, temp) if folder else temp


def is_temporary(name: str) -> bool:
    """True for a name made by :func:`temporary_name` (a leftover of an interrupted write)."""
    base = os.path.basename(os.fspath(name).rstrip("/"))
    return base.startswith(".") and TMP_MARKER in base


def _rename(source: str, target: str) -> None:
    if is_remote(target):
        gfile = _gfile()
        if gfile.isdir(target):
            gfile.rmtree(target)
        gfile.rename(source, target, overwrite=True)
        return
    if os.path.isdir(target) and not os.path.islink(target):
        # A folder cannot be replaced in one rename: move the old one aside, then delete it.
        old = temporary_name(target)
        os.replace(target, old)
        os.replace(source, target)
        shutil.rmtree(old, ignore_errors=True)
        return
    os.replace(source, target)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path to write a file or folder to; rename it to ``path`` on success.

    The temporary path keeps ``path``'s suffix (``model.keras`` -> ``.model.tmp-ab12.keras``), so
    writers that check extensions accept it. On an exception the temporary is removed and ``path``
    is left as it was.
    """
    target = os.fspath(path)
    parent = os.path.dirname(target.rstrip("/"))
    if parent:
        makedirs(parent)
    temp = temporary_name(target)
    try:
        yield temp
        _rename(temp, target)
    except BaseException:
        remove(temp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (fsync'd when local)."""
    with atomic_path(path) as temp:
        if is_remote(temp):
            with _gfile().GFile(temp, "wb") as handle:
                handle.write(data)
        else:
            with open(temp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented, key-sorted JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def remove_temporaries(folder: str | os.PathLike) -> list[str]:
    """Delete leftovers of interrupted atomic writes in ``folder``; returns what was removed."""
    if not isdir(folder):
        return []
    removed = []
    for name in listdir(folder):
        if is_temporary(name):
            remove(join(folder, name))
            removed.append(name)
    return removed


def load_json(path: str | os.PathLike, what: str = "file") -> Any:
    """The parsed JSON of the file ``path`` (local or remote); FileNotFoundError / ValueError naming
    it (``what`` it is)."""
    if not exists(path) or isdir(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return json.loads(read_text(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from None
