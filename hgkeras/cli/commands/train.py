"""``hgkeras train`` and ``python train.py``: the command line of :func:`hgkeras.training.run.train`.

The flags map one to one onto :class:`hgkeras.training.recipes.TrainConfig`; this module only parses
them (``--recipe NAME`` and ``--config FILE`` give the settings that flags do not) and calls the library.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence

DESCRIPTION = (
    "Train a Stacked Hourglass pose network (Keras 3; set KERAS_BACKEND). "
    "`python train.py --dataset mpii --data-dir DIR` trains as the Torch code that produced the "
    "paper's numbers (recipe newell2016); `python train.py --data-dir DIR` trains any keypoint set "
    "that `hgkeras prepare` wrote (COCO, DeepLabCut, YOLO-pose, ...); `--recipe NAME` trains as another reference code; "
    "`python train.py` alone runs a short training on the shipped MPII samples (recipe embedded). A "
    "run killed at any moment continues when the same command is started again."
)


def _int_list(text: str) -> list[int]:
    text = text.strip()
    if text.lower() in ("", "none"):
        return []
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"epochs must be >= 0, got {text!r}")
    return values


def _float_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected non-negative finite numbers, got {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add every training flag to ``parser`` (shared by ``train.py`` and ``hgkeras train``)."""
    from hgkeras.codec import DECODERS
    from hgkeras.spec import POSES
    from hgkeras.training.recipes import MIXED_PRECISION, RECIPES

    def both(key: str) -> str:
        """The defaults of the Torch code's recipe and of the embedded run."""
        shown = []
        for name in ("newell2016", "embedded"):
            value = RECIPES[name].settings()[key]
            if isinstance(value, list):
                value = ",".join(map(str, value)) or "none"
            shown.append(f"{name}: {value}")
        return f"(default: the recipe's; {'; '.join(shown)})"

    parser.add_argument(
        "--recipe",
        choices=list(RECIPES),
        help="the settings that flags do not give, after a reference code (docs/training.md "
        "'Recipes'): " + "; ".join(f"{r.name}: {r.description}" for r in RECIPES.values())
        + ". Default: the keypoint set's (newell2016 for MPII and FLIC, coco for COCO, small for "
        "any other set, with the set's sigma and input size), embedded without data",
    )  # fmt: skip
    parser.add_argument(
        "--config",
        metavar="CONFIG_JSON",
        help="repeat the run described by a config.json of an earlier run; flags given on the "
        "command line override its settings",
    )
    data = parser.add_argument_group(
        "data",
        "Give --data-dir (TFRecords of `hgkeras prepare`: train split for fit, valid split for "
        "validation; the keypoint set comes from its manifest) or --train-pattern/--val-pattern "
        "with --dataset or --pose. With no data argument the embedded run trains a small model on "
        "the shipped real MPII samples. Validation scores the set's own metric (PCKh for MPII, "
        "OKS AP for COCO, PCK for FLIC and box-scored sets; docs/evaluation.md).",
    )
    data.add_argument(
        "--dataset",
        choices=sorted(POSES),
        help="a built-in keypoint set, for its defaults (optional with --data-dir: the manifest "
        "names the set)",
    )
    data.add_argument(
        "--pose",
        metavar="SPEC",
        help="the keypoint set: a built-in name or a pose spec .json file (docs/own-keypoints.md); "
        "default: the manifest's",
    )
    data.add_argument("--data-dir", help="directory of prepared TFRecords (manifest.json + shards)")
    data.add_argument("--train-pattern", help="glob of training TFRecord shards")
    data.add_argument("--val-pattern", help="glob of validation TFRecord shards")
    data.add_argument(
        "--samples-dir",
        help="embedded run: directory with samples.json and images/ "
        "(default: the samples shipped inside the package)",
    )
    data.add_argument(
        "--val-limit",
        type=int,
        help="validate on the first N validation people only (default: all)",
    )

    model = parser.add_argument_group("model")
    model.add_argument("--stacks", type=int, help="hourglass stacks N " + both("stacks"))
    model.add_argument("--features", type=int, help="feature width f " + both("features"))
    model.add_argument(
        "--modules", type=int, help="residual modules per resolution m " + both("modules")
    )
    model.add_argument("--depth", type=int, help="hourglass order n " + both("depth"))
    model.add_argument(
        "--input-size", type=int, help="square input crop in pixels " + both("input_size")
    )
    model.add_argument(
        "--init",
        help="weight initialisation: keras (Keras' defaults), torch (Torch7 nn: convolutions "
        "U(+-1/sqrt(fan_in)), BatchNorm scale U(0,1)) or pytorch (PyTorch: the same convolutions, "
        "scale 1) " + both("init"),
    )
    model.add_argument(
        "--init-weights",
        metavar="CHECKPOINT",
        help="start from the weights of a saved or imported network (.keras); layers whose shapes "
        "differ (the heatmap heads when the joint count differs, e.g. MPII weights for FLIC) keep "
        "their fresh initialisation. Ignored when --out holds a run to resume",
    )

    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--batch-size", type=int, help="global batch size " + both("batch_size"))
    opt.add_argument("--epochs", type=int, help="epochs " + both("epochs"))
    opt.add_argument(
        "--steps-per-epoch",
        type=int,
        help="training steps per epoch (default: the recipe's, or training people // batch size; "
        "newell2016: 8000, embedded: 100)",
    )
    opt.add_argument(
        "--optimizer",
        help="rmsprop (Torch's: epsilon after the root), adam, or keras_rmsprop (Keras' rule, "
        "epsilon inside the root, for comparison) " + both("optimizer"),
    )
    opt.add_argument("--lr", type=float, help="learning rate " + both("lr"))
    opt.add_argument(
        "--lr-drops",
        type=_int_list,
        help="comma-separated epochs at which the learning rate is multiplied by --lr-factor, "
        "'none' for a constant rate " + both("lr_drops"),
    )
    opt.add_argument(
        "--lr-factor", type=float, help="multiplier at each learning-rate drop " + both("lr_factor")
    )
    opt.add_argument(
        "--lr-warmup-epochs",
        type=int,
        help="raise the learning rate linearly over the first N epochs (epoch e uses "
        "lr * (e + 1) / N; default 0: no warm-up)",
    )
    opt.add_argument(
        "--scale-lr-with-batch",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="multiply --lr by batch size / 6 (the paper's batch), the linear scaling rule for "
        "large global batches (default: off)",
    )
    opt.add_argument(
        "--stack-weights",
        type=_float_list,
        help="comma-separated loss weight per stack (default: 1 for every stack)",
    )
    opt.add_argument(
        "--sigma", type=float, help="target Gaussian sigma in heatmap pixels " + both("sigma")
    )
    opt.add_argument(
        "--decoder",
        choices=DECODERS,
        help="heatmap codec: the targets it trains on (udp has its own) and the validation's "
        "decoding; recorded in the model (default paper)",
    )
    opt.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="rotation/scale/flip/colour augmentation, by the recipe's law (config.json "
        "'augmentation') " + both("augment"),
    )
    opt.add_argument(
        "--seed",
        type=int,
        help="seed of the initial weights, the data order and the augmentation (default 0)",
    )

    ev = parser.add_argument_group("evaluation")
    ev.add_argument(
        "--val-batch-size",
        type=int,
        help="people per validation batch (the flip test doubles it; default 16 on CPU, 64 on an "
        "accelerator)",
    )
    ev.add_argument(
        "--flip-eval",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="validate with the flip test (sets with flip pairs) " + both("flip_eval"),
    )
    ev.add_argument(
        "--val-every",
        type=int,
        help="validate every N epochs (and after the last) " + both("val_every"),
    )
    ev.add_argument(
        "--pckh-protocol",
        choices=("official", "hrnet"),
        help="PCKh protocol of the logged total (default official: Head = neck + head top)",
    )

    run = parser.add_argument_group("run")
    run.add_argument(
        "--out",
        help="output directory; running the same command again resumes there "
        "(default runs/hourglass, embedded run: runs/embedded)",
    )
    run.add_argument(
        "--mixed-precision",
        choices=sorted(MIXED_PRECISION),
        help="compute dtype policy; coordinates, targets, heatmap outputs and losses stay float32 "
        "(default off)",
    )
    run.add_argument(
        "--jit-compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="force XLA compilation on or off (default: Keras chooses per backend)",
    )
    run.add_argument(
        "--steps-per-execution",
        type=int,
        help="training steps per compiled call (fewer host round trips; default 1)",
    )
    run.add_argument(
        "--export",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="export the best model for serving at the end, when hgkeras.deploy.export is available "
        "(default: on)",
    )
    run.add_argument(
        "--verbose",
        type=int,
        choices=(0, 1, 2),
        help="Keras fit verbosity: 1 progress bar, 2 one line per epoch, 0 silent (default: 1 on "
        "a terminal, else 2)",
    )
    return parser


def build_parser(prog: str = "train.py") -> argparse.ArgumentParser:
    """The parser of ``train.py``."""
    return add_arguments(argparse.ArgumentParser(prog=prog, description=DESCRIPTION))


def given_settings(args: argparse.Namespace) -> dict:
    """The settings of parsed flags: ``--config``'s, overridden by the flags given."""
    from hgkeras.training.recipes import read_config_settings

    given = {k: v for k, v in vars(args).items() if v is not None}
    for key in ("func", "command"):
        given.pop(key, None)
    path = given.pop("config", None)
    return {**(read_config_settings(path) if path else {}), **given}


def parse_config(argv: Sequence[str] | None = None, prog: str = "train.py"):
    """Parse command-line flags into a resolved :class:`~hgkeras.training.recipes.TrainConfig`."""
    from hgkeras.training.recipes import resolve_config

    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        return resolve_config(given_settings(args))
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a Stacked Hourglass network (same flags as train.py)",
        description=DESCRIPTION,
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hgkeras.training.recipes import resolve_config
    from hgkeras.training.run import run_training

    try:
        config = resolve_config(given_settings(args))
    except (ValueError, FileNotFoundError) as error:
        print(f"hgkeras train: error: {error}", file=sys.stderr)
        return 2
    return run_training(config, "hgkeras train")


def main(argv: Sequence[str] | None = None, prog: str = "train.py") -> int:
    """``python train.py``: parse, train; exit code 0, 1 for a NaN stop, 2 for bad input."""
    from hgkeras.training.run import run_training

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return run_training(parse_config(argv, prog), prog)
