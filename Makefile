# The two commands of the README: `make demo` and `make test`. Both create .venv from constraints.txt.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   := demo-output
SAMPLE := pipeline_tasks/sample_data/wmt-toy-ende
# The AWS example's hyperparameter strings, scaled down so that the demo trains in a few minutes on 2 CPUs.
DEMO_HP := {"max_seq_len_source": "60", "max_seq_len_target": "60", "optimized_metric": "perplexity", \
	"batch_size": "32", "checkpoint_frequency_num_batches": "100", "rnn_num_hidden": "128", \
	"num_layers_encoder": "1", "num_layers_decoder": "1", "num_embed_source": "64", "num_embed_target": "64", \
	"checkpoint_threshold": "3", "max_num_batches": "300", "learning_rate": "0.003", "bleu_sample_size": "100"}

.PHONY: venv test lint demo bench proto clean

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

# Data preparation end to end on the bundled sample (grows into the full DAG run in later issues).
demo: venv
	rm -rf $(DEMO)
	$(PY) -m pipeline_tasks download wmt-toy-ende-sample --output $(DEMO)/raw --cache-dir $(DEMO)/cache > /dev/null
	$(PY) -m pipeline_tasks subset --source $(DEMO)/raw/train.en --target $(DEMO)/raw/train.de \
		--output-source $(DEMO)/subset/train.en --output-target $(DEMO)/subset/train.de \
		-n 10000 --max-len 100 --max-ratio 3 > $(DEMO)/subset-report.json
	$(PY) -m pipeline_tasks tokenize --mode whitespace --source-lang en --target-lang de \
		--train-source $(DEMO)/subset/train.en --train-target $(DEMO)/subset/train.de \
		--val-source $(DEMO)/raw/val.en --val-target $(DEMO)/raw/val.de \
		--test-source $(DEMO)/raw/test.en --test-target $(DEMO)/raw/test.de \
		--bpe-vocab-size 8000 --detokenizer none --output $(DEMO)/tok > /dev/null
	$(PY) -m pipeline_tasks recordio --train-source $(DEMO)/tok/train.en --train-target $(DEMO)/tok/train.de \
		--val-source $(DEMO)/tok/val.en --val-target $(DEMO)/tok/val.de --tokenizer $(DEMO)/tok \
		--output $(DEMO)/channels > /dev/null
	$(PY) -m pipeline_tasks upload --channels $(DEMO)/channels --destination $(DEMO)/artifacts/data > /dev/null
	$(PY) -m pipeline_tasks inspect $(DEMO)/channels/train/train.rec --limit 2
	@$(PY) -c "import json; r = json.load(open('$(DEMO)/channels/recordio-report.json')); \
		print(f\"\\ntrain records: {r['train']['records']}, validation records: {r['validation']['records']}, \" \
		f\"vocab: {r['vocab']['source_size']} src / {r['vocab']['target_size']} trg\")"
	@echo "channels uploaded to $(DEMO)/artifacts/data/{train,validation,vocab}/"
	@# Train with the container's entrypoint as SageMaker would run it, under a SageMaker-style root.
	mkdir -p $(DEMO)/ml/input/config $(DEMO)/ml/input/data
	cp -r $(DEMO)/artifacts/data/train $(DEMO)/artifacts/data/validation $(DEMO)/artifacts/data/vocab $(DEMO)/ml/input/data/
	echo '$(DEMO_HP)' > $(DEMO)/ml/input/config/hyperparameters.json
	SAGEMAKER_BASE_DIR=$(DEMO)/ml OMP_NUM_THREADS=1 $(PY) container/train
	@$(PY) -c "import json; m = json.load(open('$(DEMO)/ml/model/metrics.json')); b = m['best_metrics']; \
		print(f\"\nbest checkpoint {m['best_checkpoint']} of {len(m['history'])} ({m['num_updates']} updates): \" \
		f\"validation perplexity {b['validation:perplexity']:.2f}, accuracy {b['validation:accuracy']:.3f}, \" \
		f\"token BLEU {b.get('validation:bleu', float('nan')):.2f}\")"
	@echo "model written to $(DEMO)/ml/model/ (params.pt, config, vocabularies, tokenizer, metrics.json)"
	@# Evaluate on the first 500 held-out test pairs, then a batch transform over JSON Lines.
	head -n 500 $(DEMO)/raw/test.en > $(DEMO)/test.en
	head -n 500 $(DEMO)/raw/test.de > $(DEMO)/test.de
	$(PY) -m pipeline_tasks evaluate --model $(DEMO)/ml/model --source $(DEMO)/test.en --reference $(DEMO)/test.de \
		--output $(DEMO)/eval > /dev/null
	@$(PY) -c "import json; m = json.load(open('$(DEMO)/eval/metrics.json')); \
		print(f\"\ntest set ({m['sentences']['total']} sentences): sacreBLEU {m['bleu']['score']:.2f} \" \
		f\"({m['bleu']['signature']}), chrF {m['chrf']['score']:.2f}, perplexity {m['metrics']['test:perplexity']:.2f}\")"
	@echo "hypotheses, metrics.json and report/index.html written to $(DEMO)/eval/"
	$(PY) -c "import json, sys; [sys.stdout.write(json.dumps({'source': l.rstrip('\\n')}) + '\\n') \
		for l in open('$(DEMO)/test.en', encoding='utf-8')]" > $(DEMO)/batch-input.jsonl
	$(PY) -m pipeline_tasks -q transform --model $(DEMO)/ml/model --input $(DEMO)/batch-input.jsonl \
		--output $(DEMO)/batch-output.jsonl > /dev/null
	@head -n 2 $(DEMO)/batch-output.jsonl
	@echo "batch transform output written to $(DEMO)/batch-output.jsonl"

bench: venv
	$(PY) -m benchmarks.bench_recordio
	$(PY) -m benchmarks.bench_training
	$(PY) -m benchmarks.bench_transform

# Regenerate model/record_pb2.py (gencode 5.26.1, so that any protobuf runtime >= 5.26.1 loads it).
proto:
	$(PYTHON) -m venv /tmp/protoc-venv && /tmp/protoc-venv/bin/pip install --quiet grpcio-tools==1.64.1
	/tmp/protoc-venv/bin/python -m grpc_tools.protoc -Imodel --python_out=model model/record.proto

clean:
	rm -rf $(DEMO) .pytest_cache .ruff_cache
