"""``hgkeras info``: versions, backend, devices and, with a model, its size and cost."""

from __future__ import annotations

import argparse
import importlib.metadata
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "info",
        help="print versions, the Keras backend, devices, and a model's parameters and MACs",
        description="Print package versions, the active Keras backend and its devices. With --model "
        "(a .keras file) or --stacks, also print parameter counts and multiply-accumulates per image.",
    )
    parser.add_argument("--model", help="a saved .keras model to describe")
    parser.add_argument(
        "--stacks", type=int, help="describe a fresh StackedHourglass with this many stacks"
    )
    parser.add_argument(
        "--features", type=int, default=256, help="with --stacks: feature width f (default 256)"
    )
    parser.add_argument(
        "--modules", type=int, default=1,
        help="with --stacks: residual modules per resolution (default 1)",
    )  # fmt: skip
    parser.add_argument(
        "--joints", type=int, default=16, help="with --stacks: number of joints J (default 16)"
    )
    parser.add_argument(
        "--image-size", type=int, default=256, help="with --stacks: square input size (default 256)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.set_defaults(func=run)


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _devices(backend: str) -> list[str]:
    if backend == "tensorflow":
        import tensorflow as tf

        return [f"{d.device_type}:{d.name}" for d in tf.config.list_physical_devices()]
    if backend == "jax":
        import jax

        return [str(d) for d in jax.devices()]
    if backend == "torch":
        import torch

        devices = ["cpu"]
        if torch.cuda.is_available():
            devices += [
                f"cuda:{i} {torch.cuda.get_device_name(i)}"
                for i in range(torch.cuda.device_count())
            ]
        return devices
    return []


def run(args: argparse.Namespace) -> int:
    import keras

    import hgkeras
    from hgkeras.models.hourglass import StackedHourglass, count_macs, count_params

    backend = keras.backend.backend()
    info: dict = {
        "hgkeras": hgkeras.__version__,
        "backend": backend,
        "devices": _devices(backend),
        "versions": {
            name: _version(name)
            for name in (
                "keras", "tensorflow", "jax", "jaxlib", "torch", "numpy",
                "opencv-python-headless", "tf2onnx", "onnx", "onnxruntime", "tensorflow-serving-api",
                "ai-edge-litert", "openvino", "pycocotools", "tensorboard",
            )
        },
    }  # fmt: skip
    model = None
    if args.model:
        from hgkeras.models.loading import load_model

        model = load_model(args.model)
    elif args.stacks is not None:
        model = StackedHourglass(
            num_stacks=args.stacks,
            num_features=args.features,
            num_modules=args.modules,
            image_shape=(args.image_size, args.image_size, 3),
            pose=_counting_pose(args.joints),
        )
    if model is not None:
        trainable, non_trainable = count_params(model)
        info["model"] = {
            "name": model.name,
            "config": model.get_config() if hasattr(model, "num_stacks") else None,
            "trainable_params": trainable,
            "non_trainable_params": non_trainable,
            "macs_per_image": count_macs(model),
        }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"hgkeras {info['hgkeras']}  backend: {backend}")
    print("devices: " + (", ".join(info["devices"]) or "none"))
    for name, version in info["versions"].items():
        print(f"  {name:24s} {version or '-'}")
    if model is not None:
        m = info["model"]
        print(f"model {m['name']}:")
        print(f"  trainable parameters      {m['trainable_params']:,}")
        print(f"  non-trainable parameters  {m['non_trainable_params']:,}")
        print(f"  multiply-accumulates      {m['macs_per_image'] / 1e9:.2f} G per image")
    return 0


def _counting_pose(num_joints: int):
    """A joint set of ``num_joints`` unnamed joints (the size report needs only the count)."""
    from hgkeras.spec import PoseSpec

    names = tuple(f"joint_{j}" for j in range(num_joints))
    return PoseSpec(name=f"{num_joints}_joints", joint_names=names, flip_pairs=(), limbs=())
