"""The Stacked Hourglass network (Newell, Yang, Deng, ECCV 2016) as a functional Keras 3 model.

The file follows ``docs/method.md`` section "Network":

* ``apply_residual``  -- the pre-activation bottleneck R(cin, cout);
* ``apply_hourglass`` -- the recursive hourglass H(n, f);
* ``apply_stem``      -- conv7x7/2 -> BN -> ReLU -> R(64,128) -> pool -> R(128,128) -> R(128,f);
* ``StackedHourglass`` -- N stacks with intermediate supervision; every stack's heatmaps are an output.

Layer names are stable and readable (``hg2_n4_low1_res1_conv2``) so that weights from the Torch and
PyTorch models map one to one (see :mod:`hgkeras.models.torch_import`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import layers

from hgkeras.codec import HeatmapCodec, get_codec
from hgkeras.models.layers import BatchNorm, Conv2D, MaxPooling2D, NearestUpsample2x, UpsampleAdd
from hgkeras.optimizers import make_optimizer
from hgkeras.spec import PoseSpec, get_pose, pose_config

#: BatchNorm as in Torch/PyTorch: eps 1e-5, momentum 0.1 (Keras convention: 0.9).
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9

#: Each stack downsamples by 4 in the stem and 2**depth inside the hourglass.
STEM_STRIDE = 4


#: Initialisations of the weights (``StackedHourglass(init=...)``, ``train.py --init``):
#: "keras": Keras' defaults (Glorot-uniform kernels, zero biases, BatchNorm scale 1);
#: "torch": Torch7 nn's defaults, as in the code that produced the paper (convolution weights and
#: biases U(+-1/sqrt(fan_in)), BatchNorm scale U(0, 1), offset 0);
#: "pytorch": PyTorch's defaults, as in both PyTorch ports (convolutions as Torch's, BatchNorm scale 1).
INITIALISATIONS = ("keras", "torch", "pytorch")


def _batch_norm(x, name: str, init: str = "keras"):
    options = {}
    if init == "torch":
        options["gamma_initializer"] = keras.initializers.RandomUniform(0.0, 1.0)
    return BatchNorm(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name, **options)(x)


def _conv_initializers(init: str, fan_in: int) -> dict[str, Any]:
    """Kernel and bias initialisers of a convolution with ``fan_in`` inputs per output."""
    if init == "keras":
        return {}
    bound = 1.0 / fan_in**0.5

    def uniform():
        return keras.initializers.RandomUniform(-bound, bound)

    return {"kernel_initializer": uniform(), "bias_initializer": uniform()}


def _conv(
    x,
    filters: int,
    kernel_size: int,
    name: str,
    dtype: str | None = None,
    init: str = "keras",
    strides: int = 1,
    padding: str = "same",
):
    """A convolution with bias (stride-1 ones with symmetric 'same' padding)."""
    fan_in = int(x.shape[-1]) * kernel_size * kernel_size
    options = _conv_initializers(init, fan_in)
    return Conv2D(
        filters, kernel_size, strides, padding, use_bias=True, name=name, dtype=dtype, **options
    )(x)


def apply_residual(x, out_channels: int, name: str, init: str = "keras"):
    """R(cin, cout): BN-ReLU-conv1x1(cout/2)-BN-ReLU-conv3x3(cout/2)-BN-ReLU-conv1x1(cout) plus a skip.

    The skip is the identity when ``cin == cout`` and a 1x1 convolution otherwise.
    """
    in_channels = x.shape[-1]
    if out_channels % 2:
        raise ValueError(f"{name}: out_channels must be even, got {out_channels}")
    mid = out_channels // 2
    y = _batch_norm(x, f"{name}_bn1", init)
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = _conv(y, mid, 1, f"{name}_conv1", init=init)
    y = _batch_norm(y, f"{name}_bn2", init)
    y = layers.ReLU(name=f"{name}_relu2")(y)
    y = _conv(y, mid, 3, f"{name}_conv2", init=init)
    y = _batch_norm(y, f"{name}_bn3", init)
    y = layers.ReLU(name=f"{name}_relu3")(y)
    y = _conv(y, out_channels, 1, f"{name}_conv3", init=init)
    if in_channels == out_channels:
        skip = x
    else:
        skip = _conv(x, out_channels, 1, f"{name}_skip", init=init)
    return layers.Add(name=f"{name}_add")([y, skip])


def apply_residuals(x, out_channels: int, num_modules: int, name: str, init: str = "keras"):
    """R(f, f)^m: ``num_modules`` residual modules in a row, named ``{name}_res1`` ... ``_resM``."""
    for k in range(1, num_modules + 1):
        x = apply_residual(x, out_channels, name=f"{name}_res{k}", init=init)
    return x


def apply_hourglass(
    x, order: int, num_features: int, num_modules: int, name: str, init: str = "keras"
):
    """H(n, f): an upper branch at this resolution and a lower branch at half resolution, added.

    up1  = R^m(x);  low1 = R^m(pool(x));  low2 = H(n-1)(low1) or R^m(low1) at the bottom;
    low3 = R^m(low2);  out = up1 + upsample2x(low3).  Layers are named ``{name}_n{order}_...``.
    """
    prefix = f"{name}_n{order}"
    up1 = apply_residuals(x, num_features, num_modules, f"{prefix}_up1", init)
    low1 = MaxPooling2D(2, strides=2, name=f"{prefix}_pool")(x)
    low1 = apply_residuals(low1, num_features, num_modules, f"{prefix}_low1", init)
    if order > 1:
        low2 = apply_hourglass(low1, order - 1, num_features, num_modules, name, init)
    else:
        low2 = apply_residuals(low1, num_features, num_modules, f"{prefix}_low2", init)
    low3 = apply_residuals(low2, num_features, num_modules, f"{prefix}_low3", init)
    up2 = NearestUpsample2x(name=f"{prefix}_upsample")(low3)  # a broadcast view: no copy
    return UpsampleAdd(name=f"{prefix}_add")([up1, up2])


def apply_stem(x, num_features: int, init: str = "keras"):
    """256 -> 64 px: conv7x7/2 (Torch padding 3) -> BN -> ReLU -> R(64,128) -> pool -> R(128,128) -> R(128,f)."""
    x = layers.ZeroPadding2D(3, name="stem_pad")(x)
    x = _conv(x, 64, 7, "stem_conv", init=init, strides=2, padding="valid")
    x = _batch_norm(x, "stem_bn", init)
    x = layers.ReLU(name="stem_relu")(x)
    x = apply_residual(x, 128, name="stem_res1", init=init)
    x = MaxPooling2D(2, strides=2, name="stem_pool")(x)
    x = apply_residual(x, 128, name="stem_res2", init=init)
    return apply_residual(x, num_features, name="stem_res3", init=init)


def _check_arguments(
    num_stacks: Any,
    num_features: Any,
    num_modules: Any,
    num_joints: Any,
    depth: Any,
    image_shape: Any,
) -> tuple[int, int, int]:
    """Validate constructor arguments; returns the (height, width, channels) image shape."""

    def positive_int(value: Any, arg: str, minimum: int = 1) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{arg} must be an integer >= {minimum}, got {value!r}")

    positive_int(num_stacks, "num_stacks")
    positive_int(num_features, "num_features", 2)
    if num_features % 2:
        raise ValueError(
            f"num_features must be even (the bottleneck halves it), got {num_features}"
        )
    positive_int(num_modules, "num_modules")
    positive_int(num_joints, "num_joints")
    positive_int(depth, "depth")
    try:
        shape = tuple(int(v) for v in image_shape)
    except (TypeError, ValueError):
        raise ValueError(f"image_shape must be (height, width, 3), got {image_shape!r}") from None
    if len(shape) != 3:
        raise ValueError(f"image_shape must be (height, width, 3), got {image_shape!r}")
    height, width, channels = shape
    if channels != 3:
        raise ValueError(
            f"image_shape must have 3 (RGB) channels, got {channels} in image_shape={image_shape!r}"
        )
    factor = STEM_STRIDE * 2**depth
    for label, size in (("height", height), ("width", width)):
        if size <= 0 or size % factor:
            raise ValueError(
                f"image_shape {label} must be a positive multiple of 2**(depth+2) = {factor} "
                f"for depth={depth}, got {size} in image_shape={image_shape!r}"
            )
    return shape


@keras.saving.register_keras_serializable(package="hgkeras")
class StackedHourglass(keras.Model):
    """Stacked Hourglass network: an RGB image in [0, 1] -> a list of ``num_stacks`` heatmap tensors.

    Args:
        num_stacks: number of hourglasses N (paper: 8).
        num_features: feature width f inside the hourglasses (paper: 256).
        num_modules: residual modules per resolution m (paper: 1).
        num_joints: heatmap channels J; default (None) the pose spec's joint count. A value that
            differs from the spec's count is an error (choose the matching ``pose``).
        depth: hourglass order n (paper: 4).
        image_shape: input (height, width, 3); both sides multiples of ``2**(depth+2)``.
        pose: the joint set (:class:`hgkeras.spec.PoseSpec` or its name: "mpii", "flic"), saved in
            the config so that evaluation, prediction and export know the joints' names, flip pairs
            and normaliser.
        codec: the heatmap codec its targets are rendered with and its heatmaps decoded with
            (:class:`hgkeras.codec.HeatmapCodec`, its config or a decoder name; default the
            paper's), saved in the config so that an evaluated or exported model decodes as it was
            trained. :class:`hgkeras.PoseTrainer` records the codec it trains with here.

        init: the weights' initialisation, one of :data:`INITIALISATIONS` ("keras", "torch" as the
            paper's Torch code, "pytorch" as the PyTorch ports).

    Outputs are named ``stack_1`` ... ``stack_N``, each (batch, height/4, width/4, J); the last one is
    the final prediction. Input images are float RGB scaled to [0, 1] (the PyTorch convention).
    """

    def __init__(
        self,
        num_stacks: int = 8,
        num_features: int = 256,
        num_modules: int = 1,
        num_joints: int | None = None,
        depth: int = 4,
        image_shape: Sequence[int] = (256, 256, 3),
        pose: str | PoseSpec | dict = "mpii",
        codec: HeatmapCodec | dict | str | None = None,
        init: str = "keras",
        **kwargs: Any,
    ) -> None:
        if init not in INITIALISATIONS:
            raise ValueError(f"init must be one of {INITIALISATIONS}, got {init!r}")
        spec = get_pose(pose)
        codec = get_codec(codec)
        if num_joints is None:
            num_joints = spec.num_joints
        elif num_joints != spec.num_joints:
            raise ValueError(
                f"num_joints={num_joints!r} does not match pose {spec.name!r} "
                f"({spec.num_joints} joints); pass the matching pose (e.g. pose='flic' for 11)"
            )
        shape = _check_arguments(
            num_stacks, num_features, num_modules, num_joints, depth, image_shape
        )
        # === Functional graph ===
        images = keras.Input(shape=shape, name="images")
        inter = apply_stem(images, num_features, init)
        outputs = []
        for i in range(1, num_stacks + 1):
            hg = apply_hourglass(inter, depth, num_features, num_modules, f"hg{i}", init)
            ll = apply_residuals(hg, num_features, num_modules, f"hg{i}_out", init)
            ll = _conv(ll, num_features, 1, f"hg{i}_lin_conv", init=init)
            ll = _batch_norm(ll, f"hg{i}_lin_bn", init)
            ll = layers.ReLU(name=f"hg{i}_lin_relu")(ll)
            # float32 heatmap heads under any mixed-precision policy (Keras' advice for outputs).
            heatmaps = _conv(ll, num_joints, 1, f"stack_{i}", dtype="float32", init=init)
            outputs.append(heatmaps)
            if i < num_stacks:
                merged_features = _conv(ll, num_features, 1, f"hg{i}_merge_features", init=init)
                merged_preds = _conv(heatmaps, num_features, 1, f"hg{i}_merge_preds", init=init)
                inter = layers.Add(name=f"hg{i}_merge")([inter, merged_features, merged_preds])
        super().__init__(inputs=images, outputs=outputs, **kwargs)

        # === Config ===
        self.num_stacks = num_stacks
        self.num_features = num_features
        self.num_modules = num_modules
        self.num_joints = num_joints
        self.depth = depth
        self.image_shape = shape
        self.pose = spec
        self.codec = codec

        self.init = init

    @property
    def heatmap_shape(self) -> tuple[int, int, int]:
        """(height, width, joints) of every stack's output."""
        h, w, _ = self.image_shape
        return (h // STEM_STRIDE, w // STEM_STRIDE, self.num_joints)

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "trainable": self.trainable,
            "num_stacks": self.num_stacks,
            "num_features": self.num_features,
            "num_modules": self.num_modules,
            "num_joints": self.num_joints,
            "depth": self.depth,
            "image_shape": list(self.image_shape),
            "pose": pose_config(self.pose),
            "codec": self.codec.to_config(),
            "init": self.init,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> StackedHourglass:
        if "pose" not in config:
            config = dict(config, pose=legacy_pose(config.get("num_joints", 16)))
        return cls(**config)


def legacy_pose(num_joints: int) -> str:
    """The pose of a model saved before models carried one: MPII for 16 joints, FLIC for 11.

    Only files written by older hgkeras versions reach this (with a warning); new models always
    name their pose.
    """
    import warnings

    known = {16: "mpii", 11: "flic"}
    if num_joints not in known:
        raise ValueError(
            f"this saved StackedHourglass predates pose specs and has {num_joints} joints, which "
            "is neither MPII (16) nor FLIC (11); rebuild it with pose=... and load its weights"
        )
    warnings.warn(
        f"the saved StackedHourglass has no pose spec (saved by an older hgkeras); assuming "
        f"{known[num_joints]!r} from its {num_joints} joints. Re-save the model to record it.",
        stacklevel=3,
    )
    return known[num_joints]


def compile_model(
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer | str | None = None,
    stack_weights: Sequence[float] | None = None,
    jit_compile: bool | str = "auto",
    **compile_kwargs: Any,
) -> keras.Model:
    """Compile ``model`` with one MSE loss per stack output (intermediate supervision).

    Args:
        model: a model whose outputs are the stacks' heatmaps (e.g. :class:`StackedHourglass`).
        optimizer: defaults to :func:`hgkeras.optimizers.make_optimizer`'s: Torch's RMSprop (lr
            2.5e-4, rho 0.99, eps 1e-8), the paper's settings.
        stack_weights: one loss weight per stack output, default all 1.0.
        jit_compile: passed to ``model.compile`` ("auto" lets Keras choose per backend).
        **compile_kwargs: further ``model.compile`` arguments (e.g. ``metrics``).

    Returns the same model, compiled.
    """
    output_names = list(model.output_names)
    num_outputs = len(output_names)
    if stack_weights is None:
        stack_weights = [1.0] * num_outputs
    stack_weights = [float(w) for w in stack_weights]
    if len(stack_weights) != num_outputs:
        raise ValueError(
            f"stack_weights must have one weight per stack output ({num_outputs}: "
            f"{output_names}), got {len(stack_weights)}"
        )
    if optimizer is None:
        optimizer = make_optimizer()
    model.compile(
        optimizer=optimizer,
        loss=[keras.losses.MeanSquaredError(name=f"{n}_mse") for n in output_names],
        loss_weights=stack_weights,
        jit_compile=jit_compile,
        **compile_kwargs,
    )
    return model


def count_macs(model: keras.Model) -> int:
    """Multiply-accumulates of one forward pass for one image (convolutions only, as in the paper's count)."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            kh, kw = layer.kernel_size
            cin = layer.kernel.shape[2]
            _, oh, ow, cout = layer.output.shape
            total += int(oh) * int(ow) * int(kh) * int(kw) * int(cin) * int(cout)
    return total


def count_params(model: keras.Model) -> tuple[int, int]:
    """(trainable, non-trainable) parameter counts."""
    trainable = sum(_size(v) for v in model.trainable_weights)
    non_trainable = sum(_size(v) for v in model.non_trainable_weights)
    return trainable, non_trainable


def _size(variable: Any) -> int:
    size = 1
    for dim in variable.shape:
        size *= int(dim)
    return size
