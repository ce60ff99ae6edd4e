"""The only place where hgkeras relies on private Keras behaviour (Keras 3.15).

``tests/test_keras_internals.py`` checks that each hook still exists and acts as used here, so a
Keras upgrade that changes one fails loudly instead of silently training differently.

* :func:`start_fit_at_epoch`: a resumed run's ``fit`` starts after the backed-up epoch. Keras has no
  public way for a callback to move ``fit``'s first epoch; its own ``BackupAndRestore`` sets the
  trainer's ``_initial_epoch``, which every backend's ``fit`` reads (``self._initial_epoch or
  initial_epoch``) after ``on_train_begin``; hgkeras' crash-safe backup does the same.

Two workarounds, both needed only under ``tf.distribute.MultiWorkerMirroredStrategy`` with dict
batches:

* ``_maybe_symbolic_build``: ``fit`` starts by reducing the first distributed batch across replicas
  (``strategy.reduce("MEAN", batch)``) to build the model symbolically; with a dict batch under
  ``MultiWorkerMirroredStrategy`` that reduction fails ("Attempt to convert a value ({'image':
  PerReplica...}) to a Tensor"). Only the batch's shapes matter for the build, so the first local
  replica's values are used instead.
* the step's logs: Keras reduces each log with ``strategy.reduce("MEAN", v, axis=0)``, which needs a
  batch axis under ``MultiWorkerMirroredStrategy`` (scalars raise "Invalid reduction dimension 0",
  tensorflow issue #72388): every scalar gets one; the reduction then averages the replicas.
"""

from __future__ import annotations

#: (class path, private method, parameters it must take) that the workarounds override or call.
HOOKS = (
    (
        "keras.src.backend.tensorflow.trainer.TensorFlowTrainer",
        "_maybe_symbolic_build",
        ("iterator", "data_batch"),
    ),
    ("keras.src.trainers.trainer.Trainer", "_symbolic_build", ("iterator", "data_batch")),
)


def start_fit_at_epoch(model, epoch: int) -> None:
    """Make the running ``fit`` of ``model`` start at epoch ``epoch`` (call in ``on_train_begin``)."""
    model._initial_epoch = epoch


def multi_worker_trainer_class(base: type) -> type:
    """A subclass of the Keras model class ``base`` with both multi-worker workarounds."""

    class MultiWorkerTrainer(base):
        def _maybe_symbolic_build(self, iterator=None, data_batch=None):
            import tensorflow as tf
            from keras import tree

            strategy = self.distribute_strategy
            if iterator is None:
                return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
            for _, _, it in iterator:
                batch = next(it)
                break
            local = tree.map_structure(
                lambda v: (
                    strategy.experimental_local_results(v)[0]
                    if isinstance(v, tf.distribute.DistributedValues)
                    else v
                ),
                batch,
            )
            with strategy.scope():
                self._symbolic_build(data_batch=local)

        def train_step(self, data):
            from keras import ops

            logs = super().train_step(data)
            return {k: ops.reshape(v, (1,)) for k, v in logs.items()}

    MultiWorkerTrainer.__name__ = MultiWorkerTrainer.__qualname__ = f"MultiWorker{base.__name__}"
    return MultiWorkerTrainer
