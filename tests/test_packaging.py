"""One torch version across the Makefile, pyproject.toml and environment.yml."""

from __future__ import annotations

import re
import tomllib

import yaml

from conftest import REPO


def _pins(lines) -> dict[str, str]:
    out = {}
    for line in lines:
        m = re.match(r"^\s*(torch|torchvision)==([\w.+]+)", line.strip().strip('"'))
        if m:
            out[m.group(1)] = m.group(2).split("+")[0]  # the CUDA variant may differ
    return out


def test_one_torch_version_everywhere():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pyproject = _pins(project["dependencies"])
    make = re.search(r"^TORCH_PINS \?= (.+)$", (REPO / "Makefile").read_text(), re.M).group(1)
    makefile = _pins(make.split())
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda = _pins(line.split("#")[0] for line in pip)
    assert set(pyproject) == {"torch", "torchvision"}
    assert pyproject == makefile == conda


def test_license_is_an_spdx_expression():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
