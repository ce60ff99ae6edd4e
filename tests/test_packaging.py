"""Packaging: honest dependency ranges, the tested set in constraints.txt, and a wheel that works alone."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

import hgkeras

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _requirements() -> dict[str, list[Requirement]]:
    """ "core" and every extra -> its requirements, hgkeras' own extras left out."""
    project = _project()
    groups = {"core": project["dependencies"], **project["optional-dependencies"]}
    return {
        group: [r for r in map(Requirement, lines) if canonicalize_name(r.name) != "hgkeras"]
        for group, lines in groups.items()
    }


def _constraints() -> dict[str, Version]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = Version(version)
    return pins


def test_pyproject_states_ranges_not_pins():
    for group, requirements in _requirements().items():
        for requirement in requirements:
            operators = {s.operator for s in requirement.specifier}
            assert operators, f"{group}: {requirement} has no version range"
            assert not operators & {"==", "==="}, f"{group}: {requirement} is pinned"


def test_keras_and_numpy_ranges_stop_before_the_next_major():
    core = {canonicalize_name(r.name): r.specifier for r in _requirements()["core"]}
    assert Version("3.15.1") in core["keras"] and Version("4.0") not in core["keras"]
    assert Version("2.4.6") in core["numpy"] and Version("2.5") not in core["numpy"]


def test_constraints_pin_every_requirement_inside_its_range():
    pins = _constraints()
    for group, requirements in _requirements().items():
        for requirement in requirements:
            name = canonicalize_name(requirement.name)
            assert name in pins, f"{group}: {requirement.name} is not pinned in constraints.txt"
            assert requirement.specifier.contains(pins[name], prereleases=True), (
                f"{group}: constraints.txt pins {name}=={pins[name]}, outside {requirement}"
            )


def _included_extras(extras: dict[str, list[str]], name: str) -> set[str]:
    """``name`` and every extra it pulls in through ``hgkeras[...]`` lines, recursively."""
    found = {name}
    for line in extras[name]:
        for nested in re.findall(r"^hgkeras\[(.+)\]$", line):
            for extra in nested.split(","):
                found |= _included_extras(extras, extra.strip())
    return found


def test_extras_cover_each_use_and_all_holds_them_all():
    extras = _project()["optional-dependencies"]
    expected = {"serving", "onnx", "deploy", "coco", "jax", "torch", "tensorboard", "test", "all"}
    assert expected <= set(extras)
    assert _included_extras(extras, "all") == set(extras)
    assert "tensorboard" in {canonicalize_name(Requirement(r).name) for r in extras["tensorboard"]}


def test_installed_versions_are_the_pinned_ones():
    """The suite runs on the set it claims: every pinned package present here has its pinned version."""
    differ = []
    for name, version in _constraints().items():
        try:
            installed = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            continue
        if installed.public != version.public:  # torch 2.13.0+cpu meets the pin 2.13.0
            differ.append(f"{name}: installed {installed}, pinned {version}")
    assert not differ, "\n".join(differ)


def test_ci_installs_the_pinned_set_and_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    readme = (REPO / "README.md").read_text()
    assert "pip install -c constraints.txt -e '.[all]'" in ci
    (test_command,) = set(re.findall(r"python -m pytest[^\n`]*", readme.split("## Install")[0]))
    assert test_command in ci


# ------------------------------------------------------------------ the wheel, installed alone


def _source_copy(destination: Path) -> Path:
    """The checkout's files (tracked and untracked, not ignored) copied, so builds leave it clean."""
    names = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split("\0")  # fmt: skip
    for name in filter(None, names):
        source = REPO / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    source = _source_copy(tmp / "source")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp / "dist"), str(source)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    (built,) = (tmp / "dist").glob("hgkeras-*.whl")
    return built


@pytest.fixture(scope="module")
def fresh_venv(wheel, tmp_path_factory) -> Path:
    """A new virtual environment holding only the wheel; this environment's packages on its path."""
    venv = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    # A plain path line: the dependencies are found, this environment's editable hgkeras is not.
    outer = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(site) / "outer-site-packages.pth").write_text("\n".join(sorted(outer)) + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
         "--no-index", "-q", str(wheel)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return venv


def _outside_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(KERAS_BACKEND="tensorflow", JAX_PLATFORMS="cpu")
    return env


def test_wheel_holds_the_samples_and_the_version(wheel):
    import zipfile

    assert wheel.name.startswith(f"hgkeras-{hgkeras.__version__}-")
    names = set(zipfile.ZipFile(wheel).namelist())
    samples = "hgkeras/data/samples/mpii/"
    assert f"{samples}samples.json" in names
    assert len([n for n in names if n.startswith(f"{samples}images/")]) == 5


@pytest.mark.slow
def test_wheel_install_trains_the_embedded_run_outside_the_repository(fresh_venv, tmp_path):
    where = subprocess.run(
        [str(fresh_venv / "bin" / "python"), "-c", "import hgkeras; print(hgkeras.__file__)"],
        cwd=tmp_path, env=_outside_env(), capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert Path(where).is_relative_to(fresh_venv), where

    result = subprocess.run(
        [str(fresh_venv / "bin" / "hgkeras"), "train", "--stacks", "1", "--features", "16",
         "--input-size", "64", "--epochs", "1", "--steps-per-epoch", "2", "--val-every", "1",
         "--no-export", "--verbose", "2", "--out", "run"],
        cwd=tmp_path, env=_outside_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "results.json").read_text())
    assert summary["epochs"] == 1 and 0.0 <= summary["val_pckh"] <= 100.0
    manifest = json.loads((tmp_path / "run" / "data" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["records"] == 5
    assert (tmp_path / "run" / "best.keras").is_file()
