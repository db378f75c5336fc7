"""The SageMaker bring-your-own-container contract for training (docs/ARCHITECTURE.md §4): where things are.

Inside a container the root is ``/opt/ml``; outside one (tests, the ``local`` backend)
``$SAGEMAKER_BASE_DIR`` replaces it, so the same entrypoint runs unchanged as a plain process.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.constants import HYPERPARAMETERS_FILE, SAGEMAKER_ROOT


@dataclass(frozen=True)
class SageMakerPaths:
    root: Path

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> SageMakerPaths:
        env = os.environ if environ is None else environ
        return cls(Path(env.get("SAGEMAKER_BASE_DIR") or SAGEMAKER_ROOT))

    @property
    def config_dir(self) -> Path:
        return self.root / "input" / "config"

    @property
    def hyperparameters_file(self) -> Path:
        return self.config_dir / HYPERPARAMETERS_FILE

    @property
    def input_data_config_file(self) -> Path:
        return self.config_dir / "inputdataconfig.json"

    @property
    def resource_config_file(self) -> Path:
        return self.config_dir / "resourceconfig.json"

    def channel(self, name: str) -> Path:
        return self.root / "input" / "data" / name

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    @property
    def checkpoint_dir(self) -> Path:
        # SageMaker's CheckpointConfig.LocalPath defaults to /opt/ml/checkpoints.
        return self.root / "checkpoints"

    @property
    def output_dir(self) -> Path:
        return self.root / "output"

    @property
    def failure_file(self) -> Path:
        return self.output_dir / "failure"


def read_json_file(path: Path, what: str, required: bool = True) -> Any:
    """A config file SageMaker writes; absent optional files read as ``{}``."""
    if not path.is_file():
        if required:
            raise FileNotFoundError(f"{what} not found: {path}")
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} {path} is not valid JSON: line {e.lineno} column {e.colno}: {e.msg}") from None


def write_failure(paths: SageMakerPaths, message: str) -> None:
    """SageMaker shows the first 1024 characters of this file as the job's FailureReason."""
    paths.output_dir.mkdir(parents=True, exist_ok=True)
    paths.failure_file.write_text(message, encoding="utf-8")
