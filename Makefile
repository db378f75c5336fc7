# The two commands of the README: `make demo` and `make test`. Both create .venv from constraints.txt.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   := demo-output
SAMPLE := pipeline_tasks/sample_data/wmt-toy-ende
NEWSTEST := pipeline_tasks/sample_data/newstest2017
# The AWS example's hyperparameters, scaled down so that the demo trains in a few minutes on 2 CPUs.
DEMO_HP := {"max_seq_len_source": 60, "max_seq_len_target": 60, "optimized_metric": "perplexity", \
	"batch_size": 32, "checkpoint_frequency_num_batches": 200, "rnn_num_hidden": 128, \
	"num_layers_encoder": 1, "num_layers_decoder": 1, "num_embed_source": 64, "num_embed_target": 64, \
	"checkpoint_threshold": 3, "max_num_batches": 600, "learning_rate": 0.003, "bleu_sample_size": 100}
# The whole DAG on the bundled sample: local backend, local storage (docs/ARCHITECTURE.md §6 layout under $(DEMO)/).
DEMO_CONF := {"corpus": "wmt-toy-ende-sample", "subset_size": 10000, \
	"tokenizer": "whitespace", "detokenizer": "none", "bpe_vocab_size": 8000, "hyperparameters": $(DEMO_HP), \
	"backend": "local", "artifact_root": "$(CURDIR)/$(DEMO)", "beam_size": 5, "eval_max_sentences": 300, \
	"test_sets": ["test", {"name": "newstest2017", "source": "$(CURDIR)/$(NEWSTEST)/newstest2017.en-de.en", \
	"reference": "$(CURDIR)/$(NEWSTEST)/newstest2017.en-de.de"}], "gate": {"metric": "test:bleu"}}
AIRFLOW_DIR := $(CURDIR)/.airflow
# Airflow for the demo only: SQLite and logs under .airflow/ in the repo, the DAGs of dags/.
demo $(AIRFLOW_DIR)/.migrated: export AIRFLOW_HOME := $(AIRFLOW_DIR)
demo $(AIRFLOW_DIR)/.migrated: export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
demo $(AIRFLOW_DIR)/.migrated: export AIRFLOW__CORE__LOAD_EXAMPLES := False
demo: export AIRFLOW_VAR_WMT_SEQ2SEQ_ARTIFACT_ROOT := $(CURDIR)/$(DEMO)

.PHONY: venv test lint demo ui bench proto clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[train,serve,airflow,dev]"
	$(PY) -m pip check
	@touch $@

venv: $(STAMP)

lint: venv
	$(VENV)/bin/ruff check .

test: venv lint
	$(PY) -m pytest -q

# The main job: the wmt_seq2seq DAG end to end (airflow dags test) on the bundled offline sample.
demo: venv $(AIRFLOW_DIR)/.migrated
	rm -rf $(DEMO)
	OMP_NUM_THREADS=1 $(VENV)/bin/airflow dags test wmt_seq2seq --conf '$(DEMO_CONF)' > $(DEMO).log 2>&1 \
		|| { tail -n 60 $(DEMO).log; echo "demo failed: full log in $(DEMO).log"; exit 1; }
	@$(PY) -c "import glob, json; r = json.load(open(sorted(glob.glob('$(DEMO)/wmt_seq2seq/*/run.json'))[-1])); \
		m = r['metrics']; print(f\"\nsacreBLEU {m['test:bleu']:.2f} ({r['bleu_signature']}), chrF {m['test:chrf']:.2f}, \" \
		f\"perplexity {m['test:perplexity']:.2f} on the first test set; promoted: {r['promoted']}\"); \
		c = r['cleaning']['train']; print(f\"cleaning: {c['pairs_in'] - c['pairs_out']} of {c['pairs_in']} training pairs \" \
		f\"dropped ({', '.join(f'{k} {v}' for k, v in c['dropped'].items() if v)}); \" \
		f\"{r['eval'].rsplit('/', 1)[0]}/clean/clean-report.json\"); \
		[print(f\"{n:>17}: BLEU {m[n + ':bleu']:.2f}, chrF {m[n + ':chrf']:.2f}, TER {m[n + ':ter']:.2f}, \" \
		f\"perplexity {m[n + ':perplexity']:.2f}\") for n in [*(t['name'] for t in r['test_sets']), 'mean']]; \
		[print(f'{k:>17}: {r[k]}') for k in ('model', 'eval', 'report', 'transform_output')]; \
		print(f'{\"run summary\":>17}: {sorted(glob.glob(\"$(DEMO)/wmt_seq2seq/*/run.json\"))[-1]}'); \
		print(f'{\"run history\":>17}: $(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/$(DEMO)/mlflow/mlflow.db')"

$(AIRFLOW_DIR)/.migrated: $(STAMP)
	mkdir -p $(AIRFLOW_DIR)
	$(VENV)/bin/airflow db migrate > $(AIRFLOW_DIR)/migrate.log 2>&1 || { tail -n 30 $(AIRFLOW_DIR)/migrate.log; exit 1; }
	touch $@

# The Airflow UI on this machine: scheduler, DAG processor, API server and triggerer (airflow standalone)
# with the DAGs of dags/, SQLite under $(UI_HOME); seq2seq_airflow/ui.py prints where to log in and
# stops every component on Ctrl-C.
UI_HOME ?= $(AIRFLOW_DIR)
UI_PORT ?= 8080
ui: venv
	AIRFLOW_HOME="$(UI_HOME)" AIRFLOW__CORE__DAGS_FOLDER="$(CURDIR)/dags" AIRFLOW__CORE__LOAD_EXAMPLES=False \
		$(PY) -m seq2seq_airflow.ui --port $(UI_PORT)

bench: venv
	$(PY) -m benchmarks.bench_recordio
	$(PY) -m benchmarks.bench_channel_loading
	$(PY) -m benchmarks.bench_clean
	$(PY) -m benchmarks.bench_training
	$(PY) -m benchmarks.bench_transform
	$(PY) -m benchmarks.bench_int8  # trains its two models into .bench-int8/ once (reused on a rerun)
	$(PY) -m benchmarks.bench_serve --baseline-ref 1a66279  # the previous (gthread) server
	$(PY) -m benchmarks.bench_peer --install-peer --train-seconds 300 --repeats 1 --translate-sentences 200 --translate-repeats 2  # vs Sockeye 3.1.34, venv in ~/.cache (20-60 min)
	$(PY) -m benchmarks.bench_length_curve --install-peer  # output length along training, both engines (about 50 min)

# Regenerate model/record_pb2.py (gencode 5.26.1, so that any protobuf runtime >= 5.26.1 loads it).
proto:
	$(PYTHON) -m venv /tmp/protoc-venv && /tmp/protoc-venv/bin/pip install --quiet grpcio-tools==1.64.1
	/tmp/protoc-venv/bin/python -m grpc_tools.protoc -Imodel --python_out=model model/record.proto

clean:
	rm -rf $(DEMO) .pytest_cache .ruff_cache
