"""Process start-up: TensorFlow's C++/absl/CUDA log lines kept off the terminal unless asked for,
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
        _install(_ImportHook("tensorflow", around=filtered_stderr, after=_quiet_python_loggers))


def show_startup_logs() -> None:
    """Undo :func:`quiet_startup` for this process and its children (``hgkeras --verbose``)."""
    os.environ[DEBUG_VARIABLE] = "1"
    if _state["set_log_level"]:
        os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)
        _state["set_log_level"] = False
    sys.meta_path = [f for f in sys.meta_path if not _is_hook(f, "tensorflow")]


def when_imported(name: str, callback: Callable[[], None]) -> None:
    """Call ``callback`` once the top-level module ``name`` is imported (now, if it already is)."""
    if name in sys.modules:
        callback()
    else:
        _install(_ImportHook(name, after=callback))


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


def _is_hook(finder, name: str) -> bool:
    return isinstance(finder, _ImportHook) and finder.name == name


def _install(hook: _ImportHook) -> None:
    if not any(_is_hook(f, hook.name) for f in sys.meta_path):
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

    def __init__(self, name: str, around=contextlib.nullcontext, after=None) -> None:
        self.name, self.around, self.after = name, around, after

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
