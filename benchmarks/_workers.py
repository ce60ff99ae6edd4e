"""What the benchmark scripts share: timing a call, the CPU's name, and running a measurement in a
backend's process.

Keras reads ``KERAS_BACKEND`` once, at import, so each backend is measured in its own process: the
script re-runs itself with ``--worker``, and the worker prints one JSON object per line on stdout
(flushed as it goes, so a worker that dies keeps what it measured).
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    """The machine a benchmark ran on: CPU model, core count, platform and load at the start."""
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "load_average_at_start": os.getloadavg(),
    }


#: The exit code ``spawn_worker`` reports for a worker it stopped at its time limit.
TIMED_OUT = 124


def timed(
    step: Callable[[], object], min_time: float, min_steps: int, warmup: int
) -> tuple[float, int]:
    """Seconds per call of ``step`` after ``warmup`` calls, over at least min_steps and min_time."""
    for _ in range(warmup):
        step()
    calls, start = 0, time.perf_counter()
    while calls < min_steps or time.perf_counter() - start < min_time:
        step()
        calls += 1
    return (time.perf_counter() - start) / calls, calls


def emit(message: dict) -> None:
    """One JSON line on stdout, flushed (the worker side)."""
    print(json.dumps(message), flush=True)


def spawn_worker(
    script: str, backend: str, args: list[str], cpu_only: bool = True, timeout: float | None = None
) -> tuple[int, list[dict]]:
    """Run ``script args`` under ``KERAS_BACKEND=backend``; its exit code and the JSON lines it printed.

    A worker still running after ``timeout`` seconds is killed with its process group (its own
    children too) and reported as ``TIMED_OUT``, with the lines it printed until then.
    """
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
    if cpu_only:
        env.setdefault("JAX_PLATFORMS", "cpu")
        env["CUDA_VISIBLE_DEVICES"] = ""
    process = subprocess.Popen(
        [sys.executable, script, *args],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=timeout is not None,
    )
    try:
        stdout, _ = process.communicate(timeout=timeout)
        code = process.returncode
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, _ = process.communicate()
        code = TIMED_OUT
    except BaseException:  # e.g. Ctrl-C: a worker in its own session would not see it
        if timeout is not None:
            os.killpg(process.pid, signal.SIGKILL)
        raise
    messages = []
    for line in stdout.splitlines():
        try:
            message = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(message, dict):
            messages.append(message)
    return code, messages
