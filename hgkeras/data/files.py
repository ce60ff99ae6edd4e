"""Reading the annotation formats' YAML files with one-line errors naming the file (JSON:
:func:`hgkeras.io.load_json`)."""

from __future__ import annotations

from pathlib import Path


def load_yaml_mapping(path: str | Path, what: str = "YAML file") -> dict:
    """The parsed YAML mapping of ``path`` (``yaml.safe_load``); errors name the file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a {what} is a mapping of settings, got {type(data).__name__}")
    return data
