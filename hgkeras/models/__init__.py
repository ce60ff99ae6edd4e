"""Models: the Stacked Hourglass network, its layers, batch-norm folding and weight import."""

from hgkeras.models.hourglass import StackedHourglass, compile_model, count_macs, count_params

__all__ = ["StackedHourglass", "compile_model", "count_macs", "count_params"]
