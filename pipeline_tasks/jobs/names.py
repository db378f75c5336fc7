"""Job names: one per run and try, the same whichever backend runs the job (docs/ARCHITECTURE.md §5).

SageMaker refuses a job name used before, so an Airflow retry needs a name of its own. The DAG builds
its requests with a placeholder name and our :data:`JOB_PREFIX_KEY`; whoever runs the request (the
SageMaker operators in seq2seq_airflow/operators.py, the local steps in pipeline_tasks/pipeline.py)
names it for the try with :func:`name_for_try`, which removes our key before AWS could see it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

JOB_PREFIX_KEY = "JobNamePrefix"  # ours, in the requests the DAG builds: the job name is made per try from it
JOB_NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
JOB_NAME_MAX = 63
TUNING_JOB_NAME_MAX = 32  # HyperParameterTuningJobName: trials are named <tuning job>-<NNN>-<8 hex>, within 63
_RUN_DATE_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})[T _](\d{2}):?(\d{2}):?(\d{2})?")


def validate_job_name(name: str, max_len: int = JOB_NAME_MAX) -> str:
    """`name` if SageMaker would accept it as a TrainingJobName (a HyperParameterTuningJobName with
    ``max_len=TUNING_JOB_NAME_MAX``), else a ValueError saying why: a bad name should stop the DAG at
    parse time, not after the data was uploaded."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"training job name must be a non-empty string, got {name!r}")
    if len(name) > max_len or not JOB_NAME_RE.fullmatch(name):
        raise ValueError(f"job name {name!r} is not valid for SageMaker: 1-{max_len} characters, "
                         "letters, digits and hyphens, starting and ending with a letter or digit "
                         f"(pattern {JOB_NAME_RE.pattern})")
    return name


def _sanitise(text: str) -> str:
    return re.sub(r"-+", "-", re.sub(r"[^a-zA-Z0-9]+", "-", text)).strip("-")


def job_name(prefix: str, run_id: str, try_number: int, max_len: int = JOB_NAME_MAX) -> str:
    """A valid job name of at most `max_len` characters that differs for every (prefix, run, try).

    SageMaker refuses a name used before, and an Airflow retry must not collide with the try it replaces,
    so the name carries a hash of prefix and run id (unique per run whatever their length) and the try
    number; the run's date, when the run id holds one, keeps it readable in the console (left out where
    it would not leave the prefix 8 characters: a tuning job's 32)."""
    if isinstance(try_number, bool) or not isinstance(try_number, int) or try_number < 0:
        raise ValueError(f"try_number must be an integer >= 0, got {try_number!r}")
    digest = hashlib.sha1(f"{prefix}\0{run_id}".encode()).hexdigest()[:8]
    m = _RUN_DATE_RE.search(run_id)
    date = f"{m[1]}{m[2]}{m[3]}-{m[4]}{m[5]}{m[6] or '00'}" if m else ""
    tail = "-".join(filter(None, [date, digest, f"t{try_number}"]))
    if len(tail) + 9 > max_len:
        tail = f"{digest}-t{try_number}"
    head = _sanitise(prefix)[: max_len - len(tail) - 1].rstrip("-") or "job"
    return validate_job_name(f"{head}-{tail}", max_len)


def _is_transform(request: Mapping[str, Any]) -> bool:
    """A ``{"Model", "Transform"}`` request, as opposed to a CreateTrainingJob one."""
    return "Transform" in request


def _is_tuning(request: Mapping[str, Any]) -> bool:
    """A CreateHyperParameterTuningJob request."""
    return "HyperParameterTuningJobConfig" in request


def job_name_prefix(request: Mapping[str, Any]) -> str:
    """What the request's per-try names are made from: our key, else the name it was built with."""
    prefix = request.get(JOB_PREFIX_KEY)
    if prefix:
        return prefix
    if _is_transform(request):
        return request["Transform"]["TransformJobName"]
    return request["HyperParameterTuningJobName"] if _is_tuning(request) else request["TrainingJobName"]


def name_for_try(request: dict[str, Any], run_id: str, try_number: int, name: str | None = None) -> str:
    """Name `request` (in place) for this try and remove our key; returns the name. A transform's model
    takes the job's name too: each try creates its own. `name`: the one this try already has (a
    deferred try that resumes keeps the job it started)."""
    name = name or job_name(job_name_prefix(request), run_id, try_number,
                            TUNING_JOB_NAME_MAX if _is_tuning(request) else JOB_NAME_MAX)
    request.pop(JOB_PREFIX_KEY, None)
    if _is_tuning(request):
        request["HyperParameterTuningJobName"] = name
    elif _is_transform(request):
        request["Transform"]["TransformJobName"] = request["Transform"]["ModelName"] = name
        request["Model"]["ModelName"] = name
    else:
        request["TrainingJobName"] = name
    return name
