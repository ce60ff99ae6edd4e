"""``hgkeras --help`` and ``hgkeras info``."""

from __future__ import annotations

import json

from hgkeras.cli import main


def test_help_lists_commands(capsys):
    assert main([]) == 0
    assert "info" in capsys.readouterr().out


def test_info_reports_versions_backend_and_model_cost(capsys):
    assert main(["info", "--stacks", "2", "--features", "64", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["backend"] == "tensorflow"
    assert info["versions"]["keras"].startswith("3.")
    assert info["devices"]
    assert info["model"]["config"]["num_stacks"] == 2
    assert info["model"]["macs_per_image"] > 0


def test_info_reports_8_stack_macs_in_text(capsys):
    assert main(["info", "--stacks", "8"]) == 0
    out = capsys.readouterr().out
    assert "25,434,112" in out and "27.44 G" in out
