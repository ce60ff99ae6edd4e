"""Importing pytorch_stacked_hourglass checkpoints: name mapping, parity with PyTorch, bad checkpoints.

The PyTorch reference below is written from docs/method.md with the module names of the published
``PoseNet`` (``pre``, ``hgs``, ``features``, ``outs``, ``merge_features``, ``merge_preds``; residuals
with ``bn1, conv1.conv, ..., skip_layer.conv``). It is independent of hgkeras.models.hourglass: Keras must
reproduce its eval-mode outputs from the imported weights alone.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import keras  # noqa: E402

from hgkeras.cli import main  # noqa: E402
from hgkeras.models.hourglass import StackedHourglass, count_params  # noqa: E402
from hgkeras.models.torch_import import (  # noqa: E402
    checkpoint_architecture,
    load_torch_checkpoint,
    read_torch_state_dict,
)

STACKS, FEATURES, JOINTS, SIZE = 2, 32, 16, 64
TOLERANCE = 1e-4


# ---------------------------------------------------------------------------------------------
# PyTorch reference (docs/method.md, "Network"), NCHW
# ---------------------------------------------------------------------------------------------


class Conv(nn.Module):
    """Conv2d with bias and symmetric padding (k-1)/2, then optional BN and ReLU."""

    def __init__(self, cin, cout, kernel, stride=1, bn=False, relu=False):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding=(kernel - 1) // 2, bias=True)
        self.bn = nn.BatchNorm2d(cout) if bn else None
        self.use_relu = relu

    def forward(self, x):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return torch.relu(x) if self.use_relu else x


class Residual(nn.Module):
    """Pre-activation bottleneck; skip_layer exists always but is used only when widths differ."""

    def __init__(self, cin, cout):
        super().__init__()
        mid = cout // 2
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = Conv(cin, mid, 1)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv2 = Conv(mid, mid, 3)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv3 = Conv(mid, cout, 1)
        self.skip_layer = Conv(cin, cout, 1)
        self.identity = cin == cout

    def forward(self, x):
        y = self.conv1(torch.relu(self.bn1(x)))
        y = self.conv2(torch.relu(self.bn2(y)))
        y = self.conv3(torch.relu(self.bn3(y)))
        return y + (x if self.identity else self.skip_layer(x))


class Hourglass(nn.Module):
    def __init__(self, order, f):
        super().__init__()
        self.up1 = Residual(f, f)
        self.pool = nn.MaxPool2d(2, 2)
        self.low1 = Residual(f, f)
        self.low2 = Hourglass(order - 1, f) if order > 1 else Residual(f, f)
        self.low3 = Residual(f, f)

    def forward(self, x):
        low = self.low3(self.low2(self.low1(self.pool(x))))
        return self.up1(x) + nn.functional.interpolate(low, scale_factor=2, mode="nearest")


class Merge(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = Conv(cin, cout, 1)

    def forward(self, x):
        return self.conv(x)


class PoseNet(nn.Module):
    def __init__(self, nstack, f, joints):
        super().__init__()
        self.nstack = nstack
        self.pre = nn.Sequential(
            Conv(3, 64, 7, 2, bn=True, relu=True),
            Residual(64, 128),
            nn.MaxPool2d(2, 2),
            Residual(128, 128),
            Residual(128, f),
        )
        self.hgs = nn.ModuleList([nn.Sequential(Hourglass(4, f)) for _ in range(nstack)])
        self.features = nn.ModuleList(
            [
                nn.Sequential(Residual(f, f), Conv(f, f, 1, bn=True, relu=True))
                for _ in range(nstack)
            ]
        )
        self.outs = nn.ModuleList([Conv(f, joints, 1) for _ in range(nstack)])
        self.merge_features = nn.ModuleList([Merge(f, f) for _ in range(nstack - 1)])
        self.merge_preds = nn.ModuleList([Merge(joints, f) for _ in range(nstack - 1)])

    def forward(self, x):
        x = self.pre(x)
        preds = []
        for i in range(self.nstack):
            feature = self.features[i](self.hgs[i](x))
            pred = self.outs[i](feature)
            preds.append(pred)
            if i < self.nstack - 1:
                x = x + self.merge_preds[i](pred) + self.merge_features[i](feature)
        return preds


def make_posenet(nstack=STACKS, f=FEATURES, joints=JOINTS, seed=0) -> PoseNet:
    """Random conv weights, random BN affine parameters and running statistics, eval mode."""
    torch.manual_seed(seed)
    net = PoseNet(nstack, f, joints)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
                module.running_mean.normal_(0.0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.num_batches_tracked.fill_(1234)
    return net.eval()


def torch_outputs(net: PoseNet, images: np.ndarray) -> np.ndarray:
    """(stacks, N, H/4, W/4, J) outputs for NHWC images."""
    with torch.no_grad():
        preds = net(torch.from_numpy(images).permute(0, 3, 1, 2))
    return np.stack([p.permute(0, 2, 3, 1).numpy() for p in preds])


def keras_outputs(model, images: np.ndarray) -> np.ndarray:
    return np.stack([np.asarray(p) for p in model.predict(images, verbose=0)])


def published_checkpoint(net: PoseNet) -> dict:
    """The layout train.py of pytorch_stacked_hourglass saves: a Trainer around DataParallel."""
    state = {f"model.module.{k}": v for k, v in net.state_dict().items()}
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    return {"state_dict": state, "optimizer": optimizer.state_dict(), "epoch": 7}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A published-layout checkpoint file, input images and PyTorch's outputs for them."""
    directory = tmp_path_factory.mktemp("torch_checkpoint")
    net = make_posenet()
    images = np.random.default_rng(0).random((2, SIZE, SIZE, 3), dtype=np.float32)
    expected = torch_outputs(net, images)
    path = directory / "checkpoint.pt"
    torch.save(published_checkpoint(net), path)
    np.save(directory / "images.npy", images)
    np.save(directory / "expected.npy", expected)
    return {"net": net, "path": path, "images": images, "expected": expected, "dir": directory}


@pytest.fixture(scope="module")
def model():
    return StackedHourglass(
        num_stacks=STACKS, num_features=FEATURES, num_joints=JOINTS, image_shape=(SIZE, SIZE, 3)
    )


def _scramble(model) -> None:
    for variable in model.weights:
        variable.assign(np.full(variable.shape, 0.5, dtype="float32"))


# ---------------------------------------------------------------------------------------------
# Parity
# ---------------------------------------------------------------------------------------------


def test_reference_outputs_are_nontrivial(reference):
    expected = reference["expected"]
    assert expected.shape == (STACKS, 2, SIZE // 4, SIZE // 4, JOINTS)
    assert np.abs(expected).max() > 0.05  # a 1e-4 tolerance must be a real constraint
    assert np.abs(expected[0] - expected[1]).max() > 0.05


def test_tensorflow_outputs_match_pytorch_for_every_stack(reference, model):
    _scramble(model)
    report = load_torch_checkpoint(model, reference["path"])
    outputs = keras_outputs(model, reference["images"])
    for stack in range(STACKS):
        error = np.abs(outputs[stack] - reference["expected"][stack]).max()
        assert error < TOLERANCE, f"stack {stack + 1}: max abs error {error}"

    # Every tensor accounted for: loaded, an unused identity skip, or a BN counter.
    state = reference["net"].state_dict()
    assert len(report.loaded) + len(report.unused_skips) + len(report.ignored) == len(state)
    assert len(report.loaded) == len(model.weights)
    assert not report.missing and not report.unexpected and not report.dropped_stacks
    # Identity-skip residuals: stem_res2 (128 -> 128; res1 64 -> 128 and res3 128 -> 32 project),
    # 13 per hourglass of order 4 (3 per level + the bottom), plus the one after each hourglass.
    identity_residuals = 1 + STACKS * (3 * 4 + 1 + 1)
    assert len(report.unused_skips) == 2 * identity_residuals
    assert report.num_values == sum(count_params(model))
    assert "pre.0.conv.weight" in report.loaded and "pre.1.skip_layer.conv.weight" in report.loaded
    assert "pre.3.skip_layer.conv.weight" in report.unused_skips


def test_parameter_count_matches_pytorch(reference, model):
    net = reference["net"]
    torch_params = sum(p.numel() for p in net.parameters())
    unused = sum(
        m.skip_layer.conv.weight.numel() + m.skip_layer.conv.bias.numel()
        for m in net.modules()
        if isinstance(m, Residual) and m.identity
    )
    assert count_params(model)[0] == torch_params - unused


BACKEND_PARITY = """
import sys
import numpy as np
import keras
from hgkeras.models.hourglass import StackedHourglass
from hgkeras.models.torch_import import load_torch_checkpoint

backend, directory = sys.argv[1], sys.argv[2]
assert keras.backend.backend() == backend
images = np.load(f"{directory}/images.npy")
expected = np.load(f"{directory}/expected.npy")
model = StackedHourglass(num_stacks=2, num_features=32, num_joints=16, image_shape=(64, 64, 3))
load_torch_checkpoint(model, f"{directory}/checkpoint.pt")
outputs = model.predict(images, verbose=0)
for stack, output in enumerate(outputs):
    error = float(np.abs(np.asarray(output) - expected[stack]).max())
    print(f"stack {stack + 1} max abs error {error:.3g}")
    assert error < 1e-4, (stack, error)
print("PARITY OK")
"""


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_other_backends_match_pytorch(reference, run_backend, backend):
    out = run_backend(backend, BACKEND_PARITY, backend, str(reference["dir"]))
    assert "PARITY OK" in out


# ---------------------------------------------------------------------------------------------
# Checkpoint layouts
# ---------------------------------------------------------------------------------------------


def test_plain_dataparallel_numpy_and_npz_state_dicts_load(reference, model, tmp_path):
    net = reference["net"]
    plain = tmp_path / "plain.pth"
    torch.save(net.state_dict(), plain)
    data_parallel = tmp_path / "data_parallel.pth"
    torch.save(nn.DataParallel(net).state_dict(), data_parallel)
    numpy_dict = {k: v.numpy() for k, v in net.state_dict().items()}
    npz = tmp_path / "state.npz"
    np.savez(npz, **{f"module.{k}": v for k, v in numpy_dict.items()})
    assert next(iter(torch.load(data_parallel, weights_only=True))).startswith("module.")

    for source in (plain, data_parallel, numpy_dict, npz, {"model": net.state_dict()}):
        _scramble(model)
        load_torch_checkpoint(model, source)
        error = np.abs(keras_outputs(model, reference["images"]) - reference["expected"]).max()
        assert error < TOLERANCE, (source if not isinstance(source, dict) else "dict", error)


def test_prefixes_and_container_are_unwrapped(reference):
    state = read_torch_state_dict(reference["path"])
    assert "pre.0.conv.weight" in state and "outs.1.conv.bias" in state
    assert not any(k.startswith(("model.", "module.")) for k in state)
    assert checkpoint_architecture(state) == {
        "num_stacks": STACKS,
        "num_features": FEATURES,
        "num_joints": JOINTS,
        "depth": 4,
        "in_channels": 3,
        "increase": 0,
    }


@pytest.mark.parametrize(
    ("nstack", "features", "joints", "message"),
    [
        (1, FEATURES, JOINTS, "checkpoint has 1 stack, model has 2"),
        (STACKS, 16, JOINTS, "checkpoint has 16 features, model has 32"),
        (STACKS, FEATURES, 11, "checkpoint has 11 joints, model has 16"),
    ],
)
def test_wrong_architecture_is_named(model, nstack, features, joints, message):
    state = make_posenet(nstack, features, joints).state_dict()
    with pytest.raises(ValueError, match=message):
        load_torch_checkpoint(model, state)


def test_missing_unexpected_and_misshapen_tensors_are_listed_and_nothing_is_assigned(
    reference, model
):
    _scramble(model)
    state = dict(reference["net"].state_dict())
    del state["hgs.1.0.low2.low2.low3.conv2.conv.weight"]
    state["hgs.0.0.extra.weight"] = torch.zeros(3)
    with pytest.raises(ValueError) as error:
        load_torch_checkpoint(model, state)
    text = str(error.value)
    assert "missing from the checkpoint: (1) hgs.1.0.low2.low2.low3.conv2.conv.weight" in text
    assert "unexpected in the checkpoint: (1) hgs.0.0.extra.weight" in text

    state = dict(reference["net"].state_dict())
    state["features.0.1.bn.running_var"] = torch.ones(FEATURES + 1)
    with pytest.raises(ValueError, match=r"features\.0\.1\.bn\.running_var: checkpoint \(33,\)"):
        load_torch_checkpoint(model, state)
    # A failed import leaves the model untouched.
    assert all(np.all(np.asarray(v) == 0.5) for v in model.weights)

    # Non-strict: missing and left-over tensors are reported, the rest is loaded.
    state = dict(reference["net"].state_dict())
    del state["outs.1.conv.bias"]
    state["hgs.0.0.extra.weight"] = torch.zeros(3)
    report = load_torch_checkpoint(model, state, strict=False)
    assert report.missing == ["outs.1.conv.bias"]
    assert report.unexpected == ["hgs.0.0.extra.weight"]
    assert np.allclose(model.get_layer("stack_1").bias, reference["net"].outs[0].conv.bias.detach())


def test_not_a_posenet_checkpoint(model, tmp_path):
    with pytest.raises(ValueError, match="does not look like a pytorch_stacked_hourglass PoseNet"):
        load_torch_checkpoint(model, {"fc.weight": np.zeros((2, 2), "float32")})
    with pytest.raises(ValueError, match="neither a state dict"):
        load_torch_checkpoint(model, {"epoch": np.int64(3), "optimizer": {}})
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_torch_checkpoint(model, tmp_path / "missing.pt")
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not be read with torch.load"):
        load_torch_checkpoint(model, broken)


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def test_import_weights_command_writes_a_model_with_pytorch_outputs(reference, tmp_path, capsys):
    out = tmp_path / "first_stack.keras"
    code = main(
        ["import-weights", str(reference["path"]), "--out", str(out), "--stacks", "1",
         "--image-size", str(SIZE)]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "checkpoint: 2 stacks, 32 features, 16 joints" in printed
    assert "dropped" in printed and out.is_file()
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary left behind

    loaded = keras.models.load_model(out)
    assert isinstance(loaded, StackedHourglass) and loaded.num_stacks == 1
    output = loaded.predict(reference["images"], verbose=0)  # one output: not a list
    assert np.abs(np.asarray(output) - reference["expected"][0]).max() < TOLERANCE


def test_import_weights_command_errors(reference, tmp_path, capsys):
    assert (
        main(["import-weights", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "a.keras")]) == 2
    )
    assert "does not exist" in capsys.readouterr().err
    assert main(["import-weights", str(reference["path"]), "--out", str(tmp_path / "a.h5")]) == 2
    assert "must end in .keras" in capsys.readouterr().err
    args = ["import-weights", str(reference["path"]), "--out", str(tmp_path / "a.keras")]
    assert main([*args, "--stacks", "3"]) == 2
    assert "more stacks than the checkpoint has (2)" in capsys.readouterr().err
    assert main([*args, "--image-size", "100"]) == 2
    assert "multiple of" in capsys.readouterr().err
    assert not (tmp_path / "a.keras").exists()
