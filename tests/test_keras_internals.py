"""The private Keras hooks that hgkeras.training._keras_internals overrides still exist as used.

A Keras upgrade that renames or re-signs them must fail here, loudly, instead of silently skipping
the multi-worker workarounds (tests/test_train.py runs them for real with two worker processes).
"""

from __future__ import annotations

import importlib
import inspect

import keras
import pytest

from hgkeras.training._keras_internals import HOOKS, multi_worker_trainer_class


@pytest.mark.parametrize("path, method, parameters", HOOKS)
def test_private_keras_hooks_exist_with_their_signature(path, method, parameters):
    module, name = path.rsplit(".", 1)
    owner = getattr(importlib.import_module(module), name)
    assert hasattr(owner, method), f"Keras {keras.__version__}: {path}.{method} is gone"
    signature = inspect.signature(getattr(owner, method))
    assert list(signature.parameters)[1:] == list(parameters), (
        f"Keras {keras.__version__}: {path}.{method}{signature} changed"
    )


def test_tensorflow_models_use_the_hooked_trainer():
    from keras.src.backend.tensorflow.trainer import TensorFlowTrainer

    from hgkeras.training.trainer import PoseTrainer

    assert issubclass(PoseTrainer, TensorFlowTrainer)
    hooked = multi_worker_trainer_class(PoseTrainer)
    assert issubclass(hooked, PoseTrainer) and hooked.__name__ == "MultiWorkerPoseTrainer"
    assert "_maybe_symbolic_build" in vars(hooked) and "train_step" in vars(hooked)


def test_start_fit_at_epoch_moves_the_first_epoch_of_fit():
    from hgkeras.training._keras_internals import start_fit_at_epoch

    class StartAtTwo(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            start_fit_at_epoch(self.model, 2)

    class Epochs(keras.callbacks.Callback):
        seen: list[int] = []

        def on_epoch_begin(self, epoch, logs=None):
            self.seen.append(epoch)

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x = keras.ops.convert_to_numpy(keras.ops.ones((4, 2)))
    model.fit(x, x[:, :1], epochs=4, verbose=0, callbacks=[StartAtTwo(), Epochs()])
    assert Epochs.seen == [2, 3]
