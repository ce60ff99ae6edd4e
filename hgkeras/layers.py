"""Layers of the model that need more than Keras' stock versions."""

from __future__ import annotations

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="hgkeras")
class BatchNorm(layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` that uses PyTorch's fused kernel under the torch backend.

    Keras' generic implementation builds batch norm from a dozen element-wise torch ops, each with
    its own autograd node; on CPU that costs more than the convolutions of the hourglass. This layer
    gives the same outputs, gradients and moving statistics (Keras' biased-variance update), and is
    the stock layer under every other backend.
    """

    def call(self, inputs, training=None, mask=None):
        if (
            keras.backend.backend() != "torch"
            or mask is not None
            or self.renorm
            or self.synchronized
            or not (self.scale and self.center)
            or self.axis not in (-1, len(inputs.shape) - 1)
        ):
            return super().call(inputs, training=training, mask=mask)
        return self._torch_call(inputs, bool(training and self.trainable))

    def _torch_call(self, inputs, training: bool):
        import torch
        import torch.nn.functional as F

        x = ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
        ndim = len(x.shape)
        to_first = (0, ndim - 1, *range(1, ndim - 1))
        to_last = (0, *range(2, ndim), 1)
        gamma = ops.cast(ops.convert_to_tensor(self.gamma), x.dtype)
        beta = ops.cast(ops.convert_to_tensor(self.beta), x.dtype)
        if training:
            outputs = F.batch_norm(
                x.permute(to_first), None, None, gamma, beta, training=True, eps=self.epsilon
            )
            with torch.no_grad():
                variance, mean = torch.var_mean(
                    x.detach(), dim=tuple(range(ndim - 1)), correction=0
                )
                m = self.momentum
                self.moving_mean.assign(
                    ops.convert_to_tensor(self.moving_mean) * m + mean * (1.0 - m)
                )
                self.moving_variance.assign(
                    ops.convert_to_tensor(self.moving_variance) * m + variance * (1.0 - m)
                )
        else:
            outputs = F.batch_norm(
                x.permute(to_first),
                ops.cast(ops.convert_to_tensor(self.moving_mean), x.dtype),
                ops.cast(ops.convert_to_tensor(self.moving_variance), x.dtype),
                gamma,
                beta,
                training=False,
                eps=self.epsilon,
            )
        return ops.cast(outputs.permute(to_last), self.compute_dtype)
