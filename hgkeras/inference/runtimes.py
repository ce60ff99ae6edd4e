"""One adapter per inference runtime: ``heatmaps = runtime.run(crops)`` for every exported format.

:func:`load_runtime` picks the runtime from the file:

=====================  =================================  ==========================
file                   runtime                            extra to install
=====================  =================================  ==========================
``*.keras``            Keras (batch norms folded)         (core)
SavedModel folder      ``tf.saved_model`` serving_default  (core)
``*.onnx``             ONNX Runtime                       ``hgkeras[onnx]``
``*.tflite``           LiteRT (``ai_edge_litert``)        ``hgkeras[litert]``
``*.xml`` (+ ``.bin``)  OpenVINO                           ``hgkeras[openvino]``
=====================  =================================  ==========================

Every runtime takes person crops float32 (N, H, W, 3) RGB in [0, 1] and returns the last stack's
heatmaps float32 (N, H/4, W/4, J). The pose spec (joint names, flip pairs) and the heatmap codec (the
decoder the model was exported with, :class:`hgkeras.codec.HeatmapCodec`) of a non-Keras file come
from the ``pose.json`` written beside it by ``hgkeras export``; the host decodes the heatmaps of
ONNX, LiteRT and OpenVINO files with that codec, as the SavedModel's graph does. A runtime also
looks enough like a Keras model (``image_shape``, ``inputs``, ``outputs``, ``pose``, ``codec``,
``runtime(images, training=False)``) for the codec's flip test and decoding, so
:class:`~hgkeras.inference.predictor.PosePredictor` and ``hgkeras evaluate`` run any format.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from hgkeras import io
from hgkeras.codec import HeatmapCodec, get_codec
from hgkeras.spec import PoseSpec, get_pose

#: File name of the pose spec written beside exported models.
POSE_SPEC = "pose.json"
#: Runtime kind -> the pip extra that installs it.
EXTRAS = {"onnx": "onnx", "tflite": "litert", "openvino": "openvino"}
KINDS = ("keras", "saved_model", "onnx", "tflite", "openvino")


class MissingRuntimeError(ImportError, ValueError):
    """The runtime a model file needs is not installed (a ValueError too: the CLI prints one line)."""


def _missing(kind: str, module: str) -> MissingRuntimeError:
    extra = EXTRAS[kind]
    return MissingRuntimeError(
        f"{kind} models need {module}, which is not installed: pip install 'hgkeras[{extra}]'"
    )


def runtime_kind(path: str | os.PathLike) -> str:
    """The runtime of a model file or folder (one of :data:`KINDS`); ValueError if none fits."""
    path = Path(path)
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return "saved_model"
        raise ValueError(f"{path}: a folder must be a SavedModel (saved_model.pb inside)")
    if not path.exists():
        raise FileNotFoundError(f"model not found: {path}")
    suffix = path.suffix.lower()
    kinds = {".keras": "keras", ".onnx": "onnx", ".tflite": "tflite", ".xml": "openvino"}
    if suffix not in kinds:
        raise ValueError(
            f"{path}: cannot tell the model format from the name; expected .keras, .onnx, "
            ".tflite, .xml (OpenVINO) or a SavedModel folder"
        )
    return kinds[suffix]


def pose_spec(
    pose: PoseSpec, input_size: tuple[int, int], codec: HeatmapCodec, **extra: Any
) -> dict[str, Any]:
    """The ``pose.json`` contents for a model of pose spec ``pose`` (the model's own) whose heatmaps
    decode with ``codec``."""
    return {
        **pose.to_config(),
        "codec": codec.to_config(),
        "input_size": [int(input_size[0]), int(input_size[1])],
        "input": "images float32 (N, H, W, 3) RGB in [0, 1]",
        "output": "heatmaps float32 (N, H/4, W/4, J), the last stack",
        **extra,
    }


def read_pose_spec(model_path: str | os.PathLike) -> dict[str, Any] | None:
    """The ``pose.json`` beside (or inside, for a SavedModel) ``model_path``, or None.

    Its ``codec`` is returned as a :class:`~hgkeras.codec.HeatmapCodec` (the default codec when the
    file names none)."""
    path = Path(model_path)
    sidecar = (path if path.is_dir() else path.parent) / POSE_SPEC
    if not sidecar.is_file():
        return None
    try:
        spec = json.loads(io.read_text(sidecar))
        for key in ("joint_names", "flip_pairs", "input_size"):
            spec[key]  # noqa: B018 - presence check
        spec["codec"] = get_codec(spec.get("codec"))
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{sidecar}: not a valid pose spec ({error})") from None
    return spec


def heatmap_model(model):
    """A Keras model with ``model``'s (single) input and only its last stack's heatmaps as output."""
    import keras

    from hgkeras.codec import final_heatmaps

    (images,) = model.inputs
    return keras.Model(images, final_heatmaps(model.outputs), name="heatmaps")


class Runtime:
    """Heatmaps of person crops from one model file; see the module docstring."""

    kind = ""

    def __init__(self, path: str | os.PathLike, input_shape, output_shape) -> None:
        import keras

        self.path = Path(path)
        height, width = int(input_shape[1]), int(input_shape[2])
        self.input_size = (height, width)
        self.image_shape = (height, width, 3)
        self.heatmap_size = (int(output_shape[1]), int(output_shape[2]))
        self.num_joints = int(output_shape[3])
        # symbolic shapes, as a Keras model has them (hgkeras.codec reads outputs[-1].shape)
        self.inputs = [keras.KerasTensor((None, height, width, 3))]
        self.outputs = [keras.KerasTensor((None, *self.heatmap_size, self.num_joints))]
        self.input_shape = self.inputs[0].shape
        spec = read_pose_spec(path)
        self.flip_in_graph = bool(spec and self.kind == "saved_model" and spec.get("flip_in_graph"))
        self.pose = self._pose(spec)
        self.codec: HeatmapCodec | None = None if spec is None else spec["codec"]

    def _pose(self, spec: dict | None) -> PoseSpec | None:
        """The pose spec of ``pose.json`` (None without one: then the caller must name the pose)."""
        if spec is None:
            return None
        names = tuple(spec["joint_names"])
        if len(names) != self.num_joints or tuple(spec["input_size"]) != self.input_size:
            raise ValueError(
                f"{self.path}: pose.json describes {len(names)} joints at {spec['input_size']}, "
                f"the model has {self.num_joints} at {list(self.input_size)}"
            )
        return get_pose(spec)

    def run(self, crops: np.ndarray) -> np.ndarray:
        """Heatmaps (N, h, w, J) float32 of crops (N, H, W, 3) float32 in [0, 1]."""
        crops = np.ascontiguousarray(crops, np.float32)
        if crops.ndim != 4 or crops.shape[1:] != self.image_shape:
            raise ValueError(
                f"crops must have shape (N, {self.input_size[0]}, {self.input_size[1]}, 3), "
                f"got {crops.shape}"
            )
        if len(crops) == 0:
            return np.zeros((0, *self.heatmap_size, self.num_joints), np.float32)
        return np.asarray(self._run(crops), np.float32)

    def _run(self, crops: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, images, training: bool = False):
        """``run`` on backend tensors, returning a backend tensor (the Keras model calling style)."""
        from keras import ops

        return ops.convert_to_tensor(self.run(ops.convert_to_numpy(images)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"


class KerasRuntime(Runtime):
    """A ``.keras`` file (or a training wrapper in one), batch norms folded, last stack only."""

    kind = "keras"

    def __init__(self, path: str | os.PathLike) -> None:
        from hgkeras.codec import codec_of
        from hgkeras.models.loading import load_model
        from hgkeras.spec import pose_of

        model = load_model(path, fold_batch_norms=True)
        self.model = heatmap_model(model)
        super().__init__(path, self.model.inputs[0].shape, self.model.outputs[0].shape)
        self.pose = self.pose or pose_of(model)
        self.codec = self.codec or codec_of(model)

    def _run(self, crops):
        from keras import ops

        return ops.convert_to_numpy(self.model(crops, training=False))


class SavedModelRuntime(Runtime):
    """A SavedModel folder written by ``hgkeras export``: its ``serving_default`` heatmaps."""

    kind = "saved_model"

    def __init__(self, path: str | os.PathLike) -> None:
        import tensorflow as tf

        loaded = tf.saved_model.load(str(path))
        if "serving_default" not in loaded.signatures:
            raise ValueError(f"{path}: the SavedModel has no serving_default signature")
        self._loaded = loaded  # keeps the variables alive
        self._function = loaded.signatures["serving_default"]
        specs = self._function.structured_input_signature[1]
        outputs = self._function.structured_outputs
        if "images" not in specs or "heatmaps" not in outputs:
            raise ValueError(
                f"{path}: serving_default must map 'images' to 'heatmaps' (hgkeras export), "
                f"has inputs {sorted(specs)} and outputs {sorted(outputs)}"
            )
        super().__init__(path, specs["images"].shape, outputs["heatmaps"].shape)

    def _run(self, crops):
        return self._function(images=crops)["heatmaps"].numpy()


class OnnxRuntime(Runtime):
    """An ``.onnx`` file on ONNX Runtime's CPU provider (``threads``: intra-op threads, 0 = all)."""

    kind = "onnx"

    def __init__(self, path: str | os.PathLike, threads: int = 0) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise _missing("onnx", "onnxruntime") from None
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = int(threads)
        try:
            self.session = onnxruntime.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime raises its own exception types
            raise ValueError(f"cannot load an ONNX model from {path}: {error}") from None
        inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self._input, self._output = inp.name, out.name
        super().__init__(path, inp.shape, out.shape)

    def _run(self, crops):
        return self.session.run([self._output], {self._input: crops})[0]


class LiteRTRuntime(Runtime):
    """A ``.tflite`` file on the LiteRT interpreter (``ai_edge_litert``; ``tf.lite`` as fallback)."""

    kind = "tflite"

    def __init__(self, path: str | os.PathLike, threads: int = 0) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            try:
                import tensorflow as tf

                Interpreter = tf.lite.Interpreter  # noqa: N806
            except (ImportError, AttributeError):
                raise _missing("tflite", "ai-edge-litert") from None
        try:
            self.interpreter = Interpreter(
                model_path=str(path), num_threads=int(threads) or os.cpu_count()
            )
        except (ValueError, RuntimeError) as error:
            raise ValueError(f"cannot load a LiteRT model from {path}: {error}") from None
        inp = self.interpreter.get_input_details()[0]
        out = self.interpreter.get_output_details()[0]
        self._input, self._output = inp["index"], out["index"]
        self._batch = -1
        super().__init__(path, inp["shape"], out["shape"])

    def _run(self, crops):
        if len(crops) != self._batch:
            self.interpreter.resize_tensor_input(self._input, crops.shape)
            self.interpreter.allocate_tensors()
            self._batch = len(crops)
        self.interpreter.set_tensor(self._input, crops)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self._output).copy()


class OpenVINORuntime(Runtime):
    """An OpenVINO IR ``.xml`` (weights in the ``.bin`` beside it) compiled for the CPU."""

    kind = "openvino"

    def __init__(self, path: str | os.PathLike, threads: int = 0) -> None:
        try:
            import openvino
        except ImportError:
            raise _missing("openvino", "openvino") from None
        core = openvino.Core()
        # float32 arithmetic: on CPUs with bf16 units OpenVINO would otherwise run in bfloat16
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            model = core.read_model(str(path))
            self.compiled = core.compile_model(model, "CPU", config)
        except RuntimeError as error:
            raise ValueError(f"cannot load an OpenVINO model from {path}: {error}") from None
        self.request = self.compiled.create_infer_request()
        inp, out = model.inputs[0].get_partial_shape(), model.outputs[0].get_partial_shape()
        super().__init__(
            path, [d.get_length() if d.is_static else -1 for d in inp],
            [d.get_length() if d.is_static else -1 for d in out],
        )  # fmt: skip

    def _run(self, crops):
        return self.request.infer({0: crops})[self.compiled.output(0)].copy()


_RUNTIMES = {
    "keras": KerasRuntime,
    "saved_model": SavedModelRuntime,
    "onnx": OnnxRuntime,
    "tflite": LiteRTRuntime,
    "openvino": OpenVINORuntime,
}


def load_runtime(path: str | os.PathLike, threads: int = 0) -> Runtime:
    """The runtime for ``path``, chosen from the file (see the module docstring).

    ``threads`` sets the CPU threads of ONNX Runtime, LiteRT and OpenVINO (0: their default).
    """
    kind = runtime_kind(path)
    cls = _RUNTIMES[kind]
    if kind in ("keras", "saved_model"):
        return cls(path)
    return cls(path, threads=threads)
