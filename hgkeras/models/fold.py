"""An inference copy of a trained model with each ``conv -> BatchNorm`` pair folded into the conv.

At inference a batch norm is a per-channel affine map ``y = s * x + t`` with
``s = gamma / sqrt(moving_variance + eps)`` and ``t = beta - s * moving_mean``. When it directly
follows a convolution (whose output nothing else reads) it folds into that convolution's kernel and
bias: ``W' = s * W``, ``b' = s * (b - moving_mean) + beta``. In the hourglass this removes two of the
three batch norms of every residual module (those after ``conv1`` and ``conv2``) plus the stem's and
each stack head's, and lets oneDNN/cuDNN fuse the ReLU into the convolution. The pre-activation batch
norm at the start of each residual module reads a sum, not a convolution, and stays.

The copy gives the same outputs as the model in inference mode (to float rounding) and is meant only
for inference: it has no batch norms left to train. Backend-neutral (numpy weights, Keras cloning).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import layers


@keras.saving.register_keras_serializable(package="hgkeras")
class FoldedBatchNorm(layers.Layer):
    """Stands where a batch norm was folded into the preceding convolution: passes its input on."""

    def call(self, inputs, training=None, mask=None):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape


class _Probe(layers.Layer):
    """Stands for a layer while :func:`call_graph` re-traces a model: outputs of the right
    structure and shapes, no weights, never run."""

    def __init__(self, original: layers.Layer) -> None:
        super().__init__(name=original.name)
        self._specs = original.output

    def compute_output_spec(self, *args, **kwargs):
        return keras.tree.map_structure(
            lambda t: keras.KerasTensor(t.shape, dtype=t.dtype), self._specs
        )


def call_graph(model) -> tuple[dict[str, list[list[str]]], dict[str, int]]:
    """``{layer name: [the layers each of its calls reads]}`` and ``{layer name: how many calls and
    model outputs read it}`` of a functional model (re-traced with public Keras API only)."""
    calls: dict[str, list[list[str]]] = {}
    readers: dict[str, int] = {}
    producers: dict[int, str] = {}

    def call(layer, *args, **kwargs):
        sources = [
            producers[id(t)]
            for t in keras.tree.flatten((args, kwargs))
            if isinstance(t, keras.KerasTensor) and id(t) in producers
        ]
        calls.setdefault(layer.name, []).append(sources)
        for name in sources:
            readers[name] = readers.get(name, 0) + 1
        outputs = layer(*args, **kwargs)
        for tensor in keras.tree.flatten(outputs):
            producers[id(tensor)] = layer.name
        return outputs

    traced = keras.models.clone_model(model, clone_function=_Probe, call_function=call)
    for tensor in traced.outputs:
        name = producers.get(id(tensor))
        if name is not None:
            readers[name] = readers.get(name, 0) + 1
    return calls, readers


def foldable_pairs(model) -> dict[str, Any]:
    """``{conv name: batch norm layer}`` for every batch norm that can fold into its convolution.

    A pair folds when the batch norm normalises the last (channel) axis of a channels-last,
    ungrouped, activation-free convolution that is called once and whose output only the batch
    norm reads.
    """
    calls, readers = call_graph(model)
    pairs = {}
    for layer in model.layers:
        if not isinstance(layer, layers.BatchNormalization):
            continue
        sources = calls.get(layer.name, [])
        if len(sources) != 1 or len(sources[0]) != 1:  # called once, on one tensor
            continue
        conv = model.get_layer(sources[0][0])
        if not isinstance(conv, (layers.Conv1D, layers.Conv2D, layers.Conv3D)) or isinstance(
            conv, (layers.Conv1DTranspose, layers.Conv2DTranspose, layers.Conv3DTranspose)
        ):
            continue
        axis = layer.axis if layer.axis >= 0 else layer.axis + len(layer.input.shape)
        if (
            axis != len(layer.input.shape) - 1
            or conv.data_format != "channels_last"
            or getattr(conv, "groups", 1) != 1
            or conv.activation not in (None, keras.activations.linear)
            or len(calls.get(conv.name, [])) != 1
            or readers.get(conv.name, 0) != 1
            or getattr(layer, "renorm", False)
        ):
            continue
        pairs[conv.name] = layer
    return pairs


def folded_conv_weights(conv, norm) -> tuple[np.ndarray, np.ndarray]:
    """The kernel and bias of ``norm(conv(x))`` in inference mode, as one convolution."""

    def values(variable) -> np.ndarray:
        return np.asarray(keras.ops.convert_to_numpy(variable), dtype=np.float64)

    kernel = values(conv.kernel)
    filters = kernel.shape[-1]
    bias = values(conv.bias) if conv.use_bias else np.zeros(filters)
    gamma = values(norm.gamma) if norm.scale else np.ones(filters)
    beta = values(norm.beta) if norm.center else np.zeros(filters)
    mean, variance = values(norm.moving_mean), values(norm.moving_variance)
    scale = gamma / np.sqrt(variance + norm.epsilon)
    return kernel * scale, (bias - mean) * scale + beta


def fold_batch_norms(model) -> keras.Model:
    """A functional copy of ``model`` for inference, each foldable ``conv -> BatchNorm`` as one conv.

    ``model`` is any functional Keras model (e.g. :class:`hgkeras.StackedHourglass`); the copy has the
    same inputs, outputs and layer names, holds its own weights, and returns the same values as
    ``model(x, training=False)`` to float rounding. Batch norms that follow something other than a
    lone convolution are kept. A model with nothing to fold is still copied. The copy keeps the
    model's pose spec (``model.pose``) and heatmap codec (``model.codec``) when it has them.
    """
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"fold_batch_norms needs a functional keras model, got {type(model).__name__}"
        )
    pairs = foldable_pairs(model)
    folded_norms = {norm.name for norm in pairs.values()}

    def clone(layer):
        if layer.name in folded_norms:
            return FoldedBatchNorm(name=layer.name, dtype=layer.dtype_policy.name)
        config = layer.get_config()
        if layer.name in pairs:
            config["use_bias"] = True
        return layer.__class__.from_config(config)

    try:
        copy = keras.models.clone_model(model, clone_function=clone)
    except ValueError as error:
        raise TypeError(f"fold_batch_norms needs a functional keras model: {error}") from error
    for new in copy.layers:
        if not new.weights:  # inputs, activations, folded norms
            continue
        old = model.get_layer(new.name)
        if new.name in pairs:
            new.set_weights(list(folded_conv_weights(old, pairs[new.name])))
        else:
            new.set_weights(old.get_weights())
    for attribute in ("pose", "codec"):
        if getattr(model, attribute, None) is not None:
            setattr(copy, attribute, getattr(model, attribute))
    return copy
