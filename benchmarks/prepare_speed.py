"""Speed and peak memory of ``hgkeras prepare`` on MPII-style records, at 1 and at all cores.

Synthesises ``--records`` people by replicating the records of the shipped MPII samples over their 5
real images (consecutive records show different images, as in MPII where most images hold one
person, so every record's image is read and checked), writes the annotation JSON to a temporary
folder and runs ``hgkeras prepare mpii`` in a subprocess once per ``--workers`` value. Records/s are
over the whole command (start-up included); peak memory is the largest sum of the resident set
sizes of the command and its children, sampled every 20 ms from /proc. The shards go to a temporary
folder that is deleted after each run. Prints a table and writes ``benchmarks/results/prepare.json``.

Usage: python benchmarks/prepare_speed.py [--records 20000 ...] [--workers 1 0] (0 = all cores)
       [--repo OLD_TREE --legacy] (an hgkeras tree whose prepare has no --workers, for before/after)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _workers import cpu_model  # noqa: E402

from hgkeras.io import atomic_write_json  # noqa: E402

SAMPLES = ROOT / "hgkeras" / "data" / "samples" / "mpii"


def _image_of(pid: int) -> tuple[str, str]:
    """(executable, start of stack) of a process: equal for a fork that has not exec'd yet."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return os.readlink(f"/proc/{pid}/exe"), fields[25]


def _tree_rss(pid: int) -> int:
    """Resident bytes of a process and its descendants (Linux /proc). A child that is still a copy
    of its parent (forked, not exec'd: it shares the parent's pages) is not counted again."""
    total, stack = 0, [(pid, None)]
    while stack:
        current, parent = stack.pop()
        try:
            image = _image_of(current)
            if image != parent:
                with open(f"/proc/{current}/status") as handle:
                    for line in handle:
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1]) * 1024
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as handle:
                    stack += [(int(child), image) for child in handle.read().split()]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
    return total


def synthesise(count: int, folder: Path) -> tuple[Path, Path]:
    """An MPII JSON of ``count`` people over the 5 sample images, and an image folder."""
    base = json.loads((SAMPLES / "samples.json").read_text())
    people = [dict(base[i % len(base)]) for i in range(count)]
    annotations = folder / "train.json"
    annotations.write_text(json.dumps(people))
    return annotations, SAMPLES / "images"


def run_prepare(
    annotations: Path, images: Path, out: Path, workers: int | None, repo: Path
) -> dict:
    """Run ``hgkeras prepare`` once; wall seconds, peak memory and bytes written."""
    command = ["prepare", "mpii", "--annotations", str(annotations), "--images", str(images),
               "--out", str(out), "--no-progress"]  # fmt: skip
    if workers is not None:
        command += ["--workers", str(workers)]
    code = "import sys; from hgkeras.cli import main; sys.exit(main(sys.argv[1:]))"
    env = dict(os.environ, PYTHONPATH=str(repo), TF_CPP_MIN_LOG_LEVEL="3")
    with tempfile.TemporaryFile("w+") as log:
        start = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-c", code, *command], env=env, stdout=log, stderr=log, text=True,
            cwd=repo,
        )  # fmt: skip
        peak = 0
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            peak = max(peak, _tree_rss(process.pid))
            time.sleep(0.02)
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            log.seek(0)
            raise RuntimeError(f"prepare exited {process.returncode}: {log.read()[-2000:]}")
    largest = usage.ru_maxrss * 1024
    written = sum(p.stat().st_size for p in out.glob("*.tfrecord"))
    return {
        "seconds": seconds,
        "peak_bytes": peak,
        "largest_process_rss_bytes": largest,
        "shard_bytes": written,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--records", type=int, nargs="+", default=[20000], help="people to prepare (one run each)"
    )
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1, 0], help="writer counts (0 = all cores)"
    )
    parser.add_argument("--repo", default=str(ROOT), help="hgkeras tree to run (for before/after)")
    parser.add_argument(
        "--legacy", action="store_true", help="the tree's prepare has no --workers (one writer)"
    )
    parser.add_argument(
        "--tmp", default=None, help="folder for the temporary shards (default: the system's)"
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "prepare.json"))
    args = parser.parse_args(argv)

    cores = os.cpu_count() or 1
    load_before = [round(v, 2) for v in os.getloadavg()]
    runs = []
    for records in args.records:
        with tempfile.TemporaryDirectory(prefix="hgkeras-prepare-bench-", dir=args.tmp) as tmp:
            annotations, images = synthesise(records, Path(tmp))
            for workers in args.workers:
                count = workers or cores
                out = Path(tmp) / f"tfr-{count}"
                result = run_prepare(
                    annotations, images, out, None if args.legacy else count, Path(args.repo)
                )
                shutil.rmtree(out)
                runs.append(
                    {
                        "records": records,
                        "workers": count,
                        "seconds": round(result["seconds"], 2),
                        "records_per_second": round(records / result["seconds"], 1),
                        "peak_memory_mb": round(result["peak_bytes"] / 2**20, 1),
                        "process_peak_rss_mb": round(
                            result["largest_process_rss_bytes"] / 2**20, 1
                        ),
                        "shard_gb": round(result["shard_bytes"] / 1e9, 2),
                    }
                )
                run = runs[-1]
                print(
                    f"{records:>7} records, workers {count:>2}: {run['seconds']:8.1f} s  "
                    f"{run['records_per_second']:8.1f} records/s  peak "
                    f"{run['peak_memory_mb']:7.1f} MB  shards {run['shard_gb']:.2f} GB",
                    flush=True,
                )
    report = {
        "benchmark": "prepare_speed",
        "tree": "legacy (before)" if args.legacy else "this tree",
        "images": len(list(SAMPLES.glob("images/*.jpg"))),
        "runs": runs,
        "cpu_model": cpu_model(),
        "cpu_count": cores,
        "load_average_before": load_before,
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "machine": platform.platform(),
        "python": platform.python_version(),
        "note": "records/s over the whole `hgkeras prepare` command, start-up included; "
        "peak_memory_mb = largest sum of RSS over the process tree (children included) sampled "
        "every 20 ms; process_peak_rss_mb = the kernel's peak RSS of the command",
    }
    atomic_write_json(args.out, report)
    print(f"{'records':>8} {'workers':>8} {'records/s':>10} {'peak MB':>8}  ({cpu_model()}, "
          f"{cores} cores, load {report['load_average_after'][0]})")  # fmt: skip
    for run in runs:
        print(f"{run['records']:>8} {run['workers']:>8} {run['records_per_second']:>10} "
              f"{run['peak_memory_mb']:>8}")  # fmt: skip
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
