"""Tiny trained models for the inference tests (serving, batch transform, evaluation), trained once
per test session through the real training entrypoint.

- ``copy``: an RNN trained on the synthetic copy task, with a whitespace tokenizer: it echoes its
  input, so a test can check every output line against its own input line (order, completeness).
- ``transformer copy``: a Transformer on the same task, exported for CTranslate2 by the training
  entrypoint itself (``SEQ2SEQ_CTRANSLATE2_EXPORT=true``): the int8 engine tests hold it against our search.
- ``wmt``: an RNN trained briefly on real English–German text, Moses-tokenized and split with a
  SentencePiece BPE model: the raw-text path (tokenize → translate → detokenize) on real sentences.
  Its translations are poor; tests compare scores with independent computations, not with targets.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import torch

from model import record_pb2, recordio
from model.constants import TOKENIZER_FILE
from model.sagemaker import SageMakerPaths
from model.train import run
from pipeline_tasks.channels import VocabConfig, make_channels
from pipeline_tasks.tokenization import TokenizerConfig, tokenize_corpus
from tests.conftest import SAMPLE, head_lines
from tests.system.copy_task import make_sagemaker_tree

TINY_RNN = {
    "batch_size": "32", "checkpoint_frequency_num_batches": "100", "learning_rate": "0.003",
    "num_embed_source": "32", "num_embed_target": "32", "rnn_num_hidden": "64",
    "max_seq_len_source": "20", "max_seq_len_target": "20", "bleu_sample_size": "0",
}


def _train(root: Path) -> Path:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if run(SageMakerPaths(root)) != 0:
            raise RuntimeError(f"training the test model under {root} failed")
    finally:
        torch.set_num_threads(before)
    return root / "model"


def train_copy_model(root: Path) -> Path:
    """The copy-task model directory (with a whitespace tokenizer that detokenizes to tokens)."""
    make_sagemaker_tree(root, {**TINY_RNN, "max_num_batches": "500", "beam_size": "3"})
    (root / "input/data/vocab" / TOKENIZER_FILE).write_text(json.dumps(
        {"mode": "whitespace", "detokenizer": "none", "source_lang": "xx", "target_lang": "yy"}))
    return _train(root)


# A Transformer small enough to train in seconds but wide enough (64) that int8 weights keep its answers:
# unequal layer counts and src_trg_softmax tying, so the CTranslate2 export covers both.
TINY_TRANSFORMER = {
    "encoder_type": "transformer", "decoder_type": "transformer", "transformer_model_size": "64",
    "transformer_attention_heads": "4", "transformer_feed_forward_num_hidden": "128", "transformer_dropout": "0.0",
    "num_layers_encoder": "2", "num_layers_decoder": "2", "weight_tying": "true",
    "weight_tying_type": "src_trg_softmax", "batch_size": "32", "checkpoint_frequency_num_batches": "400",
    "learning_rate": "0.003", "max_seq_len_source": "20", "max_seq_len_target": "20", "bleu_sample_size": "0",
}


def train_transformer_copy_model(root: Path) -> Path:
    """The copy task with a Transformer (whitespace tokenizer): what the CTranslate2 export is checked on.
    Trained with SEQ2SEQ_CTRANSLATE2_EXPORT=true, so the model directory also holds the export the training
    entrypoint writes."""
    make_sagemaker_tree(root, {**TINY_TRANSFORMER, "max_num_batches": "400", "beam_size": "3"})
    (root / "input/data/vocab" / TOKENIZER_FILE).write_text(json.dumps(
        {"mode": "whitespace", "detokenizer": "none", "source_lang": "xx", "target_lang": "yy"}))
    before = os.environ.get("SEQ2SEQ_CTRANSLATE2_EXPORT")
    os.environ["SEQ2SEQ_CTRANSLATE2_EXPORT"] = "true"
    try:
        return _train(root)
    finally:
        if before is None:
            del os.environ["SEQ2SEQ_CTRANSLATE2_EXPORT"]
        else:
            os.environ["SEQ2SEQ_CTRANSLATE2_EXPORT"] = before


def train_wmt_model(root: Path, pairs: int = 2000) -> Path:
    """A model on the first `pairs` of the bundled sample, Moses + BPE (500, joint)."""
    corpus = root / "corpus"
    files = {}
    for split, n in (("train", pairs), ("val", 200)):
        for lang in ("en", "de"):
            files[f"{split}.{lang}"] = str(head_lines(SAMPLE / f"{split}.{lang}", corpus / f"{split}.{lang}", n))
    tok = root / "tok"
    tokenize_corpus({"train": (files["train.en"], files["train.de"]), "val": (files["val.en"], files["val.de"])},
                    tok, TokenizerConfig(mode="moses", bpe_vocab_size=500, bpe_joint=True), workers=1)
    ml = root / "ml"
    make_channels(str(tok / "train.en"), str(tok / "train.de"), str(tok / "val.en"), str(tok / "val.de"),
                  ml / "input/data", VocabConfig(), workers=1, tokenizer_dir=tok)
    (ml / "input/config").mkdir(parents=True)
    (ml / "input/config/hyperparameters.json").write_text(json.dumps({**TINY_RNN, "max_num_batches": "100"}))
    return _train(ml)


# --- request bodies for the copy model, as clients send them --------------------------------------------

def sentences(n: int, seed: int = 0, lo: int = 3, hi: int = 8) -> list[str]:
    """`n` random sentences over the copy model's tokens (a..p)."""
    rng = random.Random(seed)
    symbols = "abcdefghijklmnop"
    return [" ".join(rng.choice(symbols) for _ in range(rng.randint(lo, hi))) for _ in range(n)]


def jsonlines(texts: list[str]) -> bytes:
    return b"".join(json.dumps({"source": t}).encode() + b"\n" for t in texts)


def records(id_lists: list[list[int]]) -> bytes:
    """RecordIO-framed Records as a SageMaker client sends them: features["source"] only."""
    out = []
    for ids in id_lists:
        record = record_pb2.Record()
        record.features["source"].int32_tensor.values.extend(ids)
        out.append(recordio.frame(record.SerializeToString()))
    return b"".join(out)
