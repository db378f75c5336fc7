"""wmt_seq2seq: retrain an English–German (or any pair) seq2seq model end to end.

download → subset → tokenize → recordio → upload → train → evaluate → gate → approval → promote → batch transform
→ publish (with ``init_model``, a warm start: plan resolves the parent model, parent_model fetches and checks
it, and tokenize, recordio, train and evaluate use it; with ``require_approval``, a person approves or
rejects the gate's promotion in the UI's Required Actions, seq2seq_airflow/approval.py)

Wiring only: every task calls a function of pipeline_tasks/ on the run's URIs (docs/ARCHITECTURE.md §6) and passes
URIs and small metrics on. Training and the batch transform run on the backend the ``backend`` param
names: ``local`` (the container's code as a process here), ``docker`` (the built image) or
``sagemaker`` (the amazon provider's operators, deferrable where aiobotocore is installed); all three
execute the same request dicts.

Schedule: ``AIRFLOW_VAR_WMT_SEQ2SEQ_SCHEDULE`` (a cron expression or preset such as ``@weekly``; unset
or ``none``: manual runs only); ``AIRFLOW_VAR_WMT_SEQ2SEQ_INIT_MODEL=promoted`` makes each run without
conf a warm-started retrain of the promoted model, ``AIRFLOW_VAR_WMT_SEQ2SEQ_REQUIRE_APPROVAL=true`` one
that waits for a person's approval before promoting. Artifact root default:
``AIRFLOW_VAR_WMT_SEQ2SEQ_ARTIFACT_ROOT``; task retries: ``AIRFLOW_VAR_WMT_SEQ2SEQ_RETRIES`` (2). Read
from the environment, not the metadata DB, so parsing stays fast; they are also how Airflow exposes
Variables set as environment variables.
Module level stays light: no torch, no boto3 client, no network.
"""

from __future__ import annotations

from airflow.sdk import Param, TriggerRule, dag, task, teardown

from pipeline_tasks.clean import FILTERS as CLEAN_FILTERS
from pipeline_tasks.clean import NORMALIZATIONS as CLEAN_NORMALIZATIONS
from pipeline_tasks.jobs.names import JOB_PREFIX_KEY
from pipeline_tasks.jobs.tuning import RANGE_KEYS as TUNING_RANGE_KEYS
from pipeline_tasks.plan import TRAIN_DISTRIBUTIONS
from seq2seq_airflow.approval import PromotionApprovalOperator
from seq2seq_airflow.assets import DATASET, MODEL
from seq2seq_airflow.branches import training_branch, transform_branch, transform_task_id
from seq2seq_airflow.settings import (
    DEFAULT_ARGS,
    DEFAULT_INIT_MODEL,
    DEFAULT_REQUIRE_APPROVAL,
    START_DATE,
    TRAINING_DAG_ID,
    TRAINING_SCHEDULE,
    artifact_root_param,
    backend_param,
    beam_size_param,
    image_param,
    max_output_length_param,
    role_arn,
    role_arn_param,
)

DAG_ID = TRAINING_DAG_ID

# The AWS English–German example's hyperparameters (its notebook's values; everything else defaults).
AWS_EXAMPLE_HYPERPARAMETERS = {
    "max_seq_len_source": 60, "max_seq_len_target": 60, "optimized_metric": "bleu", "batch_size": 64,
    "checkpoint_frequency_num_batches": 1000, "rnn_num_hidden": 512, "num_layers_encoder": 1,
    "num_layers_decoder": 1, "num_embed_source": 512, "num_embed_target": 512, "checkpoint_threshold": 3,
}
PARAMS = {
    "source_lang": Param("en", type="string", pattern="^[a-z]{2,3}$", title="Source language",
                         description="ISO code of the side translated from (en for en→de)."),
    "target_lang": Param("de", type="string", pattern="^[a-z]{2,3}$", title="Target language",
                         description="ISO code of the side translated into."),
    "corpus": Param("wmt17-de-en-preprocessed", type=["string", "array"], minLength=1, minItems=1, title="Corpus",
                    description="Catalog name (wmt17-de-en-preprocessed: the AWS example's data; "
                                "wmt-toy-ende-sample: bundled, offline; the raw WMT17 corpora europarl-v7-de-en, "
                                "news-commentary-v12-de-en, commoncrawl-de-en, rapid2016-de-en), an http(s) URL, "
                                "file:// URL or path. Or a list of sources mixed for training, each a name/URL/path "
                                "or {source, layout, weight (an upsampling factor) | share (of the mix), name}; "
                                "validation and test come from the first source that has them.",
                    items={"type": ["string", "object"]}),
    "corpus_layout": Param({}, type="object", title="Corpus layout",
                           description='Where each split is in the corpus, e.g. {"train": "corpus.{lang}", '
                                       '"val": "dev.{lang}", "test": "test.{lang}"}; empty: the catalog\'s.',
                           propertyNames={"enum": ["train", "val", "test"]},
                           additionalProperties={"type": "string", "pattern": "\\{lang\\}"}),
    "max_expansion_ratio": Param(200, type="number", minimum=0, title="Max decompression ratio",
                                 description="A downloaded archive may inflate at most this many times its "
                                             "size (text: 3-10x; a gzip bomb: 1000x); 0: no limit."),
    "max_download_gib": Param(64, type="number", minimum=0, title="Max decompressed GiB",
                              description="At most this much decompressed data per download (WMT17: ~2 GiB); "
                                          "0: no limit."),
    "subset_size": Param(10000, type=["integer", "null"], minimum=1, title="Training pairs",
                         description="Keep this many training pairs (the AWS example: 10,000); null: all."),
    "subset_mode": Param("head", enum=["head", "random"], title="Subset mode",
                         description="head: the first N pairs (head -n N); random: a seeded sample."),
    "subset_seed": Param(0, type="integer", minimum=0, title="Subset seed",
                         description="Seed of the random subset (same seed, same pairs)."),
    "cleaning": Param({}, type="object", title="Cleaning",
                      description="The clean step's filters on the training pairs (validation and test are only "
                                  "reported): each of too_short, too_long, ratio, bad_characters, markup, url_only, "
                                  "copy, script, language, duplicate, near_duplicate is on unless set false; enabled "
                                  "false passes the data through; settings: min_len (1), max_len (100) and max_ratio "
                                  "(3) in whitespace tokens, normalize (case, whitespace, punctuation, digits), "
                                  "min_script_share (0.5), language_threshold (0.9), language_min_chars (20).",
                      properties={**{name: {"type": "boolean"} for name in CLEAN_FILTERS},
                                  "enabled": {"type": "boolean"},
                                  "normalize": {"type": "array", "items": {"enum": list(CLEAN_NORMALIZATIONS)}},
                                  "min_len": {"type": "integer", "minimum": 1},
                                  "max_len": {"type": ["integer", "null"], "minimum": 1},
                                  "max_ratio": {"type": ["number", "null"], "minimum": 1},
                                  "min_script_share": {"type": "number", "minimum": 0, "maximum": 1},
                                  "language_threshold": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                                  "language_min_chars": {"type": "integer", "minimum": 1},
                                  "examples": {"type": "integer", "minimum": 0}},
                      additionalProperties=False),
    "tokenizer": Param("whitespace", enum=["whitespace", "moses"], title="Tokenizer",
                       description="whitespace: the corpus is already tokenized (corpus.tc); moses: raw text."),
    "detokenizer": Param("moses", enum=["moses", "none"], title="Detokenizer",
                         description="How output becomes text for sacreBLEU and users."),
    "bpe_vocab_size": Param(None, type=["integer", "null"], minimum=8, title="BPE vocabulary",
                            description="Learn a SentencePiece BPE model of this size on the training subset; "
                                        "null: words."),
    "joint_bpe": Param(False, type="boolean", title="Joint BPE",
                       description="One subword model for both languages (else one per language)."),
    "num_words_source": Param(50000, type="integer", minimum=1, title="Source vocabulary size",
                              description="At most this many source tokens (the built-in default: 50,000)."),
    "num_words_target": Param(50000, type="integer", minimum=1, title="Target vocabulary size",
                              description="At most this many target tokens."),
    "min_count": Param(1, type="integer", minimum=1, title="Min word count",
                       description="Tokens seen fewer times in the training subset become <unk>."),
    "init_model": Param(DEFAULT_INIT_MODEL, type="string", minLength=1, title="Start from (warm start)",
                        description="none: train from scratch; promoted: the model the promoted-model pointer "
                                    "names when the run starts (from scratch while nothing is promoted); or a "
                                    "model URI (model.tar.gz or model folder, path or s3://). The run keeps the "
                                    "parent's tokenizer, vocabularies and architecture."),
    "hyperparameters": Param(AWS_EXAMPLE_HYPERPARAMETERS, type="object", title="Hyperparameters",
                             description="The built-in seq2seq algorithm's hyperparameters (and our extensions); "
                                         "defaults: the AWS example's.",
                             # Names and values are checked by plan with the container's parser, whose
                             # message names the bad one and suggests the nearest.
                             propertyNames={"pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                             additionalProperties={"type": ["string", "number", "boolean", "null"]}),
    "backend": backend_param("Training backend", "local: a process here; docker: the built image; sagemaker: "
                                                 "training and transform jobs (artifact root must be s3://)."),
    "image": image_param(),
    "role_arn": role_arn_param(),
    "instance_type": Param("ml.p3.2xlarge", type="string", pattern="^ml\\.", title="Training instance type",
                           description="SageMaker instance type for training (sagemaker backend)."),
    "instance_count": Param(1, type="integer", minimum=1, title="Training instances",
                            description="Training instances: with more than one, the container trains with torch "
                                        "distributed (DDP) across them, one process per GPU. local/docker run "
                                        "them as processes/containers on this machine."),
    "train_distribution": Param(TRAIN_DISTRIBUTIONS[0], enum=list(TRAIN_DISTRIBUTIONS),
                                title="Training data distribution",
                                description="S3DataDistributionType of the train channel: FullyReplicated (every "
                                            "instance gets every file) or ShardedByS3Key (each instance about 1/N "
                                            "of the files: less to download and load per instance)."),
    "train_shards": Param(None, type=["integer", "null"], minimum=1, title="Training files",
                          description="How many .rec files the recordio step writes the training split as; null: "
                                      "the number of instances under ShardedByS3Key, else 1."),
    "use_spot": Param(False, type="boolean", title="Managed spot training",
                      description="Spot capacity; training resumes from its checkpoints after an interruption."),
    "max_runtime_s": Param(86400, type="integer", minimum=60, title="Max training seconds",
                           description="StoppingCondition.MaxRuntimeInSeconds (all backends)."),
    "transform_instance_type": Param("ml.m5.xlarge", type="string", pattern="^ml\\.",
                                     title="Transform instance type",
                                     description="SageMaker instance type for the batch transform job."),
    "artifact_root": artifact_root_param("A path or s3://bucket/prefix; runs write under "
                                         "<root>/<dag_id>/<run_id>/."),
    "beam_size": beam_size_param("Beam size (evaluate, transform)",
                                 "Beam width for evaluation and batch transform; 1 is greedy."),
    "max_output_length": max_output_length_param(),
    "eval_max_sentences": Param(None, type=["integer", "null"], minimum=1, title="Test sentences",
                                description="Evaluate on the first N test sentences; null: all."),
    "test_sets": Param([], type="array", title="Test sets",
                       description="Where the model is scored, each kept apart: catalog names (newstest2014, "
                                   "newstest2015, newstest2016, newstest2017: the official raw sets, as sacreBLEU "
                                   "has them), \"test\" (the corpus's own test split) or {name, source, "
                                   "reference} files (paths, s3:// or URLs); [] is [\"test\"]. The first set's "
                                   "scores are the test:* metrics; every set's are <name>:bleu, … and their "
                                   "means mean:bleu, ….",
                       items={"type": ["string", "object"]}),
    "gate": Param({"metric": "test:bleu", "min_delta": 0.0}, type="object", title="Quality gate",
                  description="Promote when metric is at least as good as the promoted model's (+min_delta); "
                              "optional threshold for the first promotion; mode max|min (default by metric); "
                              "test_set: the test set that decides (a name of test_sets, or mean; default the "
                              "first).",
                  properties={"metric": {"type": "string", "enum": ["test:bleu", "test:chrf", "test:chrfpp",
                                                                    "test:ter", "test:tokenized_bleu",
                                                                    "test:perplexity", "test:accuracy"]},
                              "test_set": {"type": ["string", "null"]},
                              "mode": {"type": ["string", "null"], "enum": ["max", "min", None]},
                              "min_delta": {"type": "number", "minimum": 0},
                              "threshold": {"type": ["number", "null"]}},
                  required=["metric"], additionalProperties=False),
    "tuning": Param(None, type=["object", "null"], title="Hyperparameter tuning",
                    description="null: one training job. Else a tuning job in SageMaker's terms, whose best "
                                "training job goes on to evaluate: objective (validation:bleu | "
                                "validation:perplexity | validation:accuracy), ranges (IntegerParameterRanges, "
                                "ContinuousParameterRanges, CategoricalParameterRanges over the hyperparameters), "
                                "strategy (Bayesian | Random | Grid | Hyperband), max_jobs, max_parallel, "
                                "early_stopping (Off | Auto), max_runtime_s, hyperband {MinResource, MaxResource}, "
                                "parents (earlier tuning jobs to warm-start from), warm_start_type, random_seed. "
                                "sagemaker: Automatic Model Tuning; local/docker: the same request run here.",
                    properties={
                        "objective": {"enum": ["validation:bleu", "validation:perplexity", "validation:accuracy"]},
                        "ranges": {"type": "object", "propertyNames": {"enum": list(TUNING_RANGE_KEYS)}},
                        "strategy": {"enum": ["Bayesian", "Random", "Grid", "Hyperband"]},
                        "max_jobs": {"type": ["integer", "null"], "minimum": 1},
                        "max_parallel": {"type": "integer", "minimum": 1},
                        "early_stopping": {"enum": ["Off", "Auto"]},
                        "max_runtime_s": {"type": ["integer", "null"], "minimum": 120},
                        "hyperband": {"type": ["object", "null"]},
                        "parents": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
                        "warm_start_type": {"enum": ["IdenticalDataAndAlgorithm", "TransferLearning"]},
                        "random_seed": {"type": ["integer", "null"]}},
                    required=["objective", "ranges"], additionalProperties=False),
    "require_approval": Param(DEFAULT_REQUIRE_APPROVAL, type="boolean", title="Require approval",
                              description="A person approves or rejects each promotion the gate decides (Airflow's "
                                          "Required Actions), seeing both models' test metrics and the report; "
                                          "the run waits holding no worker slot. Reject: not promoted, the reason "
                                          "kept in run.json and the run history."),
    "approval_timeout_hours": Param(72, type="number", exclusiveMinimum=0, title="Approval timeout (hours)",
                                    description="No answer within this many hours counts as a rejection."),
    "register_model_package": Param(False, type="boolean", title="SageMaker Model Registry",
                                    description="backend=sagemaker: each promotion is also a model package version "
                                                "in the group wmt-seq2seq-<source>-<target>, Approved (registered "
                                                "PendingManualApproval while an approval is awaited, Rejected when "
                                                "refused)."),
    "tracking": Param({"enabled": True, "uri": None, "experiment": "wmt_seq2seq", "registered_model": None},
                      type="object", title="Run tracking (MLflow)",
                      description="Each run is an MLflow run (params, learning curves, test metrics, report), "
                                  "each promotion a registered model version with alias champion. uri null: "
                                  "MLFLOW_TRACKING_URI, else a SQLite store under the artifact root's mlflow/. "
                                  "A tracking failure never fails the run.",
                      properties={"enabled": {"type": "boolean"}, "uri": {"type": ["string", "null"]},
                                  "experiment": {"type": "string", "minLength": 1},
                                  "registered_model": {"type": ["string", "null"]}},
                      additionalProperties=False),
    "transform_input": Param(None, type=["string", "null"], title="Batch transform input",
                             description="JSON Lines {\"source\": …} prefix or object (path or s3://); "
                                         "null: the test set's sources."),
}


def _layout(params, run_id):
    from pipeline_tasks.runs import RunLayout

    return RunLayout(params["artifact_root"], DAG_ID, run_id)


def _corpus(params):
    from pipeline_tasks.pipeline import CorpusConfig

    return CorpusConfig(params["corpus"], params["source_lang"], params["target_lang"], params["corpus_layout"])


def _tokenizer(params):
    from pipeline_tasks.tokenization import TokenizerConfig

    return TokenizerConfig(mode=params["tokenizer"], source_lang=params["source_lang"],
                           target_lang=params["target_lang"], detokenizer=params["detokenizer"],
                           bpe_vocab_size=params["bpe_vocab_size"], bpe_joint=params["joint_bpe"])


@dag(
    dag_id=DAG_ID,
    schedule=TRAINING_SCHEDULE,
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    params=PARAMS,
    tags=["seq2seq", "sagemaker", "wmt"],
    default_args=DEFAULT_ARGS,
    doc_md=__doc__,
)
def wmt_seq2seq():
    @task
    def plan(params=None, run_id=None, dag_run=None) -> dict:
        """Checks what JSON schema cannot (conf keys, hyperparameter values, backend needs) in seconds,
        before any work; a bad value fails the run at once, without retries."""
        from airflow.sdk.exceptions import AirflowFailException

        from pipeline_tasks.plan import PlanError, check_training_run, resolve_parent
        from pipeline_tasks.tracking import start_run

        layout = _layout(params, run_id)
        try:
            check_training_run(params, dag_run.conf if dag_run else None, PARAMS)
            parent = resolve_parent(params, layout.pointer)
        except PlanError as e:
            raise AirflowFailException(str(e)) from None
        tracking = start_run(params, DAG_ID, run_id, layout.base, parent)
        return {**layout.as_dict(), "parent": parent, "tracking": tracking}

    @task
    def parent_model(run: dict, params=None, run_id=None) -> dict:
        """Fetches and checks the warm start's parent while the corpus downloads: a parent the run cannot
        start from fails the run before any data is prepared, without retries."""
        from airflow.sdk.exceptions import AirflowFailException

        from pipeline_tasks.parent_model import ParentModelError
        from pipeline_tasks.pipeline import parent_step

        try:
            return parent_step(_layout(params, run_id), _corpus(params), run["parent"], params["hyperparameters"],
                               _tokenizer(params))
        except ParentModelError as e:
            raise AirflowFailException(str(e)) from None

    @task
    def download(run: dict, params=None, run_id=None) -> dict:
        from pipeline_tasks.pipeline import download_step

        limits = {"max_expansion_ratio": params["max_expansion_ratio"],
                  "max_decompressed_bytes": int(params["max_download_gib"] * (1 << 30))}
        return download_step(_layout(params, run_id), _corpus(params), limits=limits)

    @task
    def test_sets(run: dict, params=None, run_id=None) -> dict:
        """Fetches the run's test sets (catalog sets through the download cache, or given files) while the
        corpus downloads; the corpus's own test split comes with it."""
        from pipeline_tasks.pipeline import fetch_test_sets_step

        return fetch_test_sets_step(_layout(params, run_id), _corpus(params), params["test_sets"])

    @task
    def subset(raw: dict, params=None, run_id=None) -> dict:
        from pipeline_tasks.pipeline import subset_step
        from pipeline_tasks.subset import SubsetConfig

        cfg = SubsetConfig(size=params["subset_size"], mode=params["subset_mode"], seed=params["subset_seed"])
        return subset_step(_layout(params, run_id), _corpus(params), cfg)

    @task
    def clean(sub: dict, params=None, run_id=None) -> dict:
        """Drops noisy training pairs (duplicates, copies, wrong language, markup, ...), each filter counted
        with examples in clean/clean-report.json."""
        from pipeline_tasks.clean import CleanConfig
        from pipeline_tasks.pipeline import clean_step

        result = clean_step(_layout(params, run_id), _corpus(params), CleanConfig.from_dict(params["cleaning"]))
        for split, r in result["report"].items():
            print(f"clean {split}: {r['pairs_in'] - r['pairs_out']} of {r['pairs_in']} pairs dropped "
                  f"({', '.join(f'{k} {v}' for k, v in r['dropped'].items() if v) or 'nothing'})"
                  if split == "train" else
                  f"clean {split} (reported, kept whole): {sum(r['dropped'].values())} of {r['pairs_in']} flagged")
        return result

    @task
    def tokenize(sub: dict, parent: dict, params=None, run_id=None) -> dict:
        from pipeline_tasks.pipeline import tokenize_step

        return tokenize_step(_layout(params, run_id), _corpus(params), _tokenizer(params), parent["parent"])

    @task
    def recordio(tok: dict, parent: dict, params=None, run_id=None) -> dict:
        from pipeline_tasks.channels import VocabConfig
        from pipeline_tasks.pipeline import recordio_step
        from pipeline_tasks.plan import training_shards

        cfg = VocabConfig(num_words_source=params["num_words_source"], num_words_target=params["num_words_target"],
                          min_count_source=params["min_count"], min_count_target=params["min_count"])
        shards = training_shards(params["train_distribution"], params["train_shards"], params["instance_count"])
        return recordio_step(_layout(params, run_id), _corpus(params), cfg, parent["parent"], shards=shards)

    @task(outlets=[DATASET])
    def upload(rec: dict, run: dict, params=None, run_id=None, outlet_events=None) -> dict:
        from pipeline_tasks.pipeline import upload_step
        from pipeline_tasks.tracking import track_data

        result = upload_step(_layout(params, run_id))
        track_data(run["tracking"], params, result["sha256"], result["channels"])
        outlet_events[DATASET].extra = {"channels": result["channels"], "run_id": run_id}
        return result

    @task
    def training_request(data: dict, parent: dict, params=None, run_id=None) -> dict:
        """The CreateTrainingJob request: the single source of truth for all three backends (a warm start's
        parent is its ``model`` channel)."""
        from pipeline_tasks.jobs.names import job_name
        from pipeline_tasks.jobs.requests import check_sagemaker_request, training_job_config

        layout = _layout(params, run_id)
        config = training_job_config(
            job_name=job_name(DAG_ID, run_id, 1), image_uri=params["image"],
            role_arn=role_arn(params["role_arn"]), channels=data["channels"],
            output_uri=layout.uri("model"), hyperparameters=params["hyperparameters"],
            instance_type=params["instance_type"], instance_count=params["instance_count"],
            max_runtime_s=params["max_runtime_s"], use_spot=params["use_spot"],
            train_distribution=params["train_distribution"], checkpoint_uri=layout.uri("model", "checkpoints"),
            model_uri=parent["parent"]["model"] if parent["parent"] else None,
            tags={"dag_id": DAG_ID, "run_id": run_id[:256]})
        if params["backend"] == "sagemaker":
            check_sagemaker_request(config)
        return {**config, JOB_PREFIX_KEY: DAG_ID}

    @task
    def tuning_request(request: dict, params=None, run_id=None) -> dict | None:
        """With the ``tuning`` param, the CreateHyperParameterTuningJob request made from the training
        request (the trials are its jobs); None for a single training job."""
        if not params["tuning"]:
            return None
        from pipeline_tasks.jobs.names import TUNING_JOB_NAME_MAX, job_name
        from pipeline_tasks.jobs.tuning import tuning_request_from_param

        training = {k: v for k, v in request.items() if k != JOB_PREFIX_KEY}
        config = tuning_request_from_param(params["tuning"], job_name(f"{DAG_ID}-tune", run_id, 1, TUNING_JOB_NAME_MAX),
                                           training)
        return {**config, JOB_PREFIX_KEY: f"{DAG_ID}-tune"}

    @task
    def evaluate(model: dict, parent: dict, run: dict, sets: dict, params=None, run_id=None) -> dict:
        from pipeline_tasks.evaluate import EvaluateConfig
        from pipeline_tasks.pipeline import evaluate_step
        from pipeline_tasks.tracking import track_evaluation, track_tuning

        cfg = EvaluateConfig(beam_size=params["beam_size"], max_output_length=params["max_output_length"],
                             max_sentences=params["eval_max_sentences"])
        scores = evaluate_step(_layout(params, run_id), _corpus(params), model["model"], cfg, sets["test_sets"],
                               parent=parent["parent"])
        track_evaluation(run["tracking"], params, scores["eval"], model)
        track_tuning(run["tracking"], params, model.get("tuning"))
        return scores

    @task
    def gate(scores: dict, model: dict, params=None, run_id=None) -> dict:
        """Decides only; promoting is promote's (so the model Asset is emitted only on promotion). Returns
        what the approver compares (the promoted model now) and, when asked for, the model package request."""
        from pipeline_tasks.gate import GateRule, decide, read_pointer
        from pipeline_tasks.pipeline import model_package_request

        current = read_pointer(_layout(params, run_id).pointer)
        decision = decide(scores["metrics"], current, GateRule.from_dict(params["gate"]))
        print(("PROMOTE: " if decision.promote else "NOT PROMOTED: ") + decision.reason)
        package = None
        if decision.promote and params["register_model_package"]:
            package = model_package_request(params, DAG_ID, run_id, model, scores, decision.reason)
        return {"promote": decision.promote, "reason": decision.reason, "model_package": package,
                "current": {k: current.get(k) for k in ("run_id", "model", "metrics")} if current else None}

    @task.short_circuit(ignore_downstream_trigger_rules=False)
    def promoted(decision: dict) -> bool:
        return decision["promote"]

    @task(outlets=[MODEL])
    def promote(scores: dict, model: dict, run: dict, decision: dict, approval: dict, params=None, run_id=None,
                outlet_events=None) -> dict:
        from pipeline_tasks.gate import GateRule, gate
        from pipeline_tasks.tracking import track_promotion
        from seq2seq_airflow.model_registry import promote_model_package

        layout = _layout(params, run_id)
        result = gate(scores["metrics"], layout.pointer, GateRule.from_dict(params["gate"]),
                      {"run_id": run_id, "model": model["model"], "training_job": model["job_name"],
                       "eval": scores["eval"], "report": scores["report"], "dag_id": DAG_ID})
        if not result["promote"]:  # another run promoted a better model in between
            raise RuntimeError(f"not promoted after all: {result['reason']}")
        outlet_events[MODEL].extra = {"model": model["model"], "pointer": layout.pointer, "run_id": run_id}
        version = track_promotion(run["tracking"], params, model, scores, run_id)  # the registries mirror the pointer
        package = promote_model_package(decision["model_package"], approval) if decision["model_package"] else None
        return {"pointer": layout.pointer, "model": model["model"], "registered_version": version,
                "model_package_arn": package}

    @task
    def transform_request(promotion: dict, params=None, run_id=None) -> dict:
        from pipeline_tasks.jobs.names import job_name
        from pipeline_tasks.jobs.requests import transform_job_config
        from pipeline_tasks.pipeline import transform_input_step
        from pipeline_tasks.test_sets import parse_test_sets
        from pipeline_tasks.transform import TransformConfig

        layout = _layout(params, run_id)
        name = job_name(f"{DAG_ID}-transform", run_id, 1)
        config = transform_job_config(
            job_name=name, model_name=name, image_uri=params["image"], model_data_url=promotion["model"],
            role_arn=role_arn(params["role_arn"]),
            input_uri=transform_input_step(layout, _corpus(params), params["transform_input"],
                                           parse_test_sets(params["test_sets"], params["source_lang"],
                                                           params["target_lang"])[0].name),
            output_uri=layout.uri("transform", "output"), instance_type=params["transform_instance_type"],
            cfg=TransformConfig(beam_size=params["beam_size"], max_output_length=params["max_output_length"]),
            tags={"dag_id": DAG_ID})
        return {**config, JOB_PREFIX_KEY: f"{DAG_ID}-transform"}

    @task(trigger_rule=TriggerRule.NONE_FAILED)
    def publish(decision: dict, scores: dict, model: dict, parent: dict, params=None, run_id=None, ti=None) -> dict:
        from pipeline_tasks.approval import OUTCOME_KEY, describe
        from pipeline_tasks.evaluate import describe_test_sets
        from pipeline_tasks.pipeline import parent_summary, publish_step

        promotion = ti.xcom_pull(task_ids="promote")  # None: the gate or the approver said no
        approval = ti.xcom_pull(task_ids="approval", key=OUTCOME_KEY) if decision["promote"] else None
        job = {}
        if promotion:
            job = (ti.xcom_pull(task_ids=transform_task_id(params["backend"])) or {}).get("Transform") or {}
        summary = {
            "dag_id": DAG_ID, "run_id": run_id, "backend": params["backend"], "promoted": bool(promotion),
            "gate": decision["reason"], "approval": approval, "model": model["model"],
            "training_job": model["job_name"],
            "model_package_arn": (promotion or {}).get("model_package_arn")
            or (approval or {}).get("model_package_arn"),
            "metrics": scores["metrics"], "bleu_signature": scores["bleu_signature"], "report": scores["report"],
            "eval": scores["eval"], "test_sets": scores.get("test_sets") or [],
            "transform_output": job.get("TransformOutput", {}).get("S3OutputPath"),
            "tuning": model.get("tuning"), "cleaning": (ti.xcom_pull(task_ids="clean") or {}).get("report"),
            "transform_job": job.get("TransformJobName"),
            "parent": parent_summary(parent["parent"], scores.get("parent")),
        }
        if promotion:
            outcome = f"promoted: {decision['reason']}"
            if (approval or {}).get("required"):
                outcome += f"; {describe(approval)}"
        elif approval and not approval["approved"]:
            outcome = f"not promoted: {describe(approval)} (the gate: {decision['reason']})"
        else:
            outcome = f"not promoted: {decision['reason']}"
        print(f"BLEU {scores['metrics']['test:bleu']:.2f} ({scores['bleu_signature']}), "
              f"perplexity {scores['metrics']['test:perplexity']:.2f}; {outcome}")
        for line in describe_test_sets(scores["metrics"], scores.get("test_sets") or []):
            print(line)
        if summary["parent"] and summary["parent"]["metrics"]:
            was = summary["parent"]["metrics"]
            print(f"parent {summary['parent']['model']}: BLEU {was['test:bleu']:.2f}, "
                  f"perplexity {was['test:perplexity']:.2f} on the same test set")
        return publish_step(_layout(params, run_id), summary)

    @teardown
    def finish_tracking(params=None, ti=None) -> None:
        """Ends the MLflow run: FINISHED with the gate's outcome once publish wrote run.json, FAILED when the
        pipeline run did not get that far. A teardown: it runs whatever happened upstream, and does not
        decide the DAG run's state."""
        from pipeline_tasks.tracking import finish_run

        run = ti.xcom_pull(task_ids="plan")
        if not run:  # plan failed: no MLflow run was started
            return
        published = ti.xcom_pull(task_ids="publish")
        finish_run(run["tracking"], params, published, (published or {}).get("summary"))

    # wiring
    run = plan()
    parent = parent_model(run)
    request = training_request(upload(recordio(tokenize(clean(subset(download(run))), parent), parent), run), parent)
    model = training_branch(request, tuning_request(request))
    scores = evaluate(model, parent, run, test_sets(run))
    decision = gate(scores, model)
    approval = PromotionApprovalOperator(task_id="approval", decision=decision, scores=scores, model=model)
    promoted(decision) >> approval
    promotion = promote(scores, model, run, decision, approval.output)
    published = publish(decision, scores, model, parent)
    published << transform_branch(transform_request(promotion))
    published >> finish_tracking()


wmt_seq2seq()
