"""The SageMaker requests the DAG submits, and the checks made before anyone runs one (docs/ARCHITECTURE.md §5).

:func:`training_job_config` builds the boto3 ``create_training_job`` request and
:func:`transform_job_config` the ``{"Model": CreateModel, "Transform": CreateTransformJob}`` pair: the
dicts that the ``sagemaker`` backend submits through the amazon provider's operators and that the
``local`` and ``docker`` backends execute (pipeline_tasks/jobs/local/), so a DAG run means the same job
whichever backend runs it. :func:`model_package_config` is the ``create_model_package`` request that puts a
promoted model in the SageMaker Model Registry.

Three kinds of check: the builders validate their arguments (hyperparameters with the container's own
parser, so a typo fails the DAG task in seconds rather than a paid job in minutes);
:func:`check_sagemaker_request` wants S3 everywhere before a request goes to AWS; and
:func:`check_training_request` / :func:`check_transform_request` reject, before a local run, what the
API would reject and what the local emulation does not implement. A malformed request is a
``ValueError``, as the API would reject it. Nothing here imports torch or Airflow.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from model.constants import (
    CHANNEL_CONTENT_TYPES,
    CHECKPOINT_LOCAL_PATH,
    JSON_CONTENT_TYPE,
    JSONLINES_CONTENT_TYPE,
    MODEL_CHANNEL,
    MODEL_CONTENT_TYPE,
    PARENT_MODEL_URI_ENV,
    TRAIN_CHANNEL,
)
from model.distributed import FULLY_REPLICATED, SHARDED_BY_S3_KEY
from model.hyperparameters import format_value, parse_hyperparameters
from model.metrics import METRIC_DEFINITIONS
from pipeline_tasks.jobs.names import validate_job_name
from pipeline_tasks.transform import TransformConfig

MAX_RUNTIME_LIMIT_S = 28 * 24 * 3600          # SageMaker's cap on MaxRuntimeInSeconds
MAX_HYPERPARAMETER_VALUE_CHARS = 2500         # the API's limit per value
# ModelApprovalStatus values of a model package (the Model Registry's states).
APPROVED, PENDING_MANUAL_APPROVAL, REJECTED = "Approved", "PendingManualApproval", "Rejected"
MAX_METADATA_VALUE_CHARS = 256                # CustomerMetadataProperties: values up to 256 characters
# The built-in seq2seq algorithm's image: <account>.dkr.ecr.<region>.amazonaws.com[.cn]/seq2seq:<tag>.
_BUILTIN_IMAGE = re.compile(r"^\d{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com(\.cn)?/seq2seq([:@].*)?$")


def is_builtin_image(image_uri: str) -> bool:
    """Whether `image_uri` is SageMaker's built-in seq2seq image (which takes no ``model`` channel and none
    of our extension hyperparameters), rather than this project's container."""
    return bool(_BUILTIN_IMAGE.match(image_uri.strip()))


def _mismatches(wanted: Mapping[str, tuple[Any, Any]]) -> list[tuple[str, Any, Any]]:
    """(setting, value, what the local backends implement) for every setting that differs."""
    return [(k, got, want) for k, (got, want) in wanted.items() if got != want]


# --- training ----------------------------------------------------------------------------------------------

def hyperparameter_strings(hyperparameters: Mapping[str, Any]) -> dict[str, str]:
    """SageMaker passes hyperparameters as strings; booleans and none are spelt as the container's parser
    reads them (``true``/``false``/``none``), floats as their shortest exact form."""
    out: dict[str, str] = {}
    for name, value in hyperparameters.items():
        if not isinstance(name, str):
            raise ValueError(f"hyperparameter names must be strings, got {name!r}")
        try:
            text = format_value(value)
        except TypeError:
            raise ValueError(f"hyperparameter {name}: {type(value).__name__} value {value!r} cannot be passed to a "
                             "training job (use a string, number, boolean or None)") from None
        if len(text) > MAX_HYPERPARAMETER_VALUE_CHARS:
            raise ValueError(f"hyperparameter {name}: value longer than {MAX_HYPERPARAMETER_VALUE_CHARS} characters")
        out[name] = text
    return out


def training_job_config(*, job_name: str, image_uri: str, role_arn: str, channels: Mapping[str, str],
                        output_uri: str, hyperparameters: Mapping[str, Any],
                        instance_type: str = "ml.p3.2xlarge", instance_count: int = 1, volume_gb: int = 50,
                        max_runtime_s: int = 86400, use_spot: bool = False, max_wait_s: int | None = None,
                        checkpoint_uri: str | None = None, model_uri: str | None = None,
                        tags: Mapping[str, str] | None = None,
                        train_distribution: str = FULLY_REPLICATED) -> dict[str, Any]:
    """The boto3 ``create_training_job`` request (what SageMakerTrainingOperator takes and
    pipeline_tasks.jobs.local.training.run_training_job executes).

    `channels` maps train/validation/vocab to an S3 prefix (or, for the local backends, a path or file://
    URI). Hyperparameters are validated here with the container's own parser, so a typo fails the DAG
    task in seconds rather than a paid training job in minutes. With `use_spot`, MaxWaitTimeInSeconds
    defaults to twice the runtime (room to wait for capacity) and must be at least MaxRuntimeInSeconds.

    `model_uri` (a model.tar.gz or a model folder) makes it a warm start: a fourth channel, ``model``, as
    SageMaker passes a model for incremental training, and the URI in the job's Environment so that the
    trained model can record where its parent came from.

    `train_distribution` is the training channel's S3DataDistributionType: FullyReplicated (every instance
    gets every file) or ShardedByS3Key (each instance about 1/N of the files: write the channel as at least
    as many shards as instances). Validation and vocab stay FullyReplicated: the leader evaluates on all
    of it, and every rank needs the vocabularies."""
    validate_job_name(job_name)
    if train_distribution not in (FULLY_REPLICATED, SHARDED_BY_S3_KEY):
        raise ValueError(f"train_distribution must be {FULLY_REPLICATED} or {SHARDED_BY_S3_KEY}, "
                         f"got {train_distribution!r}")
    for what, value in (("image_uri", image_uri), ("role_arn", role_arn), ("output_uri", output_uri)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    unknown = sorted(set(channels) - set(CHANNEL_CONTENT_TYPES))
    missing = [c for c in CHANNEL_CONTENT_TYPES if c not in channels]
    if unknown or missing:
        raise ValueError(f"channels must be exactly {', '.join(CHANNEL_CONTENT_TYPES)}"
                         + (f"; missing: {', '.join(missing)}" if missing else "")
                         + (f"; unknown: {', '.join(unknown)}" if unknown else ""))
    for name, uri in channels.items():
        if not isinstance(uri, str) or not uri:
            raise ValueError(f"channel {name!r}: the URI must be a non-empty string, got {uri!r}")
    if model_uri is not None and (not isinstance(model_uri, str) or not model_uri):
        raise ValueError(f"model_uri must be a non-empty string or None, got {model_uri!r}")
    if model_uri and is_builtin_image(image_uri):
        raise ValueError(f"image {image_uri} is the built-in seq2seq algorithm, which takes no '{MODEL_CHANNEL}' "
                         "channel (no warm start): use this project's image")
    strings = hyperparameter_strings(hyperparameters)
    parse_hyperparameters(strings)  # raises HyperparameterError (a ValueError) naming the bad one
    if instance_count < 1 or volume_gb < 1:
        raise ValueError(f"instance_count and volume_gb must be >= 1, got {instance_count} and {volume_gb}")
    if not 1 <= max_runtime_s <= MAX_RUNTIME_LIMIT_S:
        raise ValueError(f"max_runtime_s must be 1..{MAX_RUNTIME_LIMIT_S} (28 days), got {max_runtime_s}")
    stopping: dict[str, int] = {"MaxRuntimeInSeconds": int(max_runtime_s)}
    if use_spot:
        wait = 2 * max_runtime_s if max_wait_s is None else max_wait_s
        if wait < max_runtime_s:
            raise ValueError(f"max_wait_s ({wait}) must be >= max_runtime_s ({max_runtime_s}) for spot training")
        stopping["MaxWaitTimeInSeconds"] = int(wait)
    elif max_wait_s is not None:
        raise ValueError("max_wait_s applies to managed spot training only (use_spot=True)")
    request: dict[str, Any] = {
        "TrainingJobName": job_name,
        "AlgorithmSpecification": {
            "TrainingImage": image_uri,
            "TrainingInputMode": "File",
            "MetricDefinitions": [dict(d) for d in METRIC_DEFINITIONS],
        },
        "RoleArn": role_arn,
        "InputDataConfig": [
            {
                "ChannelName": name,
                "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": channels[name],
                                                "S3DataDistributionType": train_distribution
                                                if name == TRAIN_CHANNEL else FULLY_REPLICATED}},
                "ContentType": content_type,
                "CompressionType": "None",
            }
            for name, content_type in CHANNEL_CONTENT_TYPES.items()
        ] + ([{
            "ChannelName": MODEL_CHANNEL,
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": model_uri,
                                            "S3DataDistributionType": "FullyReplicated"}},
            "ContentType": MODEL_CONTENT_TYPE,
            "CompressionType": "None",
        }] if model_uri else []),
        "OutputDataConfig": {"S3OutputPath": output_uri},
        "ResourceConfig": {"InstanceType": instance_type, "InstanceCount": int(instance_count),
                           "VolumeSizeInGB": int(volume_gb)},
        "StoppingCondition": stopping,
        "HyperParameters": strings,
        "EnableManagedSpotTraining": bool(use_spot),
    }
    if model_uri:
        request["Environment"] = {PARENT_MODEL_URI_ENV: model_uri}
    if checkpoint_uri:
        request["CheckpointConfig"] = {"S3Uri": checkpoint_uri, "LocalPath": CHECKPOINT_LOCAL_PATH}
    if tags:
        request["Tags"] = [{"Key": str(k), "Value": str(v)} for k, v in sorted(tags.items())]
    return request


def check_training_request(config: Mapping[str, Any]) -> None:
    """Reject what the API would reject, and what this emulation does not implement (it would otherwise
    silently behave differently from SageMaker); every problem at once."""
    problems: list[str] = []
    name = config.get("TrainingJobName")
    try:
        validate_job_name(name)  # type: ignore[arg-type]
    except ValueError as e:
        problems.append(str(e))
    algo = config.get("AlgorithmSpecification")
    if not isinstance(algo, Mapping):
        problems.append("AlgorithmSpecification is missing")
    elif algo.get("TrainingInputMode") != "File":
        problems.append(f"unsupported TrainingInputMode {algo.get('TrainingInputMode')!r} (the local backends "
                        "implement File mode)")
    channels = config.get("InputDataConfig")
    if not isinstance(channels, list) or not channels:
        problems.append("InputDataConfig must be a non-empty list of channels")
        channels = []
    seen: set[str] = set()
    for i, ch in enumerate(channels):
        cname = ch.get("ChannelName") if isinstance(ch, Mapping) else None
        if not isinstance(cname, str) or not re.fullmatch(r"[A-Za-z0-9.\-_]{1,64}", cname):
            problems.append(f"InputDataConfig[{i}]: bad or missing ChannelName {cname!r}")
            continue
        if cname in seen:
            problems.append(f"channel {cname!r} appears twice")
        seen.add(cname)
        s3 = ch.get("DataSource", {}).get("S3DataSource") if isinstance(ch.get("DataSource"), Mapping) else None
        if not isinstance(s3, Mapping) or not isinstance(s3.get("S3Uri"), str) or not s3["S3Uri"]:
            problems.append(f"channel {cname!r}: DataSource.S3DataSource.S3Uri is missing")
            continue
        distribution = s3.get("S3DataDistributionType", FULLY_REPLICATED)
        if distribution not in (FULLY_REPLICATED, SHARDED_BY_S3_KEY):
            problems.append(f"channel {cname!r}: S3DataDistributionType must be {FULLY_REPLICATED} or "
                            f"{SHARDED_BY_S3_KEY}, got {distribution!r}")
        wanted = {"S3DataType": (s3.get("S3DataType"), "S3Prefix"),
                  "CompressionType": (ch.get("CompressionType", "None"), "None"),
                  "InputMode": (ch.get("InputMode", "File"), "File")}
        problems += [f"channel {cname!r}: unsupported {k}={got!r} (the local backends implement {want!r})"
                     for k, got, want in _mismatches(wanted)]
    resources = config.get("ResourceConfig") or {}
    count = resources.get("InstanceCount", 1) if isinstance(resources, Mapping) else None
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        problems.append(f"ResourceConfig.InstanceCount must be a whole number >= 1, got {count!r}")
    output = config.get("OutputDataConfig")
    if not isinstance(output, Mapping) or not isinstance(output.get("S3OutputPath"), str) or not output["S3OutputPath"]:
        problems.append("OutputDataConfig.S3OutputPath is missing")
    stopping = config.get("StoppingCondition")
    runtime = stopping.get("MaxRuntimeInSeconds") if isinstance(stopping, Mapping) else None
    if isinstance(runtime, bool) or not isinstance(runtime, int | float) or runtime <= 0:
        problems.append(f"StoppingCondition.MaxRuntimeInSeconds must be a positive number, got {runtime!r}")
    hps = config.get("HyperParameters", {})
    if not isinstance(hps, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in hps.items()):
        problems.append("HyperParameters must map strings to strings (SageMaker passes them as strings)")
    environment = config.get("Environment", {})
    if not isinstance(environment, Mapping) or not all(
            isinstance(k, str) and re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]{0,511}", k) and isinstance(v, str)
            for k, v in environment.items()):
        problems.append("Environment must map variable names ([a-zA-Z_][a-zA-Z0-9_]*) to strings")
    ckpt = config.get("CheckpointConfig")
    if ckpt is not None:
        if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("S3Uri"), str) or not ckpt["S3Uri"]:
            problems.append("CheckpointConfig.S3Uri is missing")
        elif ckpt.get("LocalPath", CHECKPOINT_LOCAL_PATH) != CHECKPOINT_LOCAL_PATH:
            problems.append(f"CheckpointConfig.LocalPath {ckpt.get('LocalPath')!r}: the local backends map only "
                            f"{CHECKPOINT_LOCAL_PATH}, where the container writes its checkpoints")
    if problems:
        raise ValueError(f"malformed CreateTrainingJob request {name!r}: " + "; ".join(problems))


def check_sagemaker_request(config: Mapping[str, Any]) -> None:
    """The local backends read paths and file:// URIs; SageMaker reads S3 only. Call before submitting."""
    uris = [("channel " + ch["ChannelName"], ch["DataSource"]["S3DataSource"]["S3Uri"])
            for ch in config["InputDataConfig"]]
    uris.append(("OutputDataConfig.S3OutputPath", config["OutputDataConfig"]["S3OutputPath"]))
    if config.get("CheckpointConfig"):
        uris.append(("CheckpointConfig.S3Uri", config["CheckpointConfig"]["S3Uri"]))
    local = [f"{what}: {uri}" for what, uri in uris if not uri.startswith("s3://")]
    if local:
        raise ValueError("a SageMaker training job reads and writes S3 only; not s3:// URIs: " + "; ".join(local))


def request_fingerprint(config: Mapping[str, Any]) -> str:
    """sha256 of the request: a stored result is returned only for the request that produced it."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


# --- transform ---------------------------------------------------------------------------------------------

def transform_job_config(*, job_name: str, model_name: str, image_uri: str, model_data_url: str, role_arn: str,
                         input_uri: str, output_uri: str, instance_type: str = "ml.m5.xlarge",
                         instance_count: int = 1, cfg: TransformConfig | None = None,
                         max_payload_mb: int = 6, max_concurrent_transforms: int | None = None,
                         tags: dict[str, str] | None = None) -> dict[str, Any]:
    """``{"Model": CreateModel, "Transform": CreateTransformJob}``: what SageMakerTransformOperator takes
    and what pipeline_tasks.jobs.local.transform.run_transform_job executes locally. Decoding settings
    travel as the container's environment (the serve entrypoint reads them), so the endpoint decodes as
    the local transform does."""
    cfg = cfg or TransformConfig()
    if not 1 <= max_payload_mb <= 100:
        raise ValueError(f"max_payload_mb must be 1..100 (SageMaker's range), got {max_payload_mb}")
    env = cfg.decoding().to_env()
    model: dict[str, Any] = {
        "ModelName": model_name,
        "ExecutionRoleArn": role_arn,
        "PrimaryContainer": {"Image": image_uri, "ModelDataUrl": model_data_url, "Environment": env},
    }
    transform_job: dict[str, Any] = {
        "TransformJobName": job_name,
        "ModelName": model_name,
        "BatchStrategy": "MultiRecord",
        "MaxPayloadInMB": max_payload_mb,
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": input_uri}},
            "ContentType": JSONLINES_CONTENT_TYPE,
            "SplitType": "Line",
            "CompressionType": "None",
        },
        "TransformOutput": {"S3OutputPath": output_uri, "Accept": JSONLINES_CONTENT_TYPE, "AssembleWith": "Line"},
        "TransformResources": {"InstanceType": instance_type, "InstanceCount": instance_count},
    }
    if max_concurrent_transforms:
        transform_job["MaxConcurrentTransforms"] = max_concurrent_transforms
    if tags:
        tag_list = [{"Key": k, "Value": v} for k, v in sorted(tags.items())]
        model["Tags"] = tag_list
        transform_job["Tags"] = tag_list
    return {"Model": model, "Transform": transform_job}


def check_transform_request(job: Mapping[str, Any]) -> None:
    """The settings this emulation implements; anything else would silently behave differently."""
    tin, tout = job["TransformInput"], job["TransformOutput"]
    wanted = {"SplitType": (tin.get("SplitType"), "Line"), "BatchStrategy": (job.get("BatchStrategy"), "MultiRecord"),
              "AssembleWith": (tout.get("AssembleWith"), "Line"),
              "ContentType": (tin.get("ContentType"), JSONLINES_CONTENT_TYPE),
              "Accept": (tout.get("Accept"), JSONLINES_CONTENT_TYPE),
              "CompressionType": (tin.get("CompressionType", "None"), "None"),
              "S3DataType": (tin["DataSource"]["S3DataSource"].get("S3DataType"), "S3Prefix")}
    bad = [f"{k}={got!r} (expected {want!r})" for k, got, want in _mismatches(wanted)]
    if bad:
        raise ValueError("the local transform backend implements the JSON Lines transform only: " + ", ".join(bad))


def model_package_config(*, group: str, image_uri: str, model_data_url: str, status: str, description: str,
                         metrics_uri: str | None = None, transform_instance_type: str | None = None,
                         metadata: Mapping[str, Any] | None = None, cfg: TransformConfig | None = None,
                         client_token: str | None = None, tags: dict[str, str] | None = None) -> dict[str, Any]:
    """The boto3 ``create_model_package`` request: a new version in the language pair's model package
    group. The container is the one the batch transform runs, with the same decoding environment, so a
    deployment made from the package decodes as this pipeline's transform does; the evaluation's
    metrics.json is the package's model-quality statistics, and the run's identity and test scores are
    its customer metadata (what AWS-side deployment pipelines filter on). ``client_token`` makes the
    request idempotent: a retried task that sends it again gets the package its first try created."""
    if status not in (APPROVED, PENDING_MANUAL_APPROVAL, REJECTED):
        raise ValueError(f"ModelApprovalStatus must be {APPROVED}, {PENDING_MANUAL_APPROVAL} or {REJECTED}, "
                         f"got {status!r}")
    if not model_data_url.startswith("s3://"):
        raise ValueError(f"a model package's ModelDataUrl must be in S3, got {model_data_url!r}")
    content_types = [JSONLINES_CONTENT_TYPE, JSON_CONTENT_TYPE]
    spec: dict[str, Any] = {
        "Containers": [{"Image": image_uri, "ModelDataUrl": model_data_url,
                        "Environment": (cfg or TransformConfig()).decoding().to_env()}],
        "SupportedContentTypes": content_types,
        "SupportedResponseMIMETypes": content_types,
    }
    if transform_instance_type:
        spec["SupportedTransformInstanceTypes"] = [transform_instance_type]
    request: dict[str, Any] = {"ModelPackageGroupName": group, "ModelPackageDescription": description[:1024],
                               "InferenceSpecification": spec, "ModelApprovalStatus": status}
    if metrics_uri:
        request["ModelMetrics"] = {"ModelQuality": {"Statistics": {"ContentType": JSON_CONTENT_TYPE,
                                                                   "S3Uri": metrics_uri}}}
    if metadata:
        request["CustomerMetadataProperties"] = {
            str(k)[:128]: (v if isinstance(v, str) else format_value(v))[:MAX_METADATA_VALUE_CHARS]
            for k, v in metadata.items() if v is not None}
    if client_token:
        request["ClientToken"] = client_token
    if tags:
        request["Tags"] = [{"Key": k, "Value": v} for k, v in sorted(tags.items())]
    return request
