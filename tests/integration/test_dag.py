"""The wmt_seq2seq DAG: it imports cleanly and lightly, and runs end to end with ``dag.test()`` on the
local backend, once with local storage and once with an s3:// artifact root on moto's server; bad
params fail at trigger time; a failing step publishes nothing a retry could take for whole; the gate.

Each DAG run happens in a fresh interpreter (tests/dag_runner.py) under a module-wide AIRFLOW_HOME with
a migrated SQLite database, because Airflow binds its configuration and database at import.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from pipeline_tasks import storage
from pipeline_tasks.runs import COMPLETE_MARKER
from tests.conftest import NEWSTEST, ROOT

DAGS = ROOT / "dags"
TINY_HP = {"max_seq_len_source": 30, "max_seq_len_target": 30, "batch_size": 32, "rnn_num_hidden": 32,
           "num_embed_source": 16, "num_embed_target": 16, "max_num_batches": 40,
           "checkpoint_frequency_num_batches": 20, "optimized_metric": "perplexity"}
TINY = {"corpus": "wmt-toy-ende-sample", "subset_size": 1000, "hyperparameters": TINY_HP,
        "num_words_source": 2000, "num_words_target": 2000, "beam_size": 1, "eval_max_sentences": 40,
        "gate": {"metric": "test:perplexity"}}
TASKS = {"plan", "parent_model", "download", "test_sets", "subset", "clean", "tokenize", "recordio", "upload",
         "training_request", "tuning_request", "tune_local", "tune_sagemaker",
         "training_backend", "train_local", "train_sagemaker", "trained", "evaluate", "gate", "promoted", "approval",
         "promote", "transform_request", "transform_backend", "transform_local", "transform_sagemaker", "publish",
         "finish_tracking"}


def run_dag(env: dict[str, str], conf: dict, work: Path, dag_id: str = "wmt_seq2seq", answer: dict | None = None
            ) -> dict:
    """tests/dag_runner.py's result and log; `answer`: how a person answers the run's approval request."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "conf.json").write_text(json.dumps(conf))
    answering = []
    if answer:
        (work / "answer.json").write_text(json.dumps(answer))
        answering = [str(work / "answer.json")]
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "dag_runner.py"), dag_id, str(work / "conf.json"),
                           str(work / "result.json"), *answering], env=env, capture_output=True, text=True,
                          timeout=900)
    (work / "log.txt").write_text(done.stdout + done.stderr)
    assert done.returncode == 0, done.stderr[-3000:]
    return {**json.loads((work / "result.json").read_text()), "log": done.stdout + done.stderr}


# --- parsing -------------------------------------------------------------------------------------------

def test_dagbag_imports_cleanly_fast_and_light(airflow_env: dict[str, str]) -> None:
    """No import errors; parse time printed; importing the DAG file loads no torch and makes no boto3 client."""
    code = """
import json, sys, time
import botocore.session
made = []
original = botocore.session.Session.create_client
botocore.session.Session.create_client = lambda self, *a, **k: made.append(a) or original(self, *a, **k)
from airflow.dag_processing.dagbag import DagBag
before = set(sys.modules)
t = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1])
seconds = time.perf_counter() - t
print(json.dumps({"errors": {k: v[-500:] for k, v in bag.import_errors.items()}, "dags": sorted(bag.dags),
                  "seconds": seconds, "torch": "torch" in sys.modules, "clients": len(made),
                  "new_heavy": sorted(m for m in set(sys.modules) - before
                                      if m.split(".")[0] in ("torch", "sacrebleu", "sentencepiece", "matplotlib"))}))
"""
    done = subprocess.run([sys.executable, "-c", code, str(DAGS)], env=airflow_env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"DagBag parse time: {report['seconds']:.3f} s for {report['dags']}")
    assert report["errors"] == {}
    assert report["dags"] == ["wmt_seq2seq", "wmt_seq2seq_batch_transform"]
    assert report["torch"] is False and report["clients"] == 0 and report["new_heavy"] == []
    assert report["seconds"] < 1.0


def test_the_dag_shape_params_and_schedule(airflow_env: dict[str, str]) -> None:
    code = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
dag = DagBag(dag_folder=sys.argv[1]).dags["wmt_seq2seq"]
print(json.dumps({"tasks": sorted(dag.task_ids), "schedule": str(dag.schedule), "catchup": dag.catchup,
                  "max_active_runs": dag.max_active_runs,
                  "params": {k: dag.params.get_param(k).schema for k in dag.params},
                  "descriptions": {k: dag.params.get_param(k).description for k in dag.params},
                  "defaults": {k: dag.params[k] for k in ("backend", "subset_size", "hyperparameters",
                                                          "require_approval", "register_model_package")},
                  "after_publish": sorted(dag.get_task("publish").downstream_task_ids),
                  "approval": [sorted(dag.get_task("approval").upstream_task_ids),
                               sorted(dag.get_task("approval").downstream_task_ids)],
                  "teardowns": sorted(t.task_id for t in dag.tasks if t.is_teardown)}))
"""
    env = {**airflow_env, "AIRFLOW_VAR_WMT_SEQ2SEQ_SCHEDULE": "@weekly"}
    done = subprocess.run([sys.executable, "-c", code, str(DAGS)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    info = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(info["tasks"]) == TASKS
    # The MLflow run ends after publish, whatever happened upstream, without deciding the run's state.
    assert info["after_publish"] == ["finish_tracking"] and info["teardowns"] == ["finish_tracking"]
    # A person's approval, when asked for, comes between the gate's decision and the promotion.
    assert info["approval"] == [["evaluate", "gate", "promoted", "trained"], ["promote"]]
    assert info["defaults"]["require_approval"] is False and info["defaults"]["register_model_package"] is False
    assert info["schedule"] == "@weekly" and info["catchup"] is False and info["max_active_runs"] == 1
    assert info["defaults"]["backend"] == "local" and info["defaults"]["subset_size"] == 10000
    assert info["defaults"]["hyperparameters"] == {
        "max_seq_len_source": 60, "max_seq_len_target": 60, "optimized_metric": "bleu", "batch_size": 64,
        "checkpoint_frequency_num_batches": 1000, "rnn_num_hidden": 512, "num_layers_encoder": 1,
        "num_layers_decoder": 1, "num_embed_source": 512, "num_embed_target": 512, "checkpoint_threshold": 3}
    for name, schema in info["params"].items():
        assert schema.get("title") and info["descriptions"][name], name
    assert info["params"]["backend"]["enum"] == ["local", "docker", "sagemaker"]
    code = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
dag = DagBag(dag_folder=sys.argv[1]).dags["wmt_seq2seq_batch_transform"]
print(json.dumps({"schedule": [a.name for a in dag.schedule], "catchup": dag.catchup}))
"""
    done = subprocess.run([sys.executable, "-c", code, str(DAGS)], env=airflow_env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"schedule": ["wmt_seq2seq_model"], "catchup": False}


# --- runs ---------------------------------------------------------------------------------------------

def _assert_run_tree(base: str, files: dict[str, int], transformed: bool = True) -> None:
    """docs/ARCHITECTURE.md §6's layout under <root>/<dag_id>/<run_id>/, each stage published whole (the
    batch transform's output only where the model was promoted)."""
    rel = {k[len(base) + 1:] if k.startswith(base) else k: v for k, v in files.items()}
    for stage in ("raw", "subset", "clean", "tok", "recordio", "eval"):
        assert f"{stage}/{COMPLETE_MARKER}" in rel, stage
    for name in ("channels/train/train.rec", "channels/validation/val.rec", "channels/vocab/vocab.src.json",
                 "channels/vocab/vocab.trg.json", "channels/vocab/tokenizer.json", "clean/clean-report.json",
                 "eval/metrics.json",
                 "eval/hypotheses.txt", "eval/report/index.html", "run.json"):
        assert name in rel, name
    assert any(k.startswith("model/") and k.endswith("/output/model.tar.gz") for k in rel)
    assert any(k.startswith("transform/output/") and k.endswith(".jsonl.out") for k in rel) == transformed


def test_local_backend_end_to_end_with_local_storage(airflow_env: dict[str, str], mlflow_server: str,
                                                    tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    airflow_env = {**airflow_env, "MLFLOW_TRACKING_URI": mlflow_server}  # every run is tracked there
    result = run_dag(airflow_env, {**TINY, "artifact_root": str(root)}, tmp_path / "run1")
    assert result["state"] == "success", result["log"][-3000:]
    skipped = {"train_sagemaker", "transform_sagemaker", "tune_local", "tune_sagemaker"}
    assert {t for t, s in result["tasks"].items() if s == "success"} == TASKS - skipped
    assert {t for t, s in result["tasks"].items() if s == "skipped"} == skipped
    run_dirs = [p for p in (root / "wmt_seq2seq").iterdir() if p.is_dir()]
    assert len(run_dirs) == 1
    base = run_dirs[0]
    _assert_run_tree(str(base), {str(p.relative_to(base)): 1 for p in base.rglob("*") if p.is_file()})
    summary = json.loads((base / "run.json").read_text())
    assert summary["promoted"] is True and summary["backend"] == "local"
    metrics = json.loads((base / "eval" / "metrics.json").read_text())
    assert summary["metrics"] == metrics["metrics"] and metrics["sentences"]["total"] == 40
    assert "BLEU" in result["log"] and "perplexity" in result["log"]
    with tarfile.open(summary["model"]) as tar:
        assert {"params.pt", "config.json", "vocab.src.json", "vocab.trg.json", "tokenizer.json"} <= set(tar.getnames())
    pointer = json.loads((root / "wmt_seq2seq" / "promoted.json").read_text())
    assert pointer["model"] == summary["model"] and pointer["metrics"] == metrics["metrics"]
    # The clean step dropped noisy training pairs, each counted, and passed validation and test through whole.
    cleaned = json.loads((base / "clean" / "clean-report.json").read_text())
    assert cleaned["train"]["pairs_in"] == 1000
    assert cleaned["train"]["pairs_out"] == len((base / "clean" / "train.en").read_text().splitlines())
    assert cleaned["train"]["pairs_in"] - cleaned["train"]["pairs_out"] == sum(cleaned["train"]["dropped"].values())
    assert 0 < cleaned["train"]["dropped_share"] < 0.05 and "clean train: " in result["log"]
    assert (base / "clean" / "test.en").read_bytes() == (base / "subset" / "test.en").read_bytes()
    assert cleaned["test"]["kept_all"] and cleaned["val"]["kept_all"]
    out = base / "transform" / "output" / "test.jsonl.out"
    test_lines = (ROOT / "pipeline_tasks/sample_data/wmt-toy-ende/test.en").read_text().count("\n")
    assert len(out.read_text().splitlines()) == test_lines

    # A second run whose model is worse by the gate's rule finishes as "not promoted", not failed.
    worse = {**TINY, "artifact_root": str(root), "hyperparameters": {**TINY_HP, "max_num_batches": 1,
                                                                     "checkpoint_frequency_num_batches": 1}}
    second = run_dag(airflow_env, worse, tmp_path / "run2")
    assert second["state"] == "success", second["log"][-3000:]
    assert second["tasks"]["promote"] == "skipped" and second["tasks"]["transform_local"] == "skipped"
    assert second["tasks"]["publish"] == "success" and "NOT PROMOTED" in second["log"]
    assert json.loads((root / "wmt_seq2seq" / "promoted.json").read_text()) == pointer

    # The standalone batch transform DAG (scheduled on the promoted-model Asset) uses the promoted model.
    batch = run_dag(airflow_env, {"artifact_root": str(root), "beam_size": 1}, tmp_path / "batch",
                    dag_id="wmt_seq2seq_batch_transform")
    assert batch["state"] == "success", batch["log"][-3000:]
    assert batch["tasks"] == {"transform_request": "success", "backend": "success", "transform_local": "success",
                              "transform_sagemaker": "skipped", "publish": "success"}
    outs = list((root / "wmt_seq2seq_batch_transform").glob("*/transform/output/test.jsonl.out"))
    assert len(outs) == 1 and len(outs[0].read_text().splitlines()) == test_lines
    assert pointer["model"] in batch["log"]

    # A weekly retrain: init_model=promoted on other training pairs, with tokenizer and vocabulary params
    # that the parent's tokenizer and vocabularies override.
    known = {p.name for p in (root / "wmt_seq2seq").iterdir() if p.is_dir()}
    retrain = {**TINY, "artifact_root": str(root), "init_model": "promoted", "subset_mode": "random",
               "subset_seed": 7, "bpe_vocab_size": 300, "num_words_source": 500, "num_words_target": 500}
    third = run_dag(airflow_env, retrain, tmp_path / "run3")
    assert third["state"] == "success", third["log"][-3000:]
    assert third["tasks"]["parent_model"] == "success"
    [child] = [p for p in (root / "wmt_seq2seq").iterdir() if p.is_dir() and p.name not in known]
    _assert_run_tree(str(child), {str(p.relative_to(child)): 1 for p in child.rglob("*") if p.is_file()})
    parent_base = Path(pointer["model"]).parents[3]  # <run>/model/<job>/output/model.tar.gz
    assert (parent_base / "run.json").is_file()
    # One vocabulary across runs: the parent's tokenizer (words, no subword model learned) and vocabularies.
    assert (child / "tok" / "tokenizer.json").read_bytes() == (parent_base / "tok" / "tokenizer.json").read_bytes()
    assert not list((child / "tok").glob("spm.*")) and "(whitespace, BPE 300) are not used" in third["log"]
    for name in ("vocab.src.json", "vocab.trg.json"):
        assert (json.loads((child / "channels" / "vocab" / name).read_text())
                == json.loads((parent_base / "channels" / "vocab" / name).read_text())), name
    report = json.loads((child / "recordio" / "recordio-report.json").read_text())
    assert report["vocab"]["reused_from"] == pointer["model"]
    assert report["train"]["source_unk_tokens"] > 0 and report["train"]["target_unk_tokens"] > 0
    # The training job got the parent in its model channel, and the child's model records it.
    [describe] = child.glob("model/*/output/describe.json")
    channels = {c["ChannelName"]: c for c in json.loads(describe.read_text())["InputDataConfig"]}
    assert set(channels) == {"train", "validation", "vocab", "model"}
    assert channels["model"]["DataSource"]["S3DataSource"]["S3Uri"] == pointer["model"]
    assert channels["model"]["ContentType"] == "application/x-sagemaker-model"
    summary3 = json.loads((child / "run.json").read_text())
    with tarfile.open(summary3["model"]) as tar:
        child_config = json.load(tar.extractfile("config.json"))
    with tarfile.open(pointer["model"]) as tar:
        parent_params = tar.extractfile("params.pt").read()
    assert child_config["parent"]["uri"] == pointer["model"]
    assert child_config["parent"]["params_sha256"] == hashlib.sha256(parent_params).hexdigest()
    # run.json and the report show parent and child on the same test set: the parent's scores are the ones
    # its own run measured (same model, sentences and settings).
    assert summary3["parent"]["model"] == pointer["model"] and summary3["parent"]["init_model"] == "promoted"
    assert summary3["parent"]["run_id"] == pointer["run_id"]
    assert summary3["parent"]["metrics"] == pytest.approx(pointer["metrics"])
    parent_eval = json.loads((child / "eval" / "parent" / "metrics.json").read_text())
    assert parent_eval["metrics"] == summary3["parent"]["metrics"]
    assert summary3["metrics"] == json.loads((child / "eval" / "metrics.json").read_text())["metrics"]
    assert "This model and its parent" in (child / "eval" / "report" / "index.html").read_text()

    # Run history on the real MLflow server: the three runs with their params, learning curves, test
    # metrics, data identity and outcome; the registry's champion is the model the pointer names.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("wmt_seq2seq")
    runs = {r.data.tags["airflow_run_id"]: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {result["run_id"], second["run_id"], third["run_id"]}
    first = runs[result["run_id"]]
    assert first.info.status == "FINISHED" and first.data.tags["promoted"] == "true"
    assert first.data.params["hyperparameters.rnn_num_hidden"] == "32" and first.data.params["subset_size"] == "1000"
    assert first.data.params["gate.metric"] == "test:perplexity" and first.data.tags["backend"] == "local"
    assert first.data.tags["training_job"] == summary["training_job"]
    assert first.data.tags["model_uri"] == summary["model"]
    assert len(first.data.tags["data.train.sha256"]) == 64 and first.data.tags["mlflow.source.git.commit"]
    assert [m.step for m in client.get_metric_history(first.info.run_id, "validation:perplexity")] == [20, 40]
    assert first.data.metrics["test:bleu"] == pytest.approx(metrics["metrics"]["test:bleu"])
    artifacts = {a.path for a in client.list_artifacts(first.info.run_id)} | \
        {a.path for a in client.list_artifacts(first.info.run_id, "eval")}
    assert {"run.json", "eval/metrics.json", "eval/training-metrics.json", "eval/report"} <= artifacts
    worse = runs[second["run_id"]]
    assert worse.info.status == "FINISHED" and worse.data.tags["promoted"] == "false"
    assert "needed at most" in worse.data.tags["gate"] and "registered_version" not in worse.data.tags
    retrained = runs[third["run_id"]]
    assert retrained.data.tags["parent_model"] == pointer["model"] and retrained.data.params["init_model"] == "promoted"
    assert retrained.data.metrics["parent.test:perplexity"] == pytest.approx(pointer["metrics"]["test:perplexity"])
    final = json.loads((root / "wmt_seq2seq" / "promoted.json").read_text())
    champion = client.get_model_version_by_alias("wmt-seq2seq-en-de", "champion")
    assert champion.tags["model_uri"] == final["model"] and champion.run_id == runs[final["run_id"]].info.run_id
    assert "model/model.tar.gz" in {a.path for a in client.list_artifacts(champion.run_id, "model")}
    promoted_runs = [r for r in runs.values() if r.data.tags["promoted"] == "true"]
    assert len(client.search_model_versions("name='wmt-seq2seq-en-de'")) == len(promoted_runs)


def test_local_backend_end_to_end_with_s3_on_moto(airflow_env: dict[str, str], mlflow_server: str, tmp_path: Path,
                                                  s3, bucket: str, moto_endpoint: str) -> None:
    env = {**airflow_env, **{k: v for k, v in os.environ.items() if k.startswith("AWS_") or k.lower() == "no_proxy"}}
    assert env["AWS_ENDPOINT_URL"] == moto_endpoint
    root = f"s3://{bucket}/pipeline"
    # ... with approval required, and the approver rejecting the gate's promotion through the REST API;
    # trained on a mix of two corpora (the second upsampled 2x), scored on two test sets, gated on the second.
    extra = tmp_path / "extra-corpus.tgz"  # a corpus is a catalog name, a URL or a file (here an archive)
    with tarfile.open(extra, "w:gz") as tar:
        for lang in ("en", "de"):
            lines = (ROOT / "pipeline_tasks/sample_data/wmt-toy-ende" / f"train.{lang}").read_text().splitlines()
            (tmp_path / f"extra.{lang}").write_text("\n".join(lines[-400:]) + "\n")
            tar.add(tmp_path / f"extra.{lang}", arcname=f"extra/train.{lang}")
    corpus = ["wmt-toy-ende-sample", {"source": str(extra), "layout": {"train": "train.{lang}"}, "weight": 2,
                                      "name": "extra"}]
    test_sets = ["test", {"name": "newstest2017", "source": str(NEWSTEST / "newstest2017.en-de.en"),
                          "reference": str(NEWSTEST / "newstest2017.en-de.de")}]
    tracking = {"enabled": True, "uri": mlflow_server, "experiment": "wmt_seq2seq_s3", "registered_model": None}
    conf = {**TINY, "artifact_root": root, "eval_max_sentences": 20, "tracking": tracking, "require_approval": True,
            "corpus": corpus, "test_sets": test_sets, "gate": {"metric": "test:perplexity", "test_set": "newstest2017"}}
    result = run_dag(env, conf, tmp_path / "run",
                     answer={"option": "Reject", "reason": "wait for the news domain data", "user": "reviewer"})
    assert result["state"] == "success", result["log"][-3000:]
    assert "Waiting for Human-in-the-loop input for tasks: ['approval']" in result["log"]
    assert "| test:perplexity |" in result["log"] and "promoted now (none yet)" in result["log"]  # what was asked
    assert result["tasks"]["approval"] == "success" and result["tasks"]["promote"] == "skipped"
    assert result["tasks"]["transform_local"] == "skipped" and result["tasks"]["publish"] == "success"
    assert "not promoted: rejected by reviewer: wait for the news domain data (the gate: no model promoted yet; " \
        in result["log"]
    files = storage.list_files(f"{root}/wmt_seq2seq")
    run_ids = {k.split("/")[0] for k in files if "/" in k}
    assert len(run_ids) == 1
    base = run_ids.pop()
    _assert_run_tree(base, files, transformed=False)

    def read(key: str) -> dict:
        return json.loads(s3.get_object(Bucket=bucket, Key=f"pipeline/wmt_seq2seq/{base}/{key}")["Body"].read())

    # The mix: the sample's pairs and the 400 extra pairs twice over, scaled to the 1,000 asked for.
    mixed = read("subset/subset-report.json")
    [(name, n, k), (extra_name, n_extra, k_extra)] = [(m["name"], m["pairs_available"], m["pairs_written"])
                                                      for m in mixed["sources"]]
    assert (name, extra_name, n_extra, k + k_extra) == ("wmt-toy-ende-sample", "extra", 400, 1000)
    assert k_extra == round(1000 * 2 * 400 / (n + 2 * 400)) and n > 9900
    assert mixed["splits_from"] == {"val": "wmt-toy-ende-sample", "test": "wmt-toy-ende-sample"}
    assert f"{base}/raw/extra/extra/train.en" in files and f"{base}/test_sets/newstest2017/reference.txt" in files
    # Two test sets, scored apart; the gate decided on newstest2017.
    evaluated = read("eval/metrics.json")
    assert list(evaluated["test_sets"]) == ["test", "newstest2017"]
    assert evaluated["metrics"]["newstest2017:perplexity"] == read("eval/test_sets/newstest2017/metrics.json")[
        "metrics"]["test:perplexity"]
    assert "newstest2017:perplexity" in result["log"] and "mean: BLEU" in result["log"]
    assert "promoted.json" not in files  # nothing promoted: the gate said yes, the approver no
    summary = json.loads(s3.get_object(Bucket=bucket, Key=f"pipeline/wmt_seq2seq/{base}/run.json")["Body"].read())
    assert summary["model"].startswith(f"s3://{bucket}/pipeline/wmt_seq2seq/{base}/model/")
    assert [t["name"] for t in summary["test_sets"]] == ["test", "newstest2017"]  # in the param's order
    assert summary["promoted"] is False and summary["transform_output"] is None
    assert summary["approval"] == {"required": True, "approved": False, "by": "reviewer",
                                   "at": summary["approval"]["at"], "reason": "wait for the news domain data",
                                   "timed_out": False, "model_package_arn": None}
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    [run] = client.search_runs([client.get_experiment_by_name("wmt_seq2seq_s3").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["promoted"] == "false"
    assert run.data.tags["approval.approved"] == "false" and run.data.tags["approval.by"] == "reviewer"
    assert run.data.tags["approval.reason"] == "wait for the news domain data"
    assert "registered_version" not in run.data.tags


def test_a_tuning_run_evaluates_and_promotes_its_best_trial(airflow_env: dict[str, str], mlflow_server: str,
                                                            tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    tracking = {"enabled": True, "uri": mlflow_server, "experiment": "wmt_seq2seq_tune", "registered_model": None}
    tuning = {"objective": "validation:perplexity", "strategy": "Random", "max_jobs": 3, "max_parallel": 2,
              "ranges": {"ContinuousParameterRanges": [{"Name": "learning_rate", "MinValue": "0.001",
                                                        "MaxValue": "0.01", "ScalingType": "Logarithmic"}]}}
    result = run_dag(airflow_env, {**TINY, "artifact_root": str(root), "tuning": tuning, "tracking": tracking},
                     tmp_path / "run")
    assert result["state"] == "success", result["log"][-3000:]
    assert result["tasks"]["tune_local"] == "success" and result["tasks"]["train_local"] == "skipped"
    assert result["tasks"]["promote"] == "success"
    [base] = [p for p in (root / "wmt_seq2seq").iterdir() if p.is_dir() and p.name != "tuning-jobs"]
    summary = json.loads((base / "run.json").read_text())
    trials = summary["tuning"]["trials"]
    assert len(trials) == 3 and all(t["status"] == "Completed" for t in trials)
    best = min(trials, key=lambda t: t["objective"])
    assert summary["tuning"]["best"] == best["name"] == summary["training_job"]
    assert summary["model"] == str(base / "model" / best["name"] / "output" / "model.tar.gz")
    stored = json.loads((root / "wmt_seq2seq" / "tuning-jobs" / f"{summary['tuning']['name']}.json").read_text())
    assert stored["Describe"]["BestTrainingJob"]["TrainingJobName"] == best["name"]
    assert json.loads((root / "wmt_seq2seq" / "promoted.json").read_text())["training_job"] == best["name"]
    # The trials in the run history: nested runs of the DAG run's, with their tuned value and objective.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name("wmt_seq2seq_tune").experiment_id])
    [dag_run] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == dag_run.info.run_id]
    assert dag_run.data.tags["tuning.best"] == best["name"] and len(children) == 3
    assert {r.data.tags["training_job"]: float(r.data.params["learning_rate"]) for r in children} == {
        t["name"]: float(t["tuned"]["learning_rate"]) for t in trials}
    assert {r.data.tags["training_job"]: r.data.metrics["validation:perplexity"] for r in children} == {
        t["name"]: t["objective"] for t in trials}


# --- failures -----------------------------------------------------------------------------------------------

def test_a_bad_param_fails_at_trigger_time(airflow_env: dict[str, str], tmp_path: Path) -> None:
    result = run_dag(airflow_env, {**TINY, "backend": "cloud"}, tmp_path / "bad")
    assert result["state"] is None and "ParamValidationError" in result["error"] and "backend" in result["error"]


def _failed_in_plan(result: dict) -> None:
    assert result["state"] == "failed", result["log"][-3000:]
    assert result["tasks"]["plan"] == "failed"
    assert result["tasks"]["download"] == "upstream_failed" and result["tasks"]["upload"] == "upstream_failed"


def test_plan_fails_a_bad_value_in_seconds_before_download_and_without_retries(airflow_env: dict[str, str],
                                                                                tmp_path: Path) -> None:
    """The container's own parser runs in plan; a value error is final (AirflowFailException), so the run
    neither prepares data for minutes nor retries three times."""
    root = tmp_path / "artifacts"
    env = {**airflow_env, "AIRFLOW_VAR_WMT_SEQ2SEQ_RETRIES": "2"}
    # One run per kind of problem; tests/unit/test_plan.py has the other values and messages.
    for i, (bad, needle) in enumerate([
            ({"rnn_num_hidden": -3}, 'hyperparameter rnn_num_hidden="-3": must be an integer in [1, 16384]'),
            ({"rnn_num_hiden": 32}, "unknown hyperparameter(s): rnn_num_hiden (did you mean rnn_num_hidden?)")]):
        conf = {**TINY, "artifact_root": str(root), "hyperparameters": {**TINY_HP, **bad}}
        result = run_dag(env, conf, tmp_path / f"run{i}")
        _failed_in_plan(result)
        assert needle in result["log"]
        assert result["log"].count("checkpoint_frequency_num_batches") <= 2  # no list of every name
        assert result["seconds"] < 60
    assert not any(root.rglob("raw"))


def test_a_parent_the_run_cannot_start_from_fails_before_any_data_is_prepared(airflow_env: dict[str, str],
                                                                             copy_model: Path, tmp_path: Path) -> None:
    """init_model naming nothing fails in plan; a model with another architecture fails in parent_model,
    each difference named, before tokenize; neither is retried."""
    root = tmp_path / "artifacts"
    result = run_dag(airflow_env, {**TINY, "artifact_root": str(root), "init_model": str(tmp_path / "none.tar.gz")},
                     tmp_path / "missing")
    _failed_in_plan(result)
    assert f"init_model {tmp_path / 'none.tar.gz'}: no model there" in result["log"]

    # The copy model: an RNN with 64 hidden units (this run asks for 32) on another language pair.
    result = run_dag(airflow_env, {**TINY, "artifact_root": str(root), "init_model": str(copy_model)},
                     tmp_path / "bad")
    assert result["state"] == "failed", result["log"][-3000:]
    assert result["tasks"]["plan"] == "success" and result["tasks"]["parent_model"] == "failed"
    assert result["tasks"]["tokenize"] == "upstream_failed" and result["tasks"]["train_local"] == "upstream_failed"
    assert "rnn_num_hidden: parent 64, this job 32" in result["log"]
    assert "num_embed_source: parent 32, this job 16" in result["log"]
    assert result["log"].count("the run's hyperparameters do not keep the parent's architecture") <= 2  # no retries


def test_an_unknown_conf_key_is_refused_with_a_suggestion(airflow_env: dict[str, str], tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    result = run_dag(airflow_env, {**TINY, "artifact_root": str(root), "subset_sise": 10}, tmp_path / "run")
    _failed_in_plan(result)
    assert "unknown conf key subset_sise (did you mean subset_size?)" in result["log"]
    batch = run_dag(airflow_env, {"artifact_root": str(root), "beam_sise": 1}, tmp_path / "batch",
                    dag_id="wmt_seq2seq_batch_transform")
    assert batch["state"] == "failed" and batch["tasks"]["transform_request"] == "failed"
    assert "unknown conf key beam_sise (did you mean beam_size?)" in batch["log"]


def test_every_param_default_is_one_the_trigger_form_accepts(airflow_env: dict[str, str]) -> None:
    """The UI's trigger form sends an empty field as null and keeps Trigger disabled while any field is
    invalid: every default must validate against its own schema, none may be an empty string, and every
    param says what it is for (both DAGs)."""
    code = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
out = {}
for dag_id, dag in sorted(bag.dags.items()):
    out[dag_id] = {k: {"schema": dag.params.get_param(k).schema, "default": dag.params.get_param(k).value,
                       "description": dag.params.get_param(k).description} for k in dag.params}
print(json.dumps(out))
"""
    import jsonschema

    done = subprocess.run([sys.executable, "-c", code, str(DAGS)], env=airflow_env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    dags = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(dags) == {"wmt_seq2seq", "wmt_seq2seq_batch_transform"}
    for dag_id, params in dags.items():
        for name, p in params.items():
            jsonschema.validate(p["default"], p["schema"])
            assert p["default"] != "", f"{dag_id}.{name}: an empty default reads as null in the form"
            assert p["schema"].get("title") and p["description"], f"{dag_id}.{name} needs a title and description"
    assert dags["wmt_seq2seq"]["role_arn"]["default"] is None
    assert dags["wmt_seq2seq_batch_transform"]["role_arn"]["default"] is None


def test_a_failing_step_publishes_nothing_a_retry_could_mistake(airflow_env: dict[str, str], tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    conf = {**TINY, "artifact_root": str(root), "corpus_layout": {"test": "missing-test.{lang}"}}
    result = run_dag(airflow_env, conf, tmp_path / "run")
    assert result["state"] == "failed"
    assert result["tasks"]["download"] == "success" and result["tasks"]["subset"] == "failed"
    assert result["tasks"]["train_local"] == "upstream_failed"
    base = next(p for p in (root / "wmt_seq2seq").iterdir() if p.is_dir())
    assert (base / "raw" / COMPLETE_MARKER).is_file()
    assert not (base / "subset").exists() or not (base / "subset" / COMPLETE_MARKER).exists()
    assert "missing-test.en" in result["log"]
