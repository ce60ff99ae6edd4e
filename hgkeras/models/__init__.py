"""Models: the Stacked Hourglass network, its layers, batch-norm folding, weight import and the
one model loader (:func:`hgkeras.models.loading.load_model`). Names load on first use, so importing
a submodule does not import Keras."""

_LAZY = {
    "StackedHourglass": "hgkeras.models.hourglass",
    "compile_model": "hgkeras.models.hourglass",
    "count_macs": "hgkeras.models.hourglass",
    "count_params": "hgkeras.models.hourglass",
    "load_model": "hgkeras.models.loading",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hgkeras.models' has no attribute {name!r}")


__all__ = sorted(_LAZY)
