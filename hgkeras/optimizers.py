"""The optimisers of hgkeras, made in one place by :func:`make_optimizer`.

:class:`TorchRMSprop` is RMSprop as Torch's ``optim.rmsprop`` computes it, the optimiser of the
code that produced the paper's numbers (``docs/method.md`` "Optimiser and schedule")::

    v = rho * v + (1 - rho) * g**2
    x = x - lr * g / (sqrt(v) + epsilon)

Keras' ``RMSprop`` adds epsilon inside the root (``lr * g / sqrt(v + epsilon)``): with epsilon 1e-8 its
denominator never falls below 1e-4, so parameters with gradients below about 1e-4 move less than
under Torch's rule (0.06x as far at 1e-5). ``make_optimizer("keras_rmsprop")`` keeps Keras' rule for
comparison (``benchmarks/recipes.py``).
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

#: The Torch code's RMSprop settings (pose-hg-train src/opts.lua): learning rate, alpha, epsilon.
LEARNING_RATE = 2.5e-4
RHO = 0.99
EPSILON = 1e-8


@keras.saving.register_keras_serializable(package="hgkeras")
class TorchRMSprop(keras.optimizers.Optimizer):
    """RMSprop with epsilon added after the square root (Torch ``optim.rmsprop``), no momentum.

    Args:
        learning_rate: a float or a ``keras.optimizers.schedules.LearningRateSchedule``.
        rho: decay of the mean square (Torch's ``alpha``).
        epsilon: added to the root of the mean square.
        **kwargs: the base optimiser's arguments (``weight_decay``, ``clipnorm``, ``name``, ...).
    """

    def __init__(
        self,
        learning_rate: Any = LEARNING_RATE,
        rho: float = RHO,
        epsilon: float = EPSILON,
        name: str = "torch_rmsprop",
        **kwargs: Any,
    ) -> None:
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if not 0.0 <= rho < 1.0:
            raise ValueError(f"rho must be in [0, 1), got {rho!r}")
        if not epsilon >= 0.0:
            raise ValueError(f"epsilon must be >= 0, got {epsilon!r}")
        self.rho = float(rho)
        self.epsilon = float(epsilon)

    def build(self, var_list) -> None:
        if self.built:
            return
        super().build(var_list)
        self._mean_squares = self.add_optimizer_variables(var_list, "mean_square")

    def update_step(self, gradient, variable, learning_rate) -> None:
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        mean_square = self._mean_squares[self._get_variable_index(variable)]
        updated = ops.add(
            ops.multiply(self.rho, mean_square), ops.multiply(1.0 - self.rho, ops.square(gradient))
        )
        self.assign(mean_square, updated)
        denominator = ops.add(ops.sqrt(updated), self.epsilon)
        self.assign_sub(variable, ops.divide(ops.multiply(lr, gradient), denominator))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "rho": self.rho, "epsilon": self.epsilon}


#: Names :func:`make_optimizer` knows (``train.py --optimizer``), with what each one is.
OPTIMIZERS = {
    "rmsprop": "Torch's RMSprop (epsilon after the root; rho 0.99, epsilon 1e-8)",
    "adam": "Adam (beta 0.9/0.999, epsilon 1e-8 as torch.optim.Adam)",
    "keras_rmsprop": "Keras' RMSprop (epsilon inside the root; rho 0.99, epsilon 1e-8), for comparison",
}


def make_optimizer(name: str = "rmsprop", learning_rate: Any = LEARNING_RATE):
    """A fresh optimiser ``name`` (one of :data:`OPTIMIZERS`) at ``learning_rate``."""
    if name == "rmsprop":
        return TorchRMSprop(learning_rate=learning_rate)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate=learning_rate, epsilon=EPSILON)
    if name == "keras_rmsprop":
        return keras.optimizers.RMSprop(learning_rate=learning_rate, rho=RHO, epsilon=EPSILON)
    raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")
