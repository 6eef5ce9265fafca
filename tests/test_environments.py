"""The conda environments install exactly what requirements.txt asks for, and parse as YAML."""
import os

import pytest
import yaml

from conftest import ROOT


def requirement_lines(path):
    with open(path, encoding="utf-8") as f:
        return sorted(line.split("#")[0].strip() for line in f if line.split("#")[0].strip())


@pytest.mark.parametrize("name", ["environment_cluster.yml", "environment_rtx3080.yml"])
def test_conda_environment_matches_requirements(name):
    with open(os.path.join(ROOT, name), encoding="utf-8") as f:
        env = yaml.safe_load(f)
    assert env["name"] and "python=3.11" in env["dependencies"]
    pip_sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_sections) == 1
    packages = sorted(p for p in pip_sections[0] if not p.startswith("--"))
    assert packages == requirement_lines(os.path.join(ROOT, "requirements.txt"))
    index = [p for p in pip_sections[0] if p.startswith("--extra-index-url")]
    assert len(index) == 1 and "download.pytorch.org/whl/cu" in index[0]
