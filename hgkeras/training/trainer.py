"""``PoseTrainer``: trains a stacked hourglass from source crops, augmenting on the device.

The trainer wraps the hourglass (sharing its weights; saved or exported models are ``trainer.hourglass``)
and takes the training elements of :func:`hgkeras.data.pose_dataset`::

    {"image": uint8 (B, S, S, 3) source crop, "joints": float32 (B, J, 2) source-crop pixels,
     "visible": float32 (B, J)}

In ``call`` it draws augmentation parameters, warps and colour-jitters the images to the hourglass
input size, moves the joints with the same map and renders their targets through the heatmap codec
(:meth:`hgkeras.codec.HeatmapCodec.encode`; one target for every stack), and runs the hourglass.
``compute_loss`` sums the per-stack MSE (weighted) and logs
``stack_1_loss`` ... next to ``loss``. Everything is ``keras.ops``, so ``fit`` works under TensorFlow,
JAX and PyTorch.

Under a mixed-precision policy the trainer itself stays float32 (coordinates, visibility, targets and
the loss are never autocast); only the hourglass computes in the reduced dtype. The augmentation of a
training step is a pure function of ``seed``, the trainer's step counter and the sample's position in
the global batch, so a resumed run draws what the uninterrupted run would have drawn, and under
``tf.distribute`` every replica draws its own slice of the global batch's parameters.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence

import keras
from keras import ops

from hgkeras.codec import HeatmapCodec, codec_of, get_codec
from hgkeras.data import augment
from hgkeras.data.augment import Augmentation
from hgkeras.data.pipeline import SOURCE_MARGIN
from hgkeras.optimizers import make_optimizer
from hgkeras.spec import pose_of


def _replica_position():
    """(this replica's index, replicas in sync) under a ``tf.distribute`` strategy, else (0, 1)."""
    if keras.backend.backend() != "tensorflow":
        return 0, 1
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None:  # cross-replica context
        return 0, tf.distribute.get_strategy().num_replicas_in_sync
    replicas = context.num_replicas_in_sync
    if replicas == 1:
        return 0, 1
    return context.replica_id_in_sync_group, replicas


@keras.saving.register_keras_serializable(package="hgkeras")
class PoseTrainer(keras.Model):
    """A training model around ``hourglass`` that augments and renders targets inside ``call``.

    Args:
        hourglass: a model mapping (B, H, W, 3) images in [0, 1] to a list of per-stack heatmaps.
        augment: apply random rotation/scale/flip/colour in training; otherwise only the centre crop.
        codec: the heatmap codec that renders the targets (:class:`hgkeras.codec.HeatmapCodec`, its
            config or a decoder name); default the hourglass' own. The hourglass records it (its
            ``codec``, saved in its config), so the trained model decodes as it was trained.
        sigma: if given, the codec's target Gaussian standard deviation in heatmap pixels.
        flip_permutation: left/right joint swap; default from the hourglass' pose spec.
        source_margin: person-box sides shown by the source crop (must match ``pose_dataset``).
        seed: seed of the augmentation random stream.
        **augment_options: fields of :class:`hgkeras.data.augment.Augmentation` (``rotation``,
            ``rotation_limit``, ``scale``, ...); the others keep the Torch code's law.
    """

    def __init__(
        self,
        hourglass: keras.Model,
        *,
        augment: bool = True,
        codec: HeatmapCodec | dict | str | None = None,
        sigma: float | None = None,
        flip_permutation: Sequence[int] | None = None,
        source_margin: float = SOURCE_MARGIN,
        seed: int | None = None,
        name: str = "pose_trainer",
        **augment_options,
    ) -> None:
        # float32 whatever the global policy: Keras would otherwise autocast the float inputs
        # (joint coordinates, visibility) to the compute dtype (a joint at 301.3 px -> 302 in bf16).
        super().__init__(name=name, dtype="float32")
        self.seed = seed
        self.hourglass = hourglass
        input_shape = hourglass.input_shape
        outputs = hourglass.output_shape
        if not isinstance(outputs, list):
            outputs = [outputs]
        if input_shape[1] is None or outputs[0][1] is None:
            raise ValueError("PoseTrainer needs an hourglass with a fixed input size")
        self.input_size = int(input_shape[1])
        self.heatmap_size = int(outputs[0][1])
        self.num_joints = int(outputs[0][-1])
        self.num_stacks = len(outputs)
        self.augment = bool(augment)
        codec = codec_of(hourglass) if codec is None else get_codec(codec)
        if sigma is not None:
            codec = HeatmapCodec(codec.decoder, sigma)
        self.codec = codec
        hourglass.codec = codec  # the model records the targets it is trained on
        self.source_margin = float(source_margin)
        if flip_permutation is None:
            flip_permutation = pose_of(hourglass).flip_permutation
        self.flip_permutation = [int(i) for i in flip_permutation]
        unknown = set(augment_options) - {f.name for f in dataclasses.fields(Augmentation)}
        if unknown:
            raise TypeError(f"unknown augmentation options: {sorted(unknown)}")
        #: The law of the random augmentation (:class:`hgkeras.data.augment.Augmentation`).
        self.augmentation = Augmentation(**augment_options)
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.augment_step = self.add_weight(
            shape=(), dtype="int32", initializer="zeros", trainable=False,
            aggregation="only_first_replica", name="augment_step",
        )  # fmt: skip
        self.stack_trackers = [
            keras.metrics.Mean(name=f"stack_{i + 1}_loss") for i in range(self.num_stacks)
        ]
        self.stack_weights = [1.0] * self.num_stacks

    def compile(
        self,
        optimizer: keras.optimizers.Optimizer | str | None = None,
        stack_weights: Sequence[float] | None = None,
        jit_compile: bool | str = "auto",
        **kwargs,
    ) -> None:
        """Compile; by default with Torch's RMSprop (lr 2.5e-4, rho 0.99, eps 1e-8), the paper's.

        When the hourglass computes in float16 (``mixed_float16``) the optimizer is wrapped in
        Keras' ``LossScaleOptimizer`` (the trainer itself stays float32, so Keras would not do it).
        """
        if stack_weights is not None:
            if len(stack_weights) != self.num_stacks:
                raise ValueError(
                    f"stack_weights must have {self.num_stacks} values (one per stack), "
                    f"got {len(stack_weights)}"
                )
            self.stack_weights = [float(w) for w in stack_weights]
        if optimizer is None:
            optimizer = make_optimizer()
        elif isinstance(optimizer, str):
            optimizer = keras.optimizers.get(optimizer)
        scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        if self.hourglass.dtype_policy.name == "mixed_float16" and not scaled:
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        super().compile(optimizer=optimizer, jit_compile=jit_compile, **kwargs)

    def _check_inputs(self, inputs) -> None:
        if not isinstance(inputs, dict) or not {"image", "joints", "visible"} <= set(inputs):
            raise ValueError(
                "PoseTrainer expects dicts with 'image', 'joints' and 'visible' "
                "(pose_dataset(..., training=True)); got "
                + (str(sorted(inputs)) if isinstance(inputs, dict) else type(inputs).__name__)
            )
        shape = tuple(inputs["joints"].shape)
        if len(shape) != 3 or shape[1] != self.num_joints or shape[2] != 2:
            raise ValueError(
                f"'joints' must be (B, {self.num_joints}, 2) for this hourglass, got {shape}"
            )

    def prepare(self, inputs, training: bool = False):
        """(images (B, H, W, 3) in [0, 1], targets (B, h, w, J)) for a training batch."""
        self._check_inputs(inputs)
        images = inputs["image"]
        source_size = int(images.shape[1])
        batch = ops.shape(images)[0]
        if training and self.augment:
            params = self._sample_params(batch)
        else:
            params = augment.identity_params(batch)
        m_in = augment.augmentation_matrices(
            params, source_size, self.source_margin, self.input_size
        )
        x = augment.warp_images(images, m_in, self.input_size) / 255.0
        if training and self.augment:
            x = augment.color_jitter(x, params["color"])
        joints, visible = augment.transform_joints(
            inputs["joints"], inputs["visible"], m_in, params["flip"], self.flip_permutation
        )
        targets = self.codec.encode(joints, visible, self.input_size, self.heatmap_size)
        return x, targets

    def _sample_params(self, batch) -> dict:
        """Augmentation parameters of this replica's part of the global batch for this step."""
        # A pure function of (seed, training step): resumed runs continue the same stream. The step
        # counter is the trainer's own variable (saved with its weights): the optimizer's is not
        # part of the forward pass's state under JAX.
        step = ops.convert_to_tensor(self.augment_step)
        self.augment_step.assign(step + 1)
        state = self.seed_generator.state
        base = 0 if self.seed is None else int(self.seed)
        state.assign(ops.cast(ops.stack([base, step * 8]), state.dtype))
        replica, replicas = _replica_position()
        if replicas == 1:
            return augment.sample_params(batch, self.seed_generator, self.augmentation)
        # Every replica draws the global batch's parameters from the same seed and keeps its slice,
        # so replicas differ and the global batch is augmented as on one device.
        params = augment.sample_params(batch * replicas, self.seed_generator, self.augmentation)
        index = ops.arange(batch, dtype="int32") + replica * ops.cast(batch, "int32")
        return {key: ops.take(value, index, axis=0) for key, value in params.items()}

    def call(self, inputs, training: bool = False):
        x, targets = self.prepare(inputs, training=training)
        heatmaps = self.hourglass(x, training=training)
        if not isinstance(heatmaps, (list, tuple)):
            heatmaps = [heatmaps]
        return {"heatmaps": list(heatmaps), "targets": targets}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Weighted sum over stacks of the mean squared error against the shared targets.

        Under ``tf.distribute`` the per-replica loss is divided by the replica count (as Keras' own
        ``compute_loss`` does), so the summed gradients are those of the global batch's mean.
        """
        targets = ops.cast(y_pred["targets"], "float32")
        total = 0.0
        for tracker, weight, heatmap in zip(
            self.stack_trackers, self.stack_weights, y_pred["heatmaps"], strict=True
        ):
            loss = ops.mean(ops.square(ops.cast(heatmap, "float32") - targets))
            tracker.update_state(loss)
            total = total + weight * loss
        if self.losses:
            total = total + ops.sum(ops.stack([ops.cast(v, "float32") for v in self.losses]))
        _, replicas = _replica_position()
        if replicas > 1:
            total = total * (1.0 / replicas)
        return total

    def load_own_variables(self, store) -> None:
        """Load the step counter; weights saved before it existed restart the augmentation stream."""
        if len(store.keys()) == 0:
            message = (
                f"{self.name}: these weights were saved before PoseTrainer had its augmentation "
                "step counter; training goes on with the augmentation stream restarted from its "
                "first step (the draws differ from those of an uninterrupted run)"
            )
            warnings.warn(message, stacklevel=2)
            self.augment_step.assign(0)
            return
        super().load_own_variables(store)

    def get_config(self) -> dict:
        return {
            "name": self.name,
            "hourglass": keras.saving.serialize_keras_object(self.hourglass),
            "augment": self.augment,
            "codec": self.codec.to_config(),
            "flip_permutation": self.flip_permutation,
            "source_margin": self.source_margin,
            "seed": self.seed,
            **self.augmentation.to_dict(),
        }

    def build_from_config(self, config: dict) -> None:
        """Nothing to build: the wrapped hourglass is built when the trainer is created."""
        self.built = True

    def get_compile_config(self) -> dict | None:
        config = super().get_compile_config()
        if config is not None:
            config = {**config, "stack_weights": list(self.stack_weights)}
        return config

    def compile_from_config(self, config: dict) -> None:
        config = dict(config)
        optimizer = config.get("optimizer")
        if optimizer is not None:
            optimizer = keras.optimizers.deserialize(optimizer)
        self.compile(
            optimizer=optimizer,
            stack_weights=config.get("stack_weights"),
            jit_compile=config.get("jit_compile", "auto"),
        )
        if self.built and optimizer is not None:
            self.optimizer.build(self.trainable_variables)

    @classmethod
    def from_config(cls, config: dict) -> PoseTrainer:
        config = dict(config)
        hourglass = keras.saving.deserialize_keras_object(config.pop("hourglass"))
        return cls(hourglass, **config)
