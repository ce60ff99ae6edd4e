"""Training recipes and the optimiser's rule on the five shipped MPII people: loss curves and PCKh.

Every run is ``train.py`` in its own process (TensorFlow backend, seed 0), before and after the
optimiser change: Torch's RMSprop (epsilon after the root, hgkeras' default now) against Keras'
RMSprop (epsilon inside the root, ``--optimizer keras_rmsprop``, what hgkeras used before):

* the README's main job, ``python train.py`` (the ``embedded`` recipe), whose wall time (export
  included) is the main job's time on this machine;
* each MPII reference recipe (``newell2016``, ``bearpaw``, ``princeton``; ``docs/training.md``
  "Recipes") on a 2-stack network of the embedded run's size (64 features, 128x128 input), with the
  recipe's optimiser, learning rate, batch, sigma, initialisation and augmentation, for ``--steps``
  steps in 10 epochs, its learning-rate drops moved to the same fractions of that length. Adam
  (``princeton``) has no epsilon-inside variant, so it runs once.

The five people are also the validation set: PCKh@0.5 (official protocol) shows how far each setting
learns them in the same number of steps, not how well it generalises. Prints a table and writes
``benchmarks/results/recipes.json``.

Usage::

    python benchmarks/recipes.py                     # every run (about an hour on a 2-core CPU)
    python benchmarks/recipes.py --only embedded     # the main job, both rules
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_speed import cpu_description  # noqa: E402

from hgkeras.training.recipes import RECIPES  # noqa: E402

#: (recipe, optimisers to compare): the optimiser's rule before (keras_rmsprop) and after (rmsprop).
PLAN = [
    ("embedded", ("rmsprop", "keras_rmsprop")),
    ("newell2016", ("rmsprop", "keras_rmsprop")),
    ("bearpaw", ("rmsprop", "keras_rmsprop")),
    ("princeton", ("adam",)),
]
#: The reference recipes run at the embedded run's network size, on a CPU.
SMALL = ["--stacks", "2", "--features", "64", "--input-size", "128"]
EPOCHS = 10


def recipe_arguments(name: str, steps: int) -> list[str]:
    """train.py flags of a recipe run: the embedded main job as it is, the others made small."""
    if name == "embedded":
        return []
    recipe = RECIPES[name]
    drops = sorted({round(d * EPOCHS / recipe.epochs) for d in recipe.lr_drops} - {0, EPOCHS})
    return [
        "--recipe", name, *SMALL, "--epochs", str(EPOCHS),
        "--steps-per-epoch", str(max(1, steps // EPOCHS)),
        "--lr-drops", ",".join(map(str, drops)) or "none", "--val-every", "5", "--no-export",
    ]  # fmt: skip


def run(name: str, optimizer: str, steps: int, out: Path) -> dict:
    """One train.py run; its losses per epoch, PCKh and times."""
    args = [sys.executable, str(REPO / "train.py"), "--out", str(out), "--optimizer", optimizer,
            "--verbose", "2", *recipe_arguments(name, steps)]  # fmt: skip
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        raise RuntimeError(f"{name}/{optimizer} failed:\n{done.stderr[-3000:]}")
    results = json.loads((out / "results.json").read_text())
    config = json.loads((out / "config.json").read_text())
    with open(out / "log.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {
        "recipe": name,
        "optimizer": optimizer,
        "command": ["python", "train.py", *args[2:]],
        "settings": {
            k: config[k]
            for k in (
                "stacks",
                "features",
                "input_size",
                "batch_size",
                "epochs",
                "steps_per_epoch",
                "lr",
                "lr_drops",
                "sigma",
                "init",
                "augment",
            )
        },  # fmt: skip
        "steps": int(results["optimizer_iterations"]),
        "loss_per_epoch": [round(float(r["loss"]), 6) for r in rows],
        "val_pckh_per_epoch": {r["epoch"]: float(r["val_pckh"]) for r in rows if r.get("val_pckh")},
        "val_pckh": results["val_pckh"],
        "pckh": {k: v for k, v in results["pckh"].items() if isinstance(v, (int, float))},
        "train_seconds": results["train_seconds_this_session"],
        "wall_seconds": round(seconds, 1),
        "cpu_seconds": round(cpu, 1),  # user + system, all cores: less sensitive to the load
        "load_average": round(os.getloadavg()[0], 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=1000, help="steps of each reference recipe")
    parser.add_argument("--only", help="comma-separated recipes of the plan (default: all)")
    parser.add_argument("--out", type=Path, default=RESULTS / "recipes.json", help="JSON output")
    args = parser.parse_args(argv)
    only = set(args.only.split(",")) if args.only else None
    result = {
        "benchmark": "recipes",
        "machine": cpu_description(),
        "backend": "tensorflow",
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "note": "5 shipped MPII people for training and validation; seed 0; the machine is shared "
        "(times vary with its load)",
        "runs": [],
    }
    from hgkeras.io import atomic_write_json

    with tempfile.TemporaryDirectory(prefix="hgkeras-recipes-") as temp:
        for name, optimizers in PLAN:
            if only and name not in only:
                continue
            for optimizer in optimizers:
                print(f"{name} / {optimizer} ...", file=sys.stderr, flush=True)
                entry = run(name, optimizer, args.steps, Path(temp) / f"{name}-{optimizer}")
                result["runs"].append(entry)
                atomic_write_json(args.out, result)
    result["load_average_after"] = list(os.getloadavg())
    atomic_write_json(args.out, result)
    print(f"\nRecipes on the shipped MPII samples ({result['machine']}, TensorFlow, load average "
          f"{result['load_average_after'][0]:.1f})")  # fmt: skip
    table = [("recipe", "optimizer", "steps", "first loss", "last loss", "PCKh", "wall s", "cpu s")]
    table += [
        (r["recipe"], r["optimizer"], r["steps"], f"{r['loss_per_epoch'][0]:.5f}",
         f"{r['loss_per_epoch'][-1]:.5f}", f"{r['val_pckh']:.1f}", r["wall_seconds"],
         r["cpu_seconds"])
        for r in result["runs"]
    ]  # fmt: skip
    for row in table:
        print("  ".join(f"{cell!s:>13}" for cell in row))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
