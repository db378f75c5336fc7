"""Names that several parts of the product must spell alike: channel, file and content-type names.

The pipeline writes what the container reads and the server loads what training saved, so each of
these is defined once, here, and imported wherever it is used. It lives in ``model/`` because the
container ships ``model/`` alone (docs/ARCHITECTURE.md §2). The special vocabulary symbols and ids
stay with the vocabulary contract in :mod:`model.vocab`.
"""

from __future__ import annotations

# --- the training channels (the built-in algorithm's, docs/ARCHITECTURE.md §3) ---------------------
TRAIN_CHANNEL = "train"
VALIDATION_CHANNEL = "validation"
VOCAB_CHANNEL = "vocab"
CHANNELS = (TRAIN_CHANNEL, VALIDATION_CHANNEL, VOCAB_CHANNEL)
# Optional: the parent model of a warm start, as SageMaker passes a model for incremental training.
MODEL_CHANNEL = "model"
MODEL_CONTENT_TYPE = "application/x-sagemaker-model"
# Where the parent came from (the request's model channel URI), set in the training job's Environment:
# the files SageMaker hands the container do not say, and the model should record it.
PARENT_MODEL_URI_ENV = "SEQ2SEQ_PARENT_MODEL_URI"
VOCAB_SOURCE_FILE = "vocab.src.json"
VOCAB_TARGET_FILE = "vocab.trg.json"
TRAIN_RECORDIO_FILE = "train.rec"
VALIDATION_RECORDIO_FILE = "val.rec"

# --- content types ---------------------------------------------------------------------------------
RECORDIO_CONTENT_TYPE = "application/x-recordio-protobuf"
JSON_CONTENT_TYPE = "application/json"
JSONLINES_CONTENT_TYPE = "application/jsonlines"
CHANNEL_CONTENT_TYPES = {TRAIN_CHANNEL: RECORDIO_CONTENT_TYPE, VALIDATION_CHANNEL: RECORDIO_CONTENT_TYPE,
                         VOCAB_CHANNEL: JSON_CONTENT_TYPE}

# --- a model folder (what training writes to /opt/ml/model, what serving loads) ---------------------
PARAMS_FILE = "params.pt"
MODEL_CONFIG_FILE = "config.json"
HYPERPARAMETERS_FILE = "hyperparameters.json"
METRICS_FILE = "metrics.json"
TOKENIZER_FILE = "tokenizer.json"
CHECKPOINT_FILE = "checkpoint.pt"
# What a folder must hold to be loaded as a model.
MODEL_FILES = (PARAMS_FILE, MODEL_CONFIG_FILE, HYPERPARAMETERS_FILE, VOCAB_SOURCE_FILE, VOCAB_TARGET_FILE)
MODEL_ARCHIVE = "model.tar.gz"

# --- the SageMaker container contract (docs/ARCHITECTURE.md §4) ------------------------------------
SAGEMAKER_ROOT = "/opt/ml"
CHECKPOINT_LOCAL_PATH = SAGEMAKER_ROOT + "/checkpoints"
