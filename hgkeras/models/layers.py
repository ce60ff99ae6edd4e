"""Layers of the model that need more than Keras' stock versions.

Under the torch backend Keras computes a channels-last convolution or pooling by copying the input
to channels-first, running the kernel and copying the result back; with ``BatchNorm`` built from
element-wise ops that is most of the hourglass' time on CPU. The subclasses here run PyTorch's
kernels on a channels-first *view* of the channels-last tensor (PyTorch's ``channels_last`` memory
format, which oneDNN computes natively), so nothing is copied. They keep the stock layers' class
names, variables and configs (``.keras`` files are unchanged) and are the stock layers under every
other backend.
"""

from __future__ import annotations

import keras
from keras import layers, ops


def _torch_channels_first(x):
    """An NHWC torch tensor as NCHW without a copy (PyTorch's channels_last memory format)."""
    return x.permute(0, 3, 1, 2)


def _torch_channels_last(x):
    """The NHWC view of an NCHW torch tensor (contiguous when ``x`` is channels_last)."""
    return x.permute(0, 2, 3, 1)


@keras.saving.register_keras_serializable(package="hgkeras")
class Conv2D(layers.Conv2D):
    """``keras.layers.Conv2D`` with faster paths under torch and JAX, the stock layer otherwise.

    * torch: convolves a channels-last view (no layout copies), with the bias fused;
    * JAX: a 1x1, stride-1 convolution is one ``(n*h*w, cin) x (cin, cout)`` matrix product, which
      XLA:CPU runs about 4x faster than its convolution for these shapes (and the same on GPU).
    """

    def call(self, inputs):
        backend = keras.backend.backend()
        plain = self.data_format == "channels_last" and self.groups == 1 and not self.lora_enabled
        if backend == "jax" and plain and self._is_pointwise():
            return self._matmul_call(inputs)
        if (
            backend != "torch"
            or not plain
            or (self.padding == "same" and any(s != 1 for s in self.strides))
            or self.padding not in ("same", "valid")
        ):
            return super().call(inputs)
        import torch.nn.functional as F

        kernel = ops.convert_to_tensor(self.kernel).permute(3, 2, 0, 1)  # (out, in, kh, kw)
        bias = ops.convert_to_tensor(self.bias) if self.use_bias else None
        outputs = F.conv2d(
            _torch_channels_first(ops.convert_to_tensor(inputs)),
            kernel,
            bias,
            stride=tuple(self.strides),
            padding=self.padding,
            dilation=tuple(self.dilation_rate),
        )
        outputs = _torch_channels_last(outputs)
        if self.activation is not None:
            return self.activation(outputs)
        return outputs

    def _is_pointwise(self) -> bool:
        return (
            tuple(self.kernel_size) == (1, 1)
            and tuple(self.strides) == (1, 1)
            and tuple(self.dilation_rate) == (1, 1)
        )

    def _matmul_call(self, inputs):
        _, height, width, channels = inputs.shape
        kernel = ops.reshape(self.kernel, (channels, self.filters))
        outputs = ops.matmul(ops.reshape(inputs, (-1, channels)), kernel)
        if self.use_bias:
            outputs = outputs + self.bias
        outputs = ops.reshape(outputs, (-1, height, width, self.filters))
        if self.activation is not None:
            return self.activation(outputs)
        return outputs


@keras.saving.register_keras_serializable(package="hgkeras")
class MaxPooling2D(layers.MaxPooling2D):
    """``keras.layers.MaxPooling2D`` that, under torch, pools a channels-last view (no copies)."""

    def call(self, inputs):
        if (
            keras.backend.backend() != "torch"
            or self.data_format != "channels_last"
            or self.padding != "valid"
        ):
            return super().call(inputs)
        import torch.nn.functional as F

        outputs = F.max_pool2d(
            _torch_channels_first(ops.convert_to_tensor(inputs)),
            kernel_size=tuple(self.pool_size),
            stride=tuple(self.strides),
        )
        return _torch_channels_last(outputs)


@keras.saving.register_keras_serializable(package="hgkeras")
class BatchNorm(layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` that uses the framework's fused kernel where it has one.

    Keras' generic implementation builds batch norm from element-wise ops (moments, then a multiply
    and an add, each with its own gradient). Under torch that costs more than the hourglass'
    convolutions on CPU; under TensorFlow it is about a third of a training step. This layer calls
    PyTorch's ``batch_norm`` under torch and TensorFlow's ``FusedBatchNormV3`` under TensorFlow
    (oneDNN on CPU and cuDNN on GPU, which also fuse the ReLU that follows), with the same outputs,
    gradients and moving statistics (Keras' biased-variance update) as the stock layer. Under JAX
    (where XLA fuses the element-wise ops itself) it is the stock layer.
    """

    def call(self, inputs, training=None, mask=None):
        backend = keras.backend.backend()
        if (
            mask is None
            and not (self.renorm or self.synchronized)
            and self.scale
            and self.center
            and self.axis in (-1, len(inputs.shape) - 1)
        ):
            training = bool(training and self.trainable)
            if backend == "torch":
                return self._torch_call(inputs, training)
            if backend == "tensorflow" and len(inputs.shape) == 4:
                return self._tensorflow_call(inputs, training)
        return super().call(inputs, training=training, mask=mask)

    def _tensorflow_call(self, inputs, training: bool):
        import tensorflow as tf

        x = inputs
        if x.dtype not in (tf.float16, tf.bfloat16, tf.float32):
            x = tf.cast(x, tf.float32)
        gamma = tf.cast(ops.convert_to_tensor(self.gamma), tf.float32)
        beta = tf.cast(ops.convert_to_tensor(self.beta), tf.float32)
        if training:
            outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                x, gamma, beta, epsilon=self.epsilon, is_training=True
            )[:3]
            # FusedBatchNormV3 returns the unbiased variance; Keras' moving average uses the biased one.
            count = tf.cast(
                tf.size(x, out_type=tf.int64) // tf.shape(x, out_type=tf.int64)[-1], tf.float32
            )
            variance = variance * tf.maximum(count - 1.0, 0.0) / tf.maximum(count, 1.0)
            m = self.momentum
            self.moving_mean.assign(
                tf.cast(ops.convert_to_tensor(self.moving_mean), tf.float32) * m + mean * (1.0 - m)
            )
            self.moving_variance.assign(
                tf.cast(ops.convert_to_tensor(self.moving_variance), tf.float32) * m
                + variance * (1.0 - m)
            )
        else:
            outputs = tf.compat.v1.nn.fused_batch_norm(
                x,
                gamma,
                beta,
                mean=tf.cast(ops.convert_to_tensor(self.moving_mean), tf.float32),
                variance=tf.cast(ops.convert_to_tensor(self.moving_variance), tf.float32),
                epsilon=self.epsilon,
                is_training=False,
            )[0]
        return tf.cast(outputs, self.compute_dtype)

    def _torch_call(self, inputs, training: bool):
        import torch
        import torch.nn.functional as F

        # A float16/bfloat16 input stays in its dtype (PyTorch's batch_norm takes reduced-precision
        # inputs with float32 scale, offset and statistics and accumulates in float32), so the layer
        # keeps reduced-precision speed; the statistics are float32.
        x = ops.convert_to_tensor(inputs)
        if x.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            x = x.float()
        stats = torch.float64 if x.dtype == torch.float64 else torch.float32
        ndim = len(x.shape)
        to_first = (0, ndim - 1, *range(1, ndim - 1))
        to_last = (0, *range(2, ndim), 1)
        gamma = ops.cast(ops.convert_to_tensor(self.gamma), stats)
        beta = ops.cast(ops.convert_to_tensor(self.beta), stats)
        if training:
            # momentum 1 makes torch store the batch's mean and unbiased variance in these buffers
            mean = torch.zeros(x.shape[-1], dtype=stats, device=x.device)
            variance = torch.ones(x.shape[-1], dtype=stats, device=x.device)
            outputs = F.batch_norm(
                x.permute(to_first), mean, variance, gamma, beta, training=True, momentum=1.0,
                eps=self.epsilon,
            )  # fmt: skip
            with torch.no_grad():
                count = x.numel() // x.shape[-1]
                variance = variance * (max(count - 1, 0) / max(count, 1))  # Keras: biased
                m = self.momentum
                moving_mean = ops.convert_to_tensor(self.moving_mean)
                moving_variance = ops.convert_to_tensor(self.moving_variance)
                self.moving_mean.assign(moving_mean * m + mean.to(moving_mean.dtype) * (1.0 - m))
                self.moving_variance.assign(
                    moving_variance * m + variance.to(moving_variance.dtype) * (1.0 - m)
                )
        else:
            outputs = F.batch_norm(
                x.permute(to_first),
                ops.cast(ops.convert_to_tensor(self.moving_mean), stats),
                ops.cast(ops.convert_to_tensor(self.moving_variance), stats),
                gamma,
                beta,
                training=False,
                eps=self.epsilon,
            )
        return ops.cast(outputs.permute(to_last), self.compute_dtype)


@keras.saving.register_keras_serializable(package="hgkeras")
class NearestUpsample2x(layers.Layer):
    """Nearest-neighbour 2x upsampling of an NHWC map, given as a broadcastable view.

    Returns the ``(n, h, w, c)`` input reshaped to ``(n, h, 1, w, 1, c)``: broadcast against a
    ``(n, h, 2, w, 2, c)`` view of a full-size map it *is* the upsampled map, but no upsampled copy
    is ever written to memory. :class:`UpsampleAdd` consumes it; the pair computes
    ``layers.Add()([a, layers.UpSampling2D(2)(b)])`` with one read of each input and one write.
    """

    def call(self, inputs):
        height, width, channels = inputs.shape[1], inputs.shape[2], inputs.shape[3]
        return ops.reshape(inputs, (-1, height, 1, width, 1, channels))

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(f"{self.name}: expects an (n, h, w, c) map, got shape {input_shape}")
        n, height, width, channels = input_shape
        return (n, height, 1, width, 1, channels)


@keras.saving.register_keras_serializable(package="hgkeras")
class UpsampleAdd(layers.Layer):
    """``a + upsample2x(b)`` for an ``(n, 2h, 2w, c)`` map ``a`` and ``b`` from :class:`NearestUpsample2x`.

    One broadcasting add on a ``(n, h, 2, w, 2, c)`` view of ``a``; its gradient with respect to
    ``b`` is one sum over the broadcast axes. Backend-neutral (``keras.ops``).
    """

    def call(self, inputs):
        full, half = inputs
        _, height, _, width, _, channels = half.shape
        full = ops.reshape(full, (-1, height, 2, width, 2, channels))
        return ops.reshape(full + half, (-1, 2 * height, 2 * width, channels))

    def compute_output_shape(self, input_shape):
        full_shape, half_shape = (tuple(shape) for shape in input_shape)
        if len(full_shape) != 4 or len(half_shape) != 6 or half_shape[2] != 1 or half_shape[4] != 1:
            raise ValueError(
                f"{self.name}: expects an (n, 2h, 2w, c) map and an (n, h, 1, w, 1, c) view from "
                f"NearestUpsample2x, got shapes {full_shape} and {half_shape}"
            )
        _, height, _, width, _, channels = half_shape
        if full_shape[1:] != (2 * height, 2 * width, channels):
            raise ValueError(
                f"{self.name}: the full-size map {full_shape} is not twice the size of the "
                f"upsampled one (h, w, c) = {(height, width, channels)}"
            )
        return full_shape
