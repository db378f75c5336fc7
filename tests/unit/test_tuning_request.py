"""The CreateHyperParameterTuningJob request (pipeline_tasks/jobs/tuning.py): made from the training request
that a single run submits, with ranges checked against the container's hyperparameter spec before any data
work; and, against moto's SageMaker API, accepted in that exact shape."""

from __future__ import annotations

import pytest

from model.metrics import METRIC_DEFINITIONS
from pipeline_tasks.jobs.requests import training_job_config
from pipeline_tasks.jobs.tuning import TuningError, check_parameter_ranges, tuning_job_config

CHANNELS = {"train": "s3://b/run/channels/train", "validation": "s3://b/run/channels/validation",
            "vocab": "s3://b/run/channels/vocab"}
TRAINING = training_job_config(
    job_name="wmt-seq2seq-20261201-101500-ab12cd34-t1", image_uri="123456789012.dkr.ecr.us-east-1.amazonaws.com/w:1",
    role_arn="arn:aws:iam::123456789012:role/SageMakerRole", channels=CHANNELS, output_uri="s3://b/run/model",
    hyperparameters={"rnn_num_hidden": 64, "learning_rate": 0.0003, "max_num_batches": 400},
    checkpoint_uri="s3://b/run/model/checkpoints", tags={"dag_id": "wmt_seq2seq"})
RANGES = {"ContinuousParameterRanges": [{"Name": "learning_rate", "MinValue": 0.0001, "MaxValue": "0.01",
                                         "ScalingType": "Logarithmic"}],
          "IntegerParameterRanges": [{"Name": "rnn_num_hidden", "MinValue": 32, "MaxValue": 256}],
          "CategoricalParameterRanges": [{"Name": "optimizer_type", "Values": ["adam", "rmsprop"]}]}


def test_the_tuning_request_is_the_training_request_with_ranges():
    request = tuning_job_config(job_name="wmt-tune-20261201-101500-t1", training_request=TRAINING,
                                objective="validation:bleu", ranges=RANGES, max_jobs=6, max_parallel=2,
                                early_stopping="Auto", parents=["wmt-tune-20261124-101500-t1"])
    assert request == {
        "HyperParameterTuningJobName": "wmt-tune-20261201-101500-t1",
        "HyperParameterTuningJobConfig": {
            "Strategy": "Bayesian",
            "HyperParameterTuningJobObjective": {"Type": "Maximize", "MetricName": "validation:bleu"},
            "ResourceLimits": {"MaxParallelTrainingJobs": 2, "MaxNumberOfTrainingJobs": 6},
            "ParameterRanges": {
                "IntegerParameterRanges": [{"Name": "rnn_num_hidden", "MinValue": "32", "MaxValue": "256",
                                            "ScalingType": "Auto"}],
                "ContinuousParameterRanges": [{"Name": "learning_rate", "MinValue": "0.0001", "MaxValue": "0.01",
                                               "ScalingType": "Logarithmic"}],
                "CategoricalParameterRanges": [{"Name": "optimizer_type", "Values": ["adam", "rmsprop"]}]},
            "TrainingJobEarlyStoppingType": "Auto"},
        "TrainingJobDefinition": {
            "AlgorithmSpecification": {"TrainingImage": "123456789012.dkr.ecr.us-east-1.amazonaws.com/w:1",
                                       "TrainingInputMode": "File", "MetricDefinitions": METRIC_DEFINITIONS},
            "RoleArn": "arn:aws:iam::123456789012:role/SageMakerRole",
            "InputDataConfig": TRAINING["InputDataConfig"],
            "OutputDataConfig": {"S3OutputPath": "s3://b/run/model"},
            "ResourceConfig": TRAINING["ResourceConfig"],
            "StoppingCondition": {"MaxRuntimeInSeconds": 86400},
            "StaticHyperParameters": {"max_num_batches": "400"},  # the tuned names are taken out
            "EnableManagedSpotTraining": False},  # no CheckpointConfig: trials would share its prefix
        "WarmStartConfig": {
            "ParentHyperParameterTuningJobs": [{"HyperParameterTuningJobName": "wmt-tune-20261124-101500-t1"}],
            "WarmStartType": "IdenticalDataAndAlgorithm"},
        "Tags": [{"Key": "dag_id", "Value": "wmt_seq2seq"}]}
    minimize = tuning_job_config(job_name="t", training_request=TRAINING, objective="validation:perplexity",
                                 ranges=RANGES, strategy="Random", max_jobs=3)
    assert minimize["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]["Type"] == "Minimize"
    grid = tuning_job_config(job_name="t", training_request=TRAINING, objective="validation:accuracy",
                             ranges={"CategoricalParameterRanges": RANGES["CategoricalParameterRanges"]},
                             strategy="Grid", max_jobs=None)
    assert grid["HyperParameterTuningJobConfig"]["ResourceLimits"] == {"MaxParallelTrainingJobs": 1}


@pytest.mark.parametrize("ranges,needle", [
    ({"IntegerParameterRanges": [{"Name": "rnn_num_hiden", "MinValue": 1, "MaxValue": 2}]},
     "tuning range of rnn_num_hiden: unknown hyperparameter(s): rnn_num_hiden (did you mean rnn_num_hidden?)"),
    ({"IntegerParameterRanges": [{"Name": "rnn_num_hidden", "MinValue": 256, "MaxValue": 32}]},
     "tuning range of rnn_num_hidden: MinValue 256 > MaxValue 32"),
    ({"ContinuousParameterRanges": [{"Name": "clip_gradient", "MinValue": 0, "MaxValue": 5,
                                     "ScalingType": "Logarithmic"}]},
     "tuning range of clip_gradient: Logarithmic scaling needs MinValue > 0, got 0"),
    ({"IntegerParameterRanges": [{"Name": "rnn_num_hidden", "MinValue": 32, "MaxValue": 64,
                                  "ScalingType": "ReverseLogarithmic"}]},
     "ReverseLogarithmic scaling is for continuous ranges only"),
    ({"ContinuousParameterRanges": [{"Name": "learning_rate", "MinValue": 0.1, "MaxValue": 2,
                                     "ScalingType": "ReverseLogarithmic"}]},
     "ReverseLogarithmic scaling needs 0 <= MinValue and MaxValue < 1, got 0.1..2"),
    ({"ContinuousParameterRanges": [{"Name": "rnn_num_hidden", "MinValue": 32, "MaxValue": 64}]},
     "rnn_num_hidden is an integer, so its range is Integer, not Continuous"),
    ({"CategoricalParameterRanges": [{"Name": "rnn_num_hidden", "Values": ["32", "big"]}]},
     "tuning range of rnn_num_hidden: value 'big': must be an integer"),
    ({"CategoricalParameterRanges": [{"Name": "optimizer_type", "Values": ["adam", "adamw"]}]},
     "tuning range of optimizer_type: value 'adamw': must be one of adam, sgd, rmsprop"),
    ({"ContinuousParameterRanges": [{"Name": "learning_rate", "MinValue": -1, "MaxValue": 0.1}]},
     "tuning range of learning_rate: MinValue -1: must be a float in (0, 10]"),
    ({"IntegerParameterRange": []}, "ParameterRanges: unknown key(s) IntegerParameterRange"),
    ({}, "ParameterRanges: no hyperparameter to tune"),
])
def test_bad_ranges_are_named(ranges, needle):
    with pytest.raises(TuningError) as e:
        check_parameter_ranges(ranges)
    assert needle in str(e.value)


def test_bad_tuning_settings_are_named():
    def config(**kw):
        return tuning_job_config(**{"job_name": "t", "training_request": TRAINING, "objective": "validation:bleu",
                                    "ranges": RANGES, **kw})
    with pytest.raises(TuningError, match="tunable on validation:bleu, validation:perplexity, validation:accuracy"):
        config(objective="validation:loss")
    with pytest.raises(TuningError, match="Grid searches categorical ranges only"):
        config(strategy="Grid", max_jobs=None)
    with pytest.raises(TuningError, match=r"MaxParallelTrainingJobs must be 1..MaxNumberOfTrainingJobs \(2\), got 3"):
        config(max_jobs=2, max_parallel=3)
    with pytest.raises(TuningError, match="Hyperband stops trials itself"):
        config(strategy="Hyperband", early_stopping="Auto")
    with pytest.raises(TuningError, match="at most 5 parent tuning jobs"):
        config(parents=[f"p{i}" for i in range(6)])
    with pytest.raises(TuningError, match="tuning job name 'wmt-seq2seq-20261201-101500-ab12cd34-t1'"):
        config(job_name=TRAINING["TrainingJobName"])  # 39 characters: a training job's name is too long here
    with pytest.raises(TuningError, match="also a static hyperparameter"):
        check_parameter_ranges(RANGES, {"optimizer_type": "adam"})


def test_moto_accepts_the_request_as_built(moto_endpoint):
    import boto3

    request = tuning_job_config(job_name="wmt-tune-20261201-101500-t1", training_request=TRAINING,
                                objective="validation:perplexity", ranges=RANGES, strategy="Hyperband", max_jobs=6,
                                max_parallel=2, hyperband={"MinResource": 1, "MaxResource": 10})
    client = boto3.client("sagemaker")
    client.create_hyper_parameter_tuning_job(**request)  # botocore checks the shape against the API model
    described = client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=request[
        "HyperParameterTuningJobName"])
    assert described["HyperParameterTuningJobConfig"] == request["HyperParameterTuningJobConfig"]
    assert described["TrainingJobDefinition"]["StaticHyperParameters"] == {"max_num_batches": "400"}
