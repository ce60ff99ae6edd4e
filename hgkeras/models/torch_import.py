"""Import the published PyTorch Stacked Hourglass weights (``pytorch_stacked_hourglass``) into Keras.

The PyTorch ``PoseNet`` of princeton-vl/pytorch_stacked_hourglass is the network of docs/method.md with
these module names (``m = 1`` residual module per resolution, ``increase = 0``)::

    pre.0.conv / pre.0.bn                  -> stem_conv / stem_bn      (Conv 7x7/2, padding 3)
    pre.1, pre.3, pre.4                    -> stem_res1, stem_res2, stem_res3 (pre.2 is the pool)
    hgs.{i}.0[.low2]*k.{up1|low1|low3}     -> hg{i+1}_n{depth-k}_{up1|low1|low3}_res1
    hgs.{i}.0.low2.low2.low2.low2          -> hg{i+1}_n1_low2_res1     (the residual at the bottom)
    features.{i}.0                         -> hg{i+1}_out_res1
    features.{i}.1.conv / features.{i}.1.bn -> hg{i+1}_lin_conv / hg{i+1}_lin_bn
    outs.{i}.conv                          -> stack_{i+1}
    merge_features.{i}.conv.conv           -> hg{i+1}_merge_features
    merge_preds.{i}.conv.conv              -> hg{i+1}_merge_preds

and a residual ``R`` has ``bn1, conv1.conv, bn2, conv2.conv, bn3, conv3.conv, skip_layer.conv`` ->
``R_bn1, R_conv1, R_bn2, R_conv2, R_bn3, R_conv3, R_skip``. PyTorch builds ``skip_layer`` even when the
input and output widths match; it is unused then, and so are its weights here.

Convolution weights go from PyTorch's (out, in, kh, kw) to Keras' (kh, kw, in, out); BatchNorm
``weight, bias, running_mean, running_var`` become ``gamma, beta, moving_mean, moving_variance``
(both frameworks use eps 1e-5 here, see :mod:`hgkeras.models.hourglass`). ``num_batches_tracked`` is dropped.

torch is needed only to read ``.pt``/``.pth`` files (``pip install 'hgkeras[torch]'``); a state dict
that is already a mapping of numpy arrays, or an ``.npz`` file of one, loads without it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Leading key components added by wrappers (``DataParallel`` -> ``module.``, a trainer -> ``model.``).
WRAPPER_PREFIXES = ("module.", "model.")

#: Keys under which a training checkpoint dict may hold the network's state dict.
CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "net", "network")

_CONV_TENSORS = (("weight", "kernel"), ("bias", "bias"))
_BN_TENSORS = (
    ("weight", "gamma"),
    ("bias", "beta"),
    ("running_mean", "moving_mean"),
    ("running_var", "moving_variance"),
)
#: PyTorch BatchNorm bookkeeping with no Keras counterpart.
_IGNORED_SUFFIX = ".num_batches_tracked"

#: How many names an error message lists per category before "... and N more".
_MAX_LISTED = 12

_STACK_MODULE = re.compile(r"^(hgs|features|outs|merge_features|merge_preds)\.(\d+)\.")


@dataclass(frozen=True)
class TensorMapping:
    """One PyTorch tensor and the Keras variable it becomes."""

    torch_key: str  # e.g. "hgs.0.0.up1.conv2.conv.weight"
    layer: str  # Keras layer name, e.g. "hg1_n4_up1_res1_conv2"
    variable: str  # Keras layer attribute: kernel, bias, gamma, beta, moving_mean, moving_variance

    @property
    def is_kernel(self) -> bool:
        return self.variable == "kernel"


@dataclass
class ImportReport:
    """What :func:`load_torch_checkpoint` did, tensor by tensor (PyTorch key names)."""

    source: str
    checkpoint_architecture: dict[str, int]
    model_stacks: int
    loaded: list[str] = field(default_factory=list)
    num_values: int = 0
    unused_skips: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    dropped_stacks: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A few human-readable lines."""
        arch = self.checkpoint_architecture
        lines = [
            f"loaded {len(self.loaded)} tensors ({self.num_values:,} values) from {self.source}",
            f"checkpoint: {arch['num_stacks']} stacks, {arch['num_features']} features, "
            f"{arch['num_joints']} joints, hourglass depth {arch['depth']}",
        ]
        if self.unused_skips:
            lines.append(
                f"skipped {len(self.unused_skips)} tensors of unused skip_layer convolutions "
                "(identity skips)"
            )
        if self.ignored:
            lines.append(f"ignored {len(self.ignored)} num_batches_tracked counters")
        if self.dropped_stacks:
            lines.append(
                f"dropped {len(self.dropped_stacks)} tensors of checkpoint stacks "
                f"{self.model_stacks + 1}..{arch['num_stacks']} (the model keeps the first "
                f"{self.model_stacks})"
            )
        if self.missing:
            lines.append(f"NOT in the checkpoint (left as initialised): {_listing(self.missing)}")
        if self.unexpected:
            lines.append(f"not used from the checkpoint: {_listing(self.unexpected)}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Reading checkpoints
# --------------------------------------------------------------------------------------------


def read_torch_state_dict(
    source: str | os.PathLike | Mapping[str, Any], *, weights_only: bool = True
) -> dict[str, np.ndarray]:
    """A PyTorch checkpoint as a flat ``{key: float32/int array}`` dict with wrapper prefixes removed.

    ``source`` is a path (``torch.load``-able file, or ``.npz``), a checkpoint dict (the state dict
    found under one of :data:`CONTAINER_KEYS`), or a state dict of tensors/arrays. Leading ``module.``
    and ``model.`` key components (DataParallel, trainer wrappers) are stripped.
    ``weights_only`` is passed to ``torch.load``; set it False only for files you trust.
    """
    label = _label(source)
    if isinstance(source, Mapping):
        obj: Any = source
    else:
        obj = _load_file(Path(source), weights_only=weights_only)
    state = _unwrap(obj, label)
    result: dict[str, np.ndarray] = {}
    origin: dict[str, str] = {}
    for raw_key, value in state.items():
        if not isinstance(raw_key, str):
            raise ValueError(f"{label}: state dict key {raw_key!r} is not a string")
        key = strip_wrapper_prefixes(raw_key)
        if key in result:
            raise ValueError(
                f"{label}: keys {origin[key]!r} and {raw_key!r} both mean {key!r} once the "
                f"{'/'.join(WRAPPER_PREFIXES)} prefixes are removed"
            )
        result[key] = _to_numpy(value, raw_key, label)
        origin[key] = raw_key
    if not result:
        raise ValueError(f"{label}: the state dict is empty")
    return result


def strip_wrapper_prefixes(key: str) -> str:
    """``model.module.pre.0.conv.weight`` -> ``pre.0.conv.weight``."""
    while key.startswith(WRAPPER_PREFIXES):
        key = key.split(".", 1)[1]
    return key


def _label(source: Any) -> str:
    if isinstance(source, Mapping):
        return "state dict"
    return f"checkpoint {os.fspath(source)!r}"


def _load_file(path: Path, *, weights_only: bool) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist or is not a file")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    try:
        import torch
    except ImportError as error:
        raise ImportError(
            f"reading the PyTorch checkpoint {str(path)!r} needs torch: "
            "pip install 'hgkeras[torch]' (or pass a dict of numpy arrays / an .npz file)"
        ) from error
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        hint = (
            " If the file comes from a source you trust, retry with weights_only=False "
            "(hgkeras import-weights --unsafe-load)."
            if weights_only
            else ""
        )
        raise ValueError(
            f"checkpoint {str(path)!r} could not be read with torch.load("
            f"weights_only={weights_only}): {message}.{hint}"
        ) from error


def _is_array_like(value: Any) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype")


def _unwrap(obj: Any, label: str) -> Mapping[str, Any]:
    """Find the state dict in a checkpoint: the object itself, or under ``state_dict``/``model``/..."""
    for _ in range(4):
        if hasattr(obj, "state_dict") and callable(obj.state_dict) and not isinstance(obj, Mapping):
            obj = obj.state_dict()  # a whole nn.Module was saved
        if not isinstance(obj, Mapping):
            raise ValueError(
                f"{label}: expected a state dict or a checkpoint dict, got {type(obj).__name__}"
            )
        # A container key holding a mapping (or module) wins: no real state dict has one.
        for key in CONTAINER_KEYS:
            if key in obj and (isinstance(obj[key], Mapping) or hasattr(obj[key], "state_dict")):
                obj = obj[key]
                break
        else:
            if obj and all(_is_array_like(v) for v in obj.values()):
                return obj
            keys = ", ".join(repr(k) for k in list(obj)[:10])
            raise ValueError(
                f"{label}: neither a state dict (all values tensors) nor a checkpoint dict holding "
                f"one under {list(CONTAINER_KEYS)}; found keys {keys}"
            )
    raise ValueError(f"{label}: state dict nested too deeply under {list(CONTAINER_KEYS)}")


def _to_numpy(value: Any, key: str, label: str) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        tensor = value.detach().cpu()
        if tensor.is_floating_point():
            tensor = tensor.float()
        return tensor.numpy()
    if isinstance(value, np.ndarray | np.generic | int | float):
        return np.asarray(value)
    raise ValueError(f"{label}: entry {key!r} is a {type(value).__name__}, not a tensor")


# --------------------------------------------------------------------------------------------
# Architectures
# --------------------------------------------------------------------------------------------


def checkpoint_architecture(state_dict: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Stacks, features, joints, depth, input channels and ``increase`` of a PoseNet state dict.

    ``state_dict`` is the output of :func:`read_torch_state_dict` (prefixes already stripped).
    """
    stacks = sorted(
        int(m.group(1))
        for key in state_dict
        if (m := re.fullmatch(r"outs\.(\d+)\.conv\.weight", key))
    )
    if not stacks:
        keys = ", ".join(list(state_dict)[:8])
        raise ValueError(
            "this does not look like a pytorch_stacked_hourglass PoseNet state dict: no "
            f"'outs.N.conv.weight' keys (first keys: {keys})"
        )
    if stacks != list(range(len(stacks))):
        raise ValueError(f"the checkpoint's stacks are not numbered 0..N-1: outs.{stacks}")
    out = state_dict["outs.0.conv.weight"]
    if out.ndim != 4:
        raise ValueError(
            f"outs.0.conv.weight has shape {out.shape}, expected (joints, features, 1, 1)"
        )
    depth = 0
    prefix = "hgs.0.0"
    while f"{prefix}.up1.bn1.weight" in state_dict:
        depth += 1
        prefix += ".low2"
    arch = {
        "num_stacks": len(stacks),
        "num_features": int(out.shape[1]),
        "num_joints": int(out.shape[0]),
        "depth": depth,
    }
    stem = state_dict.get("pre.0.conv.weight")
    if stem is not None and stem.ndim == 4:
        arch["in_channels"] = int(stem.shape[1])
    low1 = state_dict.get("hgs.0.0.low1.conv3.conv.weight")
    if low1 is not None and low1.ndim == 4:
        arch["increase"] = int(low1.shape[0]) - arch["num_features"]
    return arch


def model_architecture(model: Any) -> dict[str, int]:
    """Stacks, features, joints, depth and modules of a Keras :class:`StackedHourglass` (by layer names)."""
    names = {layer.name for layer in model.layers}
    num_stacks = 0
    while f"stack_{num_stacks + 1}" in names:
        num_stacks += 1
    if not num_stacks:
        raise ValueError(
            f"model {model.name!r} has no 'stack_1' layer; weights can be imported only into an "
            "hgkeras StackedHourglass"
        )
    kernel = model.get_layer("stack_1").kernel
    depth = 0
    while f"hg1_n{depth + 1}_up1_res1_bn1" in names:
        depth += 1
    modules = 0
    while f"hg1_n{depth}_up1_res{modules + 1}_bn1" in names:
        modules += 1
    return {
        "num_stacks": num_stacks,
        "num_features": int(kernel.shape[2]),
        "num_joints": int(kernel.shape[3]),
        "depth": depth,
        "num_modules": modules,
        "in_channels": int(model.get_layer("stem_conv").kernel.shape[2]),
    }


def _architecture_differences(
    ckpt: Mapping[str, int], model: Mapping[str, int], *, allow_fewer_stacks: bool
) -> list[str]:
    problems = []
    stacks_ok = ckpt["num_stacks"] == model["num_stacks"] or (
        allow_fewer_stacks and ckpt["num_stacks"] > model["num_stacks"]
    )
    if not stacks_ok:
        problems.append(
            f"checkpoint has {_plural(ckpt['num_stacks'], 'stack')}, model has "
            f"{model['num_stacks']}"
        )
    for key, what in (
        ("num_features", "features"),
        ("num_joints", "joints"),
        ("depth", "hourglass depth"),
        ("in_channels", "input channels"),
    ):
        if key in ckpt and ckpt[key] != model[key]:
            problems.append(f"checkpoint has {ckpt[key]} {what}, model has {model[key]}")
    if ckpt.get("increase", 0):
        problems.append(
            f"checkpoint widens the hourglass by increase={ckpt['increase']} features per level; "
            "hgkeras hourglasses keep the width constant (increase=0)"
        )
    if model["num_modules"] != 1:
        problems.append(
            f"PyTorch PoseNet has 1 residual module per resolution, model has "
            f"num_modules={model['num_modules']}"
        )
    return problems


# --------------------------------------------------------------------------------------------
# Name mapping
# --------------------------------------------------------------------------------------------


def _residual(torch_prefix: str, keras_name: str, layer_names: set[str]) -> list[tuple]:
    modules = [
        (f"{torch_prefix}.bn1", f"{keras_name}_bn1", "bn"),
        (f"{torch_prefix}.conv1.conv", f"{keras_name}_conv1", "conv"),
        (f"{torch_prefix}.bn2", f"{keras_name}_bn2", "bn"),
        (f"{torch_prefix}.conv2.conv", f"{keras_name}_conv2", "conv"),
        (f"{torch_prefix}.bn3", f"{keras_name}_bn3", "bn"),
        (f"{torch_prefix}.conv3.conv", f"{keras_name}_conv3", "conv"),
    ]
    skip = f"{keras_name}_skip"
    used = skip in layer_names
    modules.append((f"{torch_prefix}.skip_layer.conv", skip, "conv" if used else "unused"))
    return modules


def _module_layout(num_stacks: int, depth: int, layer_names: set[str]) -> list[tuple]:
    """(PyTorch module, Keras layer, kind) for every weighted module; kind is conv, bn or unused."""
    layout: list[tuple] = [
        ("pre.0.conv", "stem_conv", "conv"),
        ("pre.0.bn", "stem_bn", "bn"),
    ]
    for torch_index, keras_name in (("1", "stem_res1"), ("3", "stem_res2"), ("4", "stem_res3")):
        layout += _residual(f"pre.{torch_index}", keras_name, layer_names)
    for i in range(num_stacks):
        s = i + 1
        module = f"hgs.{i}.0"
        for order in range(depth, 0, -1):
            for branch in ("up1", "low1", "low3"):
                layout += _residual(
                    f"{module}.{branch}", f"hg{s}_n{order}_{branch}_res1", layer_names
                )
            if order == 1:
                layout += _residual(f"{module}.low2", f"hg{s}_n1_low2_res1", layer_names)
            module += ".low2"
        layout += _residual(f"features.{i}.0", f"hg{s}_out_res1", layer_names)
        layout.append((f"features.{i}.1.conv", f"hg{s}_lin_conv", "conv"))
        layout.append((f"features.{i}.1.bn", f"hg{s}_lin_bn", "bn"))
        layout.append((f"outs.{i}.conv", f"stack_{s}", "conv"))
        if i < num_stacks - 1:
            layout.append((f"merge_features.{i}.conv.conv", f"hg{s}_merge_features", "conv"))
            layout.append((f"merge_preds.{i}.conv.conv", f"hg{s}_merge_preds", "conv"))
    return layout


def torch_to_keras_mapping(model: Any) -> tuple[list[TensorMapping], list[str]]:
    """Every PyTorch tensor key of ``model``'s PoseNet twin and its Keras variable.

    Returns (mappings, unused): ``unused`` are the PyTorch keys of skip convolutions that the Keras
    model does not have because its skip is the identity.
    """
    arch = model_architecture(model)
    names = {layer.name for layer in model.layers}
    mappings: list[TensorMapping] = []
    unused: list[str] = []
    for module, layer, kind in _module_layout(arch["num_stacks"], arch["depth"], names):
        if kind == "unused":
            unused += [f"{module}.{t}" for t, _ in _CONV_TENSORS]
            continue
        pairs = _CONV_TENSORS if kind == "conv" else _BN_TENSORS
        mappings += [TensorMapping(f"{module}.{t}", layer, k) for t, k in pairs]
    return mappings, unused


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_torch_checkpoint(
    model: Any,
    path_or_state_dict: str | os.PathLike | Mapping[str, Any],
    *,
    strict: bool = True,
    allow_fewer_stacks: bool = False,
    weights_only: bool = True,
) -> ImportReport:
    """Copy a pytorch_stacked_hourglass checkpoint's weights into a Keras :class:`StackedHourglass`.

    Args:
        model: the Keras model; its architecture must match the checkpoint's.
        path_or_state_dict: a ``torch.save`` file, an ``.npz`` file, a checkpoint dict, or a state
            dict (tensors or numpy arrays). ``module.``/``model.`` key prefixes are accepted.
        strict: raise when the architectures differ, a tensor is missing, or a tensor is left over
            (the unused skip convolutions of identity skips aside). With ``strict=False`` missing and
            left-over tensors are only reported. A wrong shape always raises.
        allow_fewer_stacks: accept a checkpoint with more stacks than the model and take its first
            stacks (stack k's output depends only on stacks 1..k).
        weights_only: passed to ``torch.load``; False only for trusted files.

    Returns an :class:`ImportReport`. Nothing is assigned unless every check passes.
    """
    label = _label(path_or_state_dict)
    state = read_torch_state_dict(path_or_state_dict, weights_only=weights_only)
    ckpt_arch = checkpoint_architecture(state)
    model_arch = model_architecture(model)
    if strict:
        problems = _architecture_differences(
            ckpt_arch, model_arch, allow_fewer_stacks=allow_fewer_stacks
        )
        if problems:
            raise ValueError(f"{label} does not match model {model.name!r}: " + "; ".join(problems))

    mappings, unused_skip_keys = torch_to_keras_mapping(model)
    layers = {layer.name: layer for layer in model.layers}
    report = ImportReport(
        source=label, checkpoint_architecture=ckpt_arch, model_stacks=model_arch["num_stacks"]
    )
    consumed: set[str] = set()
    wrong_shape: list[str] = []
    assignments = []
    for mapping in mappings:
        value = state.get(mapping.torch_key)
        if value is None:
            report.missing.append(mapping.torch_key)
            continue
        consumed.add(mapping.torch_key)
        variable = getattr(layers[mapping.layer], mapping.variable)
        expected = tuple(int(d) for d in variable.shape)
        if mapping.is_kernel:
            if value.ndim != 4:
                wrong_shape.append(
                    f"{mapping.torch_key}: checkpoint {tuple(value.shape)}, expected a 4-D "
                    f"(out, in, kh, kw) convolution weight for {mapping.layer}"
                )
                continue
            value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        if tuple(value.shape) != expected:
            shown = value.shape if not mapping.is_kernel else value.transpose(3, 2, 0, 1).shape
            wanted = expected if not mapping.is_kernel else _oihw(expected)
            wrong_shape.append(
                f"{mapping.torch_key}: checkpoint {tuple(shown)}, model {mapping.layer}."
                f"{mapping.variable} needs {wanted}"
            )
            continue
        assignments.append((variable, value, mapping.torch_key))

    for key in unused_skip_keys:
        if key in state:
            consumed.add(key)
            report.unused_skips.append(key)
    for key in state:
        if key in consumed:
            continue
        if key.endswith(_IGNORED_SUFFIX):
            report.ignored.append(key)
        elif allow_fewer_stacks and _beyond_model_stacks(key, model_arch["num_stacks"]):
            report.dropped_stacks.append(key)
        else:
            report.unexpected.append(key)

    assigned = {id(variable) for variable, _, _ in assignments}
    uncovered = [v.path for v in model.weights if id(v) not in assigned]
    if wrong_shape or (strict and (report.missing or report.unexpected or uncovered)):
        parts = []
        if wrong_shape:
            parts.append(
                f"wrong shape ({len(wrong_shape)}):\n    "
                + "\n    ".join(wrong_shape[:_MAX_LISTED])
            )
            if len(wrong_shape) > _MAX_LISTED:
                parts[-1] += f"\n    ... and {len(wrong_shape) - _MAX_LISTED} more"
        if strict and report.missing:
            parts.append(f"missing from the checkpoint: {_listing(report.missing)}")
        if strict and report.unexpected:
            parts.append(f"unexpected in the checkpoint: {_listing(report.unexpected)}")
        if strict and uncovered and not report.missing:
            parts.append(f"model weights with no checkpoint tensor: {_listing(uncovered)}")
        raise ValueError(f"{label} does not fit model {model.name!r}:\n  " + "\n  ".join(parts))

    for variable, value, key in assignments:
        variable.assign(value.astype(variable.dtype, copy=False))
        report.loaded.append(key)
        report.num_values += int(value.size)
    return report


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _oihw(hwio: tuple[int, ...]) -> tuple[int, ...]:
    return (hwio[3], hwio[2], hwio[0], hwio[1])


def _beyond_model_stacks(key: str, num_stacks: int) -> bool:
    """Whether ``key`` belongs to a stack (or a merge after the last stack) the model does not have."""
    match = _STACK_MODULE.match(key)
    if not match:
        return False
    kind, index = match.group(1), int(match.group(2))
    if kind.startswith("merge_"):
        return index >= num_stacks - 1
    return index >= num_stacks


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    if len(names) > _MAX_LISTED:
        shown += f", ... and {len(names) - _MAX_LISTED} more"
    return f"({len(names)}) {shown}"
