"""The image definition and the entrypoints: what `docker run IMAGE train|serve` relies on. No Docker
engine runs here, so the Dockerfile is checked for the contract it must keep; the entrypoint scripts
run for real."""

from __future__ import annotations

import os
import re
import subprocess

from tests.conftest import ROOT

CONTAINER = ROOT / "container"


def constraint_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def test_dockerfile_keeps_the_sagemaker_contract():
    text = (CONTAINER / "Dockerfile").read_text()
    base = re.search(r"ARG BASE_IMAGE=pytorch/pytorch:([0-9.]+)-cuda[0-9.]+-cudnn\d+-runtime", text)
    assert base, "base image must be an official PyTorch CUDA runtime image"
    assert base.group(1) == constraint_pins()["torch"], "the image's torch must be the pinned one"
    assert "LABEL com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true" in text
    assert 'ENTRYPOINT ["/opt/program/entrypoint.sh"]' in text
    assert "-c /tmp/build/constraints.txt -r /tmp/build/requirements.txt" in text
    assert "COPY model /opt/program/model" in text and "PATH=/opt/program:" in text


def test_image_requirements_are_all_pinned_in_constraints():
    pins = constraint_pins()
    reqs = [line.split("#")[0].strip() for line in (CONTAINER / "requirements.txt").read_text().splitlines()]
    reqs = [r for r in reqs if r]
    assert "torch" in reqs
    assert all(r.lower() in pins for r in reqs), [r for r in reqs if r.lower() not in pins]


def test_entrypoint_dispatches_and_rejects_no_command():
    script = str(CONTAINER / "entrypoint.sh")
    assert os.access(script, os.X_OK) and os.access(CONTAINER / "train", os.X_OK)
    none = subprocess.run([script], capture_output=True, text=True)
    assert none.returncode == 2 and "usage" in none.stderr
    other = subprocess.run([script, "echo", "plain command"], capture_output=True, text=True)
    assert other.returncode == 0 and other.stdout == "plain command\n"


def test_readme_hyperparameter_table_is_the_generated_one():
    from model.hyperparameters import describe_markdown

    assert describe_markdown().strip() in (ROOT / "README.md").read_text()
