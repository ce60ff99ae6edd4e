"""Process start-up: TensorFlow's C++/absl/CUDA log lines kept off the terminal unless asked for,
triton loaded before TensorFlow under Keras' torch backend (:func:`keep_triton_before_tensorflow`),
and work deferred until a heavy module is imported (:func:`when_imported`).

:func:`quiet_startup` runs once, when :mod:`hgkeras` is imported (so every entry point gets it:
``hgkeras``, ``train.py``, ``datasets/*.py``, ``serving/*.py``). It sets ``TF_CPP_MIN_LOG_LEVEL=3``
(unless already set) and, for the one ``import tensorflow`` of the process, drops the glog-format
lines (``I0000 00:00:... port.cc:153] oneDNN custom operations are on ...``) and absl's
``WARNING: All log messages before absl::InitializeLog() ...`` line that TensorFlow writes to file
descriptor 2 while loading, whatever the log level; every other line written meanwhile is passed on.
After the import, absl's Python logger shows errors only.

``HGKERAS_DEBUG=1`` (or ``hgkeras --verbose``, see :func:`show_startup_logs`) leaves all of this off.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator

#: Environment variable that shows the start-up logs (any value but "" or "0").
DEBUG_VARIABLE = "HGKERAS_DEBUG"

#: Lines TensorFlow's native libraries write while loading: glog-format INFO/WARNING/ERROR records
#: and absl's notice about logging before its initialisation. FATAL records are kept.
NOISE = re.compile(
    r"^(?:[IWE]\d{4} [\d:.]+\s+\d+ [\w./-]+:\d+\] "
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR)"
)

_state = {"set_log_level": False}


def debug() -> bool:
    """True when the user asked for the start-up logs (``HGKERAS_DEBUG`` set, not "0")."""
    return os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")


def quiet_startup() -> None:
    """Set the quiet defaults and filter TensorFlow's import-time lines (no-op with HGKERAS_DEBUG)."""
    if debug():
        return
    if "TF_CPP_MIN_LOG_LEVEL" not in os.environ:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # inherited by subprocesses too
        _state["set_log_level"] = True
    if "tensorflow" not in sys.modules:
        _install(
            _ImportHook("tensorflow", "quiet", around=filtered_stderr, after=_quiet_python_loggers)
        )


def show_startup_logs() -> None:
    """Undo :func:`quiet_startup` for this process and its children (``hgkeras --verbose``)."""
    os.environ[DEBUG_VARIABLE] = "1"
    if _state["set_log_level"]:
        os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)
        _state["set_log_level"] = False
    sys.meta_path = [f for f in sys.meta_path if not _is_hook(f, "tensorflow", "quiet")]


def when_imported(name: str, callback: Callable[[], None]) -> None:
    """Call ``callback`` once the top-level module ``name`` is imported (now, if it already is)."""
    if name in sys.modules:
        callback()
    else:
        _install(
            _ImportHook(name, f"{callback.__module__}.{callback.__qualname__}", after=callback)
        )


#: Why and what to do, when TensorFlow is loaded and triton cannot follow it (one line).
TENSORFLOW_FIRST = (
    "hgkeras: TensorFlow was imported before Keras' torch backend, which loads triton (installed "
    "with CUDA PyTorch); triton loaded after TensorFlow crashes the process (each links its own "
    "LLVM). Import hgkeras (or torch and triton) before tensorflow, or use KERAS_BACKEND=tensorflow "
    "or jax"
)


def keras_backend() -> str:
    """The backend Keras will load: ``KERAS_BACKEND``, else the ``backend`` of keras.json, else
    tensorflow; read as Keras reads them, without importing Keras."""
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    if "KERAS_HOME" in os.environ:
        keras_dir = os.environ["KERAS_HOME"]
    else:
        home = os.path.expanduser("~")
        keras_dir = os.path.join(home if os.access(home, os.W_OK) else "/tmp", ".keras")
    try:
        with open(os.path.expanduser(os.path.join(keras_dir, "keras.json"))) as f:
            backend = json.load(f).get("backend")
    except (OSError, ValueError, AttributeError):  # no file, not JSON, not an object
        return "tensorflow"
    return backend if isinstance(backend, str) and backend else "tensorflow"


def keep_triton_before_tensorflow() -> None:
    """Under Keras' torch backend with triton installed, load triton before TensorFlow.

    TensorFlow and triton each link their own LLVM, and loading triton's library after
    TensorFlow's crashes the process (SIGSEGV), while the reverse order works. TensorFlow's own
    import loads Keras, and Keras' torch backend imports triton (through ``torch._dynamo``), so
    ``import tensorflow`` would crash: the first look-up of ``tensorflow`` imports triton first
    (about 0.3 s; nothing happens until then). When TensorFlow is already loaded without Keras
    (``TF_USE_LEGACY_KERAS=1``; with Keras it would have crashed), importing Keras raises an
    ImportError saying why and what to do, instead of the crash.
    """
    if "keras" in sys.modules or "triton" in sys.modules or keras_backend() != "torch":
        return
    if importlib.util.find_spec("triton") is None:
        return
    if "tensorflow" in sys.modules:
        _install(_Refusal("keras", TENSORFLOW_FIRST))
    else:
        _install(_Before("tensorflow", "triton first", _import_triton))


def _import_triton() -> None:
    with contextlib.suppress(ImportError):  # a broken triton: torch treats it as absent too
        importlib.import_module("triton")


@contextlib.contextmanager
def filtered_stderr(noise: re.Pattern[str] = NOISE) -> Iterator[None]:
    """Collect what is written to file descriptor 2 meanwhile; pass on the lines ``noise`` misses.

    When the body raises, every collected line is passed on (nothing that explains a failure is
    lost).
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, AttributeError, ValueError):  # no usable stderr: nothing to filter
        yield
        return
    failed = True
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
            failed = False
        finally:
            with contextlib.suppress(OSError, AttributeError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode(errors="replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if failed or not noise.match(line))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


def _quiet_python_loggers() -> None:
    if "absl.logging" in sys.modules:
        absl_logging = sys.modules["absl.logging"]
        absl_logging.set_verbosity(absl_logging.ERROR)


def _is_hook(finder, name: str, purpose: str) -> bool:
    return getattr(finder, "name", None) == name and getattr(finder, "purpose", None) == purpose


def _install(hook: _ImportHook | _Before | _Refusal) -> None:
    """Put ``hook`` first on ``sys.meta_path`` unless one for the same module and purpose is there."""
    if not any(_is_hook(f, hook.name, hook.purpose) for f in sys.meta_path):
        sys.meta_path = [hook, *sys.meta_path]


class _HookedLoader(importlib.abc.Loader):
    """Runs the real loader inside ``around()``, then ``after()``; the module keeps the real loader."""

    def __init__(self, loader: importlib.abc.Loader, around, after) -> None:
        self.loader, self.around, self.after = loader, around, after

    def create_module(self, spec: importlib.machinery.ModuleSpec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        with self.around():
            self.loader.exec_module(module)
        if self.after is not None:
            self.after()


class _ImportHook(importlib.abc.MetaPathFinder):
    """Finds the top-level module ``name`` with the other finders and wraps its loader, once."""

    def __init__(self, name: str, purpose: str, around=contextlib.nullcontext, after=None) -> None:
        self.name, self.purpose, self.around, self.after = name, purpose, around, after

    def find_spec(self, name, path=None, target=None):
        if name != self.name:
            return None
        # One import per process. A new list: the import system is iterating over the old one.
        sys.meta_path = [finder for finder in sys.meta_path if finder is not self]
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _HookedLoader(spec.loader, self.around, self.after)
        return spec


class _Before(importlib.abc.MetaPathFinder):
    """Calls ``action()`` whenever the top-level module ``name`` is looked for (not yet loaded), then
    lets the other finders find it."""

    def __init__(self, name: str, purpose: str, action: Callable[[], None]) -> None:
        self.name, self.purpose, self.action = name, purpose, action

    def find_spec(self, name, path=None, target=None):
        if name == self.name:
            self.action()
        return None


class _Refusal(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Every import of the top-level module ``name`` raises ImportError(``message``); a look-up
    without import (``importlib.util.find_spec``) still finds a spec."""

    purpose = "refusal"

    def __init__(self, name: str, message: str) -> None:
        self.name, self.message = name, message

    def find_spec(self, name, path=None, target=None):
        return importlib.machinery.ModuleSpec(name, self) if name == self.name else None

    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        raise ImportError(self.message, name=self.name)
