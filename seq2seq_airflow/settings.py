"""What the DAGs read from the environment, and the Params they declare alike.

Read from the environment (``AIRFLOW_VAR_WMT_SEQ2SEQ_*``), not the metadata DB, so parsing stays fast;
they are also how Airflow exposes Variables set as environment variables. Each shared Param is made by
a function, so that every DAG gets a Param of its own (a DAG's ParamsDict keeps the object it is given).

Imported by dags/wmt_seq2seq*.py at parse time: nothing heavy here.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import Param

# The training DAG: the batch transform DAG reads its runs and its promoted-model pointer.
TRAINING_DAG_ID = "wmt_seq2seq"

# A cron expression or preset such as ``@weekly``; unset or ``none``: manual runs only.
TRAINING_SCHEDULE = os.environ.get("AIRFLOW_VAR_WMT_SEQ2SEQ_SCHEDULE", "").strip() or None
if TRAINING_SCHEDULE and TRAINING_SCHEDULE.lower() == "none":
    TRAINING_SCHEDULE = None
RETRIES = int(os.environ.get("AIRFLOW_VAR_WMT_SEQ2SEQ_RETRIES", "2"))
# Seconds between DescribeTrainingJob/DescribeTransformJob polls of the SageMaker operators.
CHECK_INTERVAL_S = int(os.environ.get("AIRFLOW_VAR_WMT_SEQ2SEQ_CHECK_INTERVAL", "60"))
DEFAULT_ROOT = os.environ.get("AIRFLOW_VAR_WMT_SEQ2SEQ_ARTIFACT_ROOT", "").strip() or os.path.join(
    os.environ.get("AIRFLOW_HOME", os.path.expanduser("~/airflow")), "wmt-seq2seq-artifacts")
DEFAULT_TRANSFORM_INPUT = os.environ.get("AIRFLOW_VAR_WMT_SEQ2SEQ_TRANSFORM_INPUT", "").strip() or None
# What a run starts from when its conf does not say (none | promoted | a model URI): ``promoted`` makes
# every scheduled run a warm-started retrain of the promoted model.
DEFAULT_INIT_MODEL = os.environ.get("AIRFLOW_VAR_WMT_SEQ2SEQ_INIT_MODEL", "").strip() or "none"
# Whether a person approves each promotion (``true``: scheduled runs wait for an answer, holding no worker slot).
DEFAULT_REQUIRE_APPROVAL = os.environ.get("AIRFLOW_VAR_WMT_SEQ2SEQ_REQUIRE_APPROVAL", "").strip().lower() == "true"

START_DATE = datetime(2026, 1, 1)
DEFAULT_ARGS: dict[str, Any] = {"retries": RETRIES, "retry_delay": timedelta(minutes=1)}

# The role in the requests of the local and docker backends, which assume none: every backend executes
# a request of the same shape.
PLACEHOLDER_ROLE_ARN = "arn:aws:iam::000000000000:role/local"


def role_arn(param: str | None) -> str:
    """The ``role_arn`` param, or the placeholder where it is null (local and docker)."""
    return param or PLACEHOLDER_ROLE_ARN


def backend_param(title: str, description: str) -> Param:
    """Where the jobs run; the same three backends in every DAG, each DAG saying what they run."""
    return Param("local", enum=["local", "docker", "sagemaker"], title=title, description=description)


def artifact_root_param(description: str) -> Param:
    """The root both DAGs read and write under, by default the same one."""
    return Param(DEFAULT_ROOT, type="string", minLength=1, title="Artifact root", description=description)


def image_param() -> Param:
    return Param("wmt-seq2seq:latest", type="string", minLength=1, title="Image",
                 description="Our image (ECR URI for sagemaker, a local tag for docker) or the built-in "
                             "seq2seq image URI for the region.")


def role_arn_param() -> Param:
    return Param(None, type=["string", "null"], title="SageMaker execution role",
                 description="IAM role ARN (or name) for the sagemaker backend; null for local and docker.")


def beam_size_param(title: str, description: str) -> Param:
    return Param(5, type="integer", minimum=1, title=title, description=description)


def max_output_length_param() -> Param:
    return Param(None, type=["integer", "null"], minimum=1, title="Max output length",
                 description="Most output tokens of a sentence (</s> counted); null: per "
                             "sentence, the training data's target/source length ratio + 2 "
                             "standard deviations times the source length.")
