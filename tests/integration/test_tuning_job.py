"""A CreateHyperParameterTuningJob request executed here (pipeline_tasks/jobs/local/tuning.py): real
training jobs of the local backend on the copy task, searched by Optuna. The best training job is the one
whose own result (describe.json, from its metric lines) has the best objective; parallelism, the job limit,
a failing trial, and warm start from a stored parent are checked on what the jobs did."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from pipeline_tasks.jobs.local.training import TRAIN_COMMAND_ENV
from pipeline_tasks.jobs.local.tuning import run_tuning_job
from pipeline_tasks.jobs.requests import training_job_config
from pipeline_tasks.jobs.tuning import TuningError, tuning_job_config
from tests.models import TINY_RNN
from tests.system.copy_task import make_sagemaker_tree

HYPERPARAMETERS = {**TINY_RNN, "max_num_batches": "40", "checkpoint_frequency_num_batches": "20",
                   "optimized_metric": "perplexity"}
RANGES = {"ContinuousParameterRanges": [{"Name": "learning_rate", "MinValue": "0.0005", "MaxValue": "0.03",
                                         "ScalingType": "Logarithmic"}],
          "IntegerParameterRanges": [{"Name": "num_embed_source", "MinValue": "8", "MaxValue": "32"}]}


@pytest.fixture(autouse=True)
def one_thread_training(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def training_request(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("tuning")
    data = make_sagemaker_tree(tmp / "copy-task", {}, n_train=600, n_val=60) / "input" / "data"
    return training_job_config(job_name="wmt-tune-job", image_uri="wmt-seq2seq:test", role_arn="arn:aws:iam::1:role/r",
                               channels={c: str(data / c) for c in ("train", "validation", "vocab")},
                               output_uri=str(tmp / "model"), hyperparameters=HYPERPARAMETERS)


def own_objective(summary: dict, output: str, metric: str) -> float:
    """The objective as the trial's training job itself recorded it (its metric lines)."""
    described = json.loads((Path(output) / summary["TrainingJobName"] / "output" / "describe.json").read_text())
    [value] = [m["Value"] for m in described["FinalMetricDataList"] if m["MetricName"] == metric]
    return value


def most_at_once(summaries: list[dict]) -> int:
    events = sorted([(s["TrainingStartTime"], 1) for s in summaries] + [(s["TrainingEndTime"], -1) for s in summaries])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def test_trials_run_in_parallel_up_to_the_limits_and_the_best_is_the_best(training_request, tmp_path):
    request = tuning_job_config(job_name="tune-random-1", training_request=training_request,
                                objective="validation:perplexity", ranges=RANGES, strategy="Random", max_jobs=4,
                                max_parallel=2, random_seed=3)
    result = run_tuning_job(request, "local", store=str(tmp_path / "store"), workdir=str(tmp_path / "jobs"))
    summaries = result["TrainingJobSummaries"]
    assert len(summaries) == 4 and result["HyperParameterTuningJobStatus"] == "Completed"
    assert result["TrainingJobStatusCounters"] == {"Completed": 4, "InProgress": 0, "RetryableError": 0,
                                                   "NonRetryableError": 0, "Stopped": 0}
    assert most_at_once(summaries) == 2
    output = training_request["OutputDataConfig"]["S3OutputPath"]
    own = {s["TrainingJobName"]: own_objective(s, output, "validation:perplexity") for s in summaries}
    assert result["BestTrainingJob"]["TrainingJobName"] == min(own, key=own.get)
    assert result["BestTrainingJob"]["FinalHyperParameterTuningJobObjectiveMetric"] == {
        "Type": "Minimize", "MetricName": "validation:perplexity", "Value": min(own.values())}
    for s in summaries:  # each trial trained with its tuned values on top of the static ones
        assert s["TrainingJobName"].startswith("tune-random-1-0")
        assert set(s["TunedHyperParameters"]) == {"learning_rate", "num_embed_source"}
        assert 0.0005 <= float(s["TunedHyperParameters"]["learning_rate"]) <= 0.03
        assert 8 <= int(s["TunedHyperParameters"]["num_embed_source"]) <= 32
    stored = json.loads((tmp_path / "store" / "tune-random-1.json").read_text())
    assert stored["Describe"]["BestTrainingJob"] == result["BestTrainingJob"]
    again = run_tuning_job(request, "local", store=str(tmp_path / "store"), workdir=str(tmp_path / "jobs"))
    assert again["TrainingJobSummaries"] == summaries  # a retried task gets the stored result, no new trials

    # A warm start: the child's sampler starts from the parent's four trials; a parent with another objective
    # is refused before any trial runs.
    child = tuning_job_config(job_name="tune-random-2", training_request=training_request,
                              objective="validation:perplexity", ranges=RANGES, strategy="Bayesian", max_jobs=1,
                              parents=["tune-random-1"])
    warm = run_tuning_job(child, "local", store=str(tmp_path / "store"), workdir=str(tmp_path / "jobs"))
    assert warm["Backend"]["WarmStartTrials"] == 4 and len(warm["TrainingJobSummaries"]) == 1
    assert warm["WarmStartConfig"]["ParentHyperParameterTuningJobs"] == [{"HyperParameterTuningJobName":
                                                                          "tune-random-1"}]
    other = tuning_job_config(job_name="tune-bleu-1", training_request=training_request, objective="validation:bleu",
                              ranges=RANGES, max_jobs=1, parents=["tune-random-1"])
    with pytest.raises(TuningError, match="optimised Minimize validation:perplexity, this one Maximize "
                                          "validation:bleu: the objective must be the same"):
        run_tuning_job(other, "local", store=str(tmp_path / "store"), workdir=str(tmp_path / "jobs"))
    more = {**training_request, "HyperParameters": {**training_request["HyperParameters"], "clip_gradient": "1"}}
    other_names = tuning_job_config(job_name="tune-random-3", training_request=more,
                                    objective="validation:perplexity", ranges=RANGES, max_jobs=1,
                                    parents=["tune-random-1"], warm_start_type="TransferLearning")
    with pytest.raises(TuningError, match="clip_gradient in one but not the other"):
        run_tuning_job(other_names, "local", store=str(tmp_path / "store"), workdir=str(tmp_path / "jobs"))
    with pytest.raises(TuningError, match="parent tuning job tune-none has no stored result"):
        run_tuning_job({**child, "HyperParameterTuningJobName": "tune-random-4", "WarmStartConfig": {
            "ParentHyperParameterTuningJobs": [{"HyperParameterTuningJobName": "tune-none"}],
            "WarmStartType": "TransferLearning"}}, "local", store=str(tmp_path / "store"))


def test_a_failing_trial_is_counted_and_the_search_goes_on(training_request, tmp_path):
    # rnn_num_hidden 33 passes the range check but not the container's (a bidirectional encoder needs an even
    # size): that training job fails at its start; the other completes and is the best.
    ranges = {"CategoricalParameterRanges": [{"Name": "rnn_num_hidden", "Values": ["32", "33"]}]}
    request = tuning_job_config(job_name="tune-grid-1", training_request=training_request,
                                objective="validation:perplexity", ranges=ranges, strategy="Grid", max_jobs=None)
    result = run_tuning_job(request, "local", store=str(tmp_path / "store"), workdir=str(tmp_path / "jobs"))
    by_value = {s["TunedHyperParameters"]["rnn_num_hidden"]: s for s in result["TrainingJobSummaries"]}
    assert set(by_value) == {"32", "33"}  # the grid: every value once
    assert by_value["33"]["TrainingJobStatus"] == "Failed" and by_value["33"]["ObjectiveStatus"] == "Failed"
    assert "rnn_num_hidden" in by_value["33"]["FailureReason"]
    assert result["TrainingJobStatusCounters"]["NonRetryableError"] == 1
    assert result["TrainingJobStatusCounters"]["Completed"] == 1
    assert result["ObjectiveStatusCounters"] == {"Succeeded": 1, "Pending": 0, "Failed": 1}
    assert result["BestTrainingJob"]["TrainingJobName"] == by_value["32"]["TrainingJobName"]


STAND_IN_TRAIN = """
import json, os, sys, time
from pathlib import Path
root = Path(os.environ["SAGEMAKER_BASE_DIR"])
hp = json.loads((root / "input/config/hyperparameters.json").read_text())
perplexity = 10.0 if float(hp["learning_rate"]) > 0.01 else 100.0   # a good and a bad learning rate
for checkpoint in range(6):
    print(f"validation:perplexity={perplexity}", flush=True)
    time.sleep(0.5)
(root / "model").mkdir(exist_ok=True)
(root / "model" / "params.pt").write_text("weights")
"""


def test_early_stopping_stops_a_trial_worse_than_the_median_at_its_checkpoint(training_request, tmp_path,
                                                                               monkeypatch):
    # A stand-in for container/train (the contract: $SAGEMAKER_BASE_DIR, metric lines, /opt/ml/model) whose
    # objective depends on the tuned value only, so that which trial is stopped is certain.
    script = tmp_path / "train.py"
    script.write_text(STAND_IN_TRAIN)
    monkeypatch.setenv(TRAIN_COMMAND_ENV, f"{sys.executable} {script}")
    ranges = {"CategoricalParameterRanges": [{"Name": "learning_rate", "Values": ["0.02", "0.001"]}]}
    request = tuning_job_config(job_name="tune-stop-1", training_request=training_request,
                                objective="validation:perplexity", ranges=ranges, strategy="Grid", max_jobs=None,
                                early_stopping="Auto")
    result = run_tuning_job(request, "local", store=str(tmp_path / "store"), workdir=str(tmp_path / "jobs"))
    by_value = {s["TunedHyperParameters"]["learning_rate"]: s for s in result["TrainingJobSummaries"]}
    assert by_value["0.02"]["TrainingJobStatus"] == "Completed"
    stopped = by_value["0.001"]
    assert stopped["TrainingJobStatus"] == "Stopped"  # at its first checkpoint: 100 against a median of 10
    assert stopped["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] == 100.0
    output = training_request["OutputDataConfig"]["S3OutputPath"]
    assert not (Path(output) / stopped["TrainingJobName"] / "output" / "describe.json").exists()  # no model left
    assert result["TrainingJobStatusCounters"]["Stopped"] == 1
    assert result["BestTrainingJob"]["TrainingJobName"] == by_value["0.02"]["TrainingJobName"]


def test_the_command_line_runs_a_request_file_and_prints_the_result(training_request, tmp_path):
    import subprocess

    request = tuning_job_config(job_name="tune-cli-1", training_request=training_request,
                                objective="validation:perplexity", ranges=RANGES, strategy="Random", max_jobs=2,
                                max_parallel=2)
    (tmp_path / "request.json").write_text(json.dumps(request))
    done = subprocess.run([sys.executable, "-m", "pipeline_tasks", "tune", "--request", str(tmp_path / "request.json"),
                           "--workdir", str(tmp_path / "jobs")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["HyperParameterTuningJobStatus"] == "Completed" and len(result["TrainingJobSummaries"]) == 2
    names = {s["TrainingJobName"] for s in result["TrainingJobSummaries"]}
    assert result["BestTrainingJob"]["TrainingJobName"] in names
    store = Path(training_request["OutputDataConfig"]["S3OutputPath"]) / "tuning-jobs" / "tune-cli-1.json"
    assert json.loads(store.read_text())["Describe"]["BestTrainingJob"] == result["BestTrainingJob"]
    bad = {**request, "HyperParameterTuningJobName": "tune-cli-2", "HyperParameterTuningJobConfig": {
        **request["HyperParameterTuningJobConfig"], "ParameterRanges": {"IntegerParameterRanges": [
            {"Name": "num_layers_encoder", "MinValue": "4", "MaxValue": "2"}]}}}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    done = subprocess.run([sys.executable, "-m", "pipeline_tasks", "tune", "--request", str(tmp_path / "bad.json")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "tuning range of num_layers_encoder: MinValue 4 > MaxValue 2" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_tuning_jobs_runtime_limit_stops_the_running_trial_and_starts_no_more(training_request, tmp_path,
                                                                                 monkeypatch):
    script = tmp_path / "train.py"
    script.write_text(STAND_IN_TRAIN)  # six checkpoints, half a second apart
    monkeypatch.setenv(TRAIN_COMMAND_ENV, f"{sys.executable} {script}")
    ranges = {"CategoricalParameterRanges": [{"Name": "learning_rate", "Values": ["0.02", "0.001", "0.005"]}]}
    request = tuning_job_config(job_name="tune-limit-1", training_request=training_request,
                                objective="validation:perplexity", ranges=ranges, strategy="Random", max_jobs=3)
    # Beneath SageMaker's 120 s minimum, which the request builder enforces: the executor takes what it is given.
    request["HyperParameterTuningJobConfig"]["ResourceLimits"]["MaxRuntimeInSeconds"] = 1
    result = run_tuning_job(request, "local", store=str(tmp_path / "store"), workdir=str(tmp_path / "jobs"))
    [trial] = result["TrainingJobSummaries"]  # no trial starts once the limit has passed
    assert trial["TrainingJobStatus"] == "Stopped"
    assert result["TrainingJobStatusCounters"]["Stopped"] == 1
