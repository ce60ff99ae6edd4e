"""What the benchmark scripts share: timing a call, and running a measurement in a backend's process.

Keras reads ``KERAS_BACKEND`` once, at import, so each backend is measured in its own process: the
script re-runs itself with ``--worker``, and the worker prints one JSON object per line on stdout
(flushed as it goes, so a worker that dies keeps what it measured).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable


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
    script: str, backend: str, args: list[str], cpu_only: bool = True
) -> tuple[int, list[dict]]:
    """Run ``script args`` under ``KERAS_BACKEND=backend``; its exit code and the JSON lines it printed."""
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
    if cpu_only:
        env.setdefault("JAX_PLATFORMS", "cpu")
        env["CUDA_VISIBLE_DEVICES"] = ""
    done = subprocess.run(
        [sys.executable, script, *args], env=env, stdout=subprocess.PIPE, text=True
    )
    messages = []
    for line in done.stdout.splitlines():
        try:
            messages.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return done.returncode, messages
