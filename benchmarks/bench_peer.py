"""Our engine against Sockeye 3.1.34 on the same subword files: training throughput, validation
perplexity at equal wall time, translation speed, output length and peak memory, with ratios.

    .venv/bin/python -m benchmarks.bench_peer [--install-peer] [--train-seconds 450] [--repeats 2]
        [--translate-repeats 3] [--translate-sentences 500] [--json OUT.json] [--work-dir DIR] [--ours-only]
        [--int8] [--reuse-work KEPT_DIR] [--word-vocab-size 8000] [--train-on KEPT_DIR --ours-only]
        [--our-hyperparameter NAME=VALUE ...]
    # a quick run (~15 min on 2 cores; the full defaults take 45-90 min):
    .venv/bin/python -m benchmarks.bench_peer --train-seconds 60 --repeats 1 --translate-sentences 50
    # translation only (fp32, or --int8 on both sides) with the models a kept work folder holds:
    .venv/bin/python -m benchmarks.bench_peer --reuse-work /tmp/old/work --int8 --work-dir /tmp/new --json new.json

Why a peer: bench_training compares the trainer with a naive loop of our own; this compares the whole
engine (data pipeline, model, trainer, decoder) with an established toolkit, configured alike, so that
a slow or a bad-quality path shows up against an outside reference.

**The peer** lives in a throw-away virtualenv (``--peer-venv``, default
``~/.cache/wmt-seq2seq-bench/sockeye-3.1.34``), never in .venv or constraints.txt: Sockeye 3.1.34 needs
torch 1.13.1 (whose default Linux wheel pulls the CUDA 11 runtime wheels, needed to import it even on
a CPU) and numpy<2. ``--install-peer`` creates it with python3.11 and pip (about 1 GB of wheels);
without it a missing venv is an error that says how to install it (``--ours-only`` runs our side alone).

**Data, made once.** The bundled 10k-pair WMT slice (``pipeline_tasks/sample_data/wmt-toy-ende``,
Moses-tokenized) goes through our own ``tokenize`` step (whitespace mode, one joint SentencePiece BPE
of ``--bpe-vocab-size`` 8000 learnt on train), then through our ``recordio`` step with one joint
vocabulary (``VocabConfig(joint=True)``: every subword type of the training text, ~8k). Sockeye gets
the same subword files and *that same vocabulary file* (``sockeye-prepare-data --source-vocab
--target-vocab --shared-vocab``: its special ids 0-3 are ours), so both have identical vocabularies and
softmax sizes. Validation during training uses the first ``--train-val-pairs`` (500) validation pairs
for both (the full 3,000 would make every checkpoint six times as long on both sides); the final
perplexity uses the whole validation split (or its first ``--score-pairs``). Pairs longer than 60
subwords are handled as each engine does (ours truncates them, Sockeye's prepare-data discards them;
both counts are printed). The scoring and translation inputs are cut to 60 subwords beforehand, so
both engines see the very same tokens there.

**Configuration, both sides**: Transformer, 3+3 pre-norm layers, model size 256 (embeddings too), 4
heads, feed-forward 1024, ReLU, sinusoidal positions, dropout 0.1 (attention, activation, residual),
source, target embeddings and softmax tied (``src_trg_softmax``), word batches of 2048 target tokens
(``batch_type=word`` / ``--batch-type word``: both aim at 2048 *real* target tokens per batch, in
multiples of 8 sentences; ours fills each batch from a length-sorted epoch, Sockeye sizes batches per
bucket from the bucket's mean length; the measured real target tokens per update are printed), max
length 60 both sides, label smoothing 0.1, Adam at ``--learning-rate`` (0.0003, our default;
Sockeye's is 0.0002), gradient values clipped at 1 (our default; Sockeye's default is no clipping),
plateau-reduce by 0.5 after 3 checkpoints without improvement (no reload of the best weights), no
early stopping, no BLEU during training, a checkpoint every ``--checkpoint-interval`` (100) updates,
fp32, ``--threads`` (2) threads
(``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` for every process, ``torch.set_num_threads`` in our
scorer/translator, ``--use-cpu`` for Sockeye).

**Equal wall time.** Both budgets count the training loop from its start (after data loading and
model building) with checkpoints included, and both end with a final checkpoint after the budget.
Ours: the ``max_training_seconds`` hyperparameter when ``model.hyperparameters`` knows it (checked at
run time); otherwise a SIGTERM when the budget is up (counted from our "model …
parameters" log line, i.e. after data loading), which saves a checkpoint, then a resumed run with
``max_num_batches`` = updates done + 1 that validates and keeps the best model (one extra update; a note
is printed). Sockeye: ``--max-seconds`` is only looked at after a checkpoint, so the runner
(``benchmarks/peer_sockeye_train.py``) ends it at the first update past the budget through its own
``max_updates`` stop, which writes a final checkpoint (``--peer-native-max-seconds`` keeps Sockeye's own
rule). Each side's training-loop time (incl. checkpoints) and process wall time are printed, so any
remaining difference is visible.

**What is measured**

- training target tokens/s, real target tokens (``</s>`` counted, padding not), with checkpoint /
  validation time excluded. Ours from our training log: steady state = the window-weighted mean of
  the progress lines' "target tokens/s" after the first line (the first 30 s, warm-up), skipping any
  line that follows a "checkpoint N: validating" line (see the note printed about those windows);
  overall = the "training done" summary. Sockeye: from the runner's per-batch records (its own
  ``tok/sec`` counts padded *source* positions), ``batch.target_length.sum()`` per batch, steady state
  = the batches that start 30 s or more after training started, tokens over their time span minus the
  checkpoints inside it; overall = all batches over the training loop minus checkpoints.
- validation perplexity of each side's final (best) model on the validation split, like for like:
  exp(sum of NLL / tokens), plain NLL without label smoothing, one token per target subword plus
  ``</s>``, targets and sources cut to 60. Ours: ``pipeline_tasks.evaluate.perplexity_on`` (the
  product's evaluation code, training's ``evaluate_likelihood``). Sockeye: ``sockeye-score`` with
  ``--score-type neglogprob --length-penalty-alpha 0`` (unnormalised sentence NLL, labels incl.
  ``</s>``), summed here; Sockeye's logged validation "perplexity" is exp of its label-smoothed loss and
  is not used. The token counts of both sides are checked to be equal.
- translation speed on the first ``--translate-sentences`` (500) test sentences, beam 5 and greedy,
  batch ``--translate-batch-size`` (32) for both, decoding only: ours times ``Translator.translate``
  apart from model loading (``benchmarks/peer_ours.py``); Sockeye's is its own "Processed N lines.
  Total time" (``sockeye-translate`` starts that clock after loading the model; its first batches
  include its JIT tracing of encoder and decoder step). Greedy is beam size 1 for both (ours: greedy
  search; Sockeye: batched beam search of width 1, its ``--greedy`` has no batching). Each side's
  maximum output length is its own default rule, printed (Sockeye: source length x (mean + 2 std) of
  the training data's length ratio; ours: the same rule where our Translator has it, else
  max_seq_len_target + 1) unless ``--peer-max-output-length`` sets Sockeye's.
  Output tokens/s (subwords + ``</s>`` per second of decoding) are printed beside sentences/s, since
  the two models' outputs need not be equally long. Start-up + load time (process wall time minus
  decoding time: interpreter, torch import, model loading) and process wall time are printed too,
  the same way for both.
- output length / reference length, on the subword level (model tokens) and on the word level (the
  subwords joined back into words), over the same sentences; the Pearson correlation of output length
  with source length (subwords), next to the reference's own; the share of outputs that hit 60 tokens.
  The ratios again over the sentences whose source is 60 subwords or fewer: a source cut to 60 keeps
  its whole reference, which no output of the cut source can match (51 of the first 500 test sentences
  are cut, and hold a fifth of the reference tokens), so the all-sentence ratio sits a few percent
  below what the model does where it sees its whole input.
- peak RSS (the process tree, sampled by ``benchmarks.common.PeakRSS`` every 0.5 s in training and
  0.1 s in translation: sampling costs CPU the measured process would miss on 2 cores) of training and
  of beam-5 translation, next to what ``import torch`` alone takes in each interpreter (torch 2.x vs
  1.13.1+cu117).

**int8 decoding** (``--int8``; default fp32 on both sides): the translation runs decode in int8 on both
sides, with the same beam, batch size, threads, length penalty and output length rules as fp32. Ours:
our CTranslate2 engine (``InferenceConfig(engine="ctranslate2", compute_type="int8")``, what
``SEQ2SEQ_ENGINE=ctranslate2 SEQ2SEQ_COMPUTE_TYPE=int8`` selects in serving; ``peer_ours.py translate
--engine ctranslate2 --compute-type int8``) on the export of a *copy* of the best model
(``python -m model.ctranslate export --compute-type int8``: 7-bit int8 weights of every linear layer and
the embeddings, the tied output layer with them), made once before the timed runs and not timed (its
time is printed); the copy keeps the trained model's own folder free of an export, which would make
``engine=auto`` decode with it. Sockeye: ``sockeye-translate --dtype int8``, its own CPU int8 mode:
torch 1.13.1 dynamic int8 quantization of its ``nn.Linear`` layers at load (inside its load time, outside
its "Total time"); its output layer and embeddings stay float32. The footer names each side's engine and
compute type (fp32 runs: ours ``peer_ours.py --engine torch``, our search even where a model folder
holds an export; Sockeye ``--dtype float32``). With ``--int8`` a full run translates in int8 only.

**Translate-only** (``--reuse-work DIR``): DIR is the work folder of an earlier run (``--work-dir``, or
``--keep-work``). No data preparation and no training: the subword files of ``DIR/data`` are read (the
first ``--translate-sentences`` test sentences are cut to 60 and written under the new work folder), and
each side translates with the model a normal run would take after training: of the ``runs/ours-train-N``
/ ``runs/peer-train-N`` runs, the one of lowest validation perplexity, recomputed from the score files
those runs' scoring steps left (``score.json``, ``scores.txt`` + ``data/score.de``). Only the
translation measurements run; the printed table holds the translation rows (and the perplexities of
the two models used). DIR is only read: everything, the int8 export included, is written under
``--work-dir``, which must lie outside DIR. Training options (``--train-seconds`` …) are ignored.

**Words** (``--word-vocab-size N``): instead of subwords, the Moses-tokenized words themselves, with one
joint vocabulary of the N most frequent (the others ``<unk>``), as the built-in algorithm's vocabularies
are made: the setting of the issue's first measurements ("a shared 8k vocabulary"), where perplexities
are far lower than over subwords (an ``<unk>`` is easy to predict), so they compare only with runs of
the same setting.

**Training on** (``--train-on DIR --ours-only --train-seconds T``): each of our kept runs in DIR (an
earlier ``--ours-only`` run's work folder) is restarted on its checkpoint with ``max_training_seconds``
raised to T, which counts over restarts: the job trains on from its last update (a finished job with a
raised budget goes on; see the README's "Stops and restarts") and stops when T seconds of training are
spent in all (one run carried on, weights, optimizer and place in the data kept; the earlier run's
final checkpoint is one more in its history). It is then scored again and translated (translations under
``--work-dir``); the runs in DIR now hold the longer-trained models. So output length and perplexity can
be followed along one training run: ``--train-seconds 2700 --keep-work --work-dir W``, then
``--train-on W --train-seconds 5400 --work-dir W2``, and so on.

Runs alternate (ours, Sockeye, ours, …): ``--repeats`` (2) for training, ``--translate-repeats`` (3)
per decoding mode; the best run counts (highest speed, lowest perplexity, lowest memory); the
translations use each side's lowest-perplexity model. Everything is written under ``--work-dir``
(default: a temporary folder, removed at the end unless ``--keep-work``; kept after a failure), never
into the repository. A failing step stops the benchmark with the tail of its log.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import SAMPLE, PeakRSS

ROOT = Path(__file__).resolve().parent.parent
PEER_NAME = "Sockeye 3.1.34"
PEER_VERSION = "3.1.34"
PEER_TORCH = "1.13.1"
PEER_REQUIREMENTS = ("sockeye==3.1.34", "torch==1.13.1", "numpy<2")
DEFAULT_PEER_VENV = Path.home() / ".cache" / "wmt-seq2seq-bench" / "sockeye-3.1.34"
PEER_RUNNER = Path(__file__).resolve().parent / "peer_sockeye_train.py"
MAX_LEN = 60
UNK = "<unk>"  # model.vocab.UNK_SYMBOL, what both engines write for an out-of-vocabulary token
WARMUP_S = 30.0  # the first progress window of our trainer; the same span is skipped on Sockeye's side
SEED = 13
TAIL_LINES = 40


# --- running steps ---------------------------------------------------------------------------------

class StepFailed(RuntimeError):
    """A command of the benchmark failed; the message holds the tail of its log."""


def tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last lines of a log, for error messages (the whole log stays in the work folder)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def thread_env(threads: int) -> dict[str, str]:
    """The environment every measured process gets: the same thread count and no GPU."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    env.pop("VIRTUAL_ENV", None)
    return env


def peer_env(threads: int) -> dict[str, str]:
    """The same for Sockeye's processes, minus our PYTHONPATH: nothing of this repository (which has a
    top-level ``model`` package) may shadow a module of the peer's interpreter."""
    env = thread_env(threads)
    env.pop("PYTHONPATH")
    return env


@dataclasses.dataclass
class Finished:
    """What every measured command gives: its wall time, the peak RSS of its process tree, its log."""

    wall_s: float
    peak_rss: int
    log: Path


def run_step(name: str, cmd: Sequence[str | os.PathLike[str]], log: Path, env: dict[str, str], timeout: float,
             rss_interval: float = 0.2, poll: Callable[[subprocess.Popen, float], None] | None = None) -> Finished:
    """Run `cmd` with stdout+stderr into `log`, sampling the peak RSS of its process tree.

    Its own session, so that a timeout or Ctrl-C takes its children along. `poll(proc, elapsed)` is
    called about twice a second (our SIGTERM fallback uses it). A non-zero exit raises StepFailed with
    the tail of the log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        t0 = time.monotonic()
        proc = subprocess.Popen([str(c) for c in cmd], stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=str(log.parent), start_new_session=True)
        try:
            with PeakRSS(proc.pid, interval=rss_interval) as rss:
                while True:
                    try:
                        proc.wait(timeout=0.5)
                        break
                    except subprocess.TimeoutExpired:
                        elapsed = time.monotonic() - t0
                        if elapsed > timeout:
                            raise StepFailed(f"{name}: no result after {timeout:.0f} s; last lines of {log}:\n"
                                             f"{tail(log)}") from None
                        if poll is not None:
                            poll(proc, elapsed)
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise StepFailed(f"{name} failed (exit status {proc.returncode}); last lines of {log}:\n{tail(log)}")
    return Finished(wall, rss.peak, log)


# --- the peer's virtualenv -------------------------------------------------------------------------

def peer_python(venv: Path) -> Path:
    """The peer venv's interpreter (the timing runner needs it; the CLIs are its console scripts)."""
    return venv / "bin" / "python"


def peer_versions(venv: Path) -> tuple[str, str] | None:
    """(sockeye, torch) versions the venv imports, or None when it is missing or broken."""
    py = peer_python(venv)
    if not py.is_file():
        return None
    proc = subprocess.run([str(py), "-c", "import sockeye, torch; print(sockeye.__version__, torch.__version__)"],
                          capture_output=True, text=True, env=peer_env(1), timeout=300)
    if proc.returncode != 0:
        return None
    parts = proc.stdout.split()
    return (parts[0], parts[1]) if len(parts) == 2 else None


def find_python311() -> str:
    """python3.11 for the peer venv: torch 1.13.1 has no wheels for a newer Python."""
    found = shutil.which("python3.11") or ("/usr/bin/python3.11" if Path("/usr/bin/python3.11").exists() else None)
    if not found:
        raise StepFailed("python3.11 not found on PATH (Sockeye 3.1.34's torch 1.13.1 has wheels up to 3.11)")
    return found


def install_peer(venv: Path) -> None:
    """Create the throw-away venv and pip-install Sockeye there (a ~1 GB download, once)."""
    if venv.exists():
        if not (venv / "pyvenv.cfg").is_file():
            raise StepFailed(f"{venv} exists and is not a virtualenv: refusing to replace it")
        shutil.rmtree(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    log = venv.parent / f"{venv.name}-install.log"
    py = find_python311()
    print(f"installing {PEER_NAME} into {venv} with {py} (log: {log}) ...", flush=True)
    env = peer_env(2)
    run_step("python3.11 -m venv", [py, "-m", "venv", str(venv)], log, env, 600)
    run_step("pip install", [str(peer_python(venv)), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                             *PEER_REQUIREMENTS], log.with_suffix(".pip.log"), env, 3600)


def ensure_peer(a: argparse.Namespace) -> Path:
    """The peer venv, installed if asked; exits with instructions when it is not there."""
    venv = a.peer_venv.expanduser()
    found = peer_versions(venv)
    if found and found[0] == PEER_VERSION and found[1].startswith(PEER_TORCH):
        return venv
    if not a.install_peer:
        what = "is missing" if found is None else f"has sockeye {found[0]}, torch {found[1]}"
        sys.exit(f"error: the {PEER_NAME} virtualenv {venv} {what}.\n"
                 f"  Install it (once, ~1 GB of wheels, outside .venv) with:  "
                 f".venv/bin/python -m benchmarks.bench_peer --install-peer ...\n"
                 f"  or by hand:  python3.11 -m venv {venv} && {venv}/bin/pip install "
                 f"{' '.join(repr(r) if '<' in r else r for r in PEER_REQUIREMENTS)}\n"
                 f"  (--peer-venv DIR for another place; --ours-only to measure our side alone)")
    install_peer(venv)
    found = peer_versions(venv)
    if not found or found[0] != PEER_VERSION:
        raise StepFailed(f"the {PEER_NAME} venv {venv} does not import sockeye {PEER_VERSION} after installing")
    return venv


def peer_tool(venv: Path, name: str) -> str:
    """A Sockeye console script of the venv, called by path so that no PATH lookup can pick another."""
    return str(venv / "bin" / name)


# --- data ------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Prepared:
    tok: Path                 # subword text: train/val/test .en/.de (our tokenize step)
    channels: Path            # our RecordIO channels: train, validation (the in-training subset), vocab
    vocab_file: Path          # the joint vocabulary, for both
    vocab_size: int
    trainval: tuple[Path, Path]  # in-training validation subset (subword text)
    score: tuple[Path, Path]     # the whole validation split, cut to MAX_LEN subwords
    test_src: Path            # the first N test sources, cut to MAX_LEN
    test_ref: Path            # their references (subwords, not cut)
    peer_data: Path | None    # sockeye-prepare-data output
    stats: dict[str, Any]


def _read(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def _write(path: Path, lines: list[str]) -> Path:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(line + "\n" for line in lines)
    return path


def _cut(line: str, n: int = MAX_LEN) -> str:
    return " ".join(line.split()[:n])


def write_test(tok: Path, out: Path, sentences: int) -> tuple[Path, Path, dict[str, int]]:
    """The translation input (the first `sentences` test sources, cut to MAX_LEN) and its references."""
    test_en, test_de = _read(tok / "test.en"), _read(tok / "test.de")
    n = min(sentences, len(test_en))
    test_src = _write(out / "test.src", [_cut(s) for s in test_en[:n]])
    test_ref = _write(out / "test.ref", test_de[:n])
    return test_src, test_ref, {"test_sentences": n,
                                "test_sources_cut": sum(len(s.split()) > MAX_LEN for s in test_en[:n])}


def prepare_data(out: Path, a: argparse.Namespace, peer: Path | None) -> Prepared:
    """Subword text once with our tokenize step, our channels, and Sockeye's prepared data from the same
    files and vocabulary."""
    from pipeline_tasks.channels import VocabConfig, make_channels
    from pipeline_tasks.tokenization import TokenizerConfig, tokenize_corpus

    out.mkdir(parents=True, exist_ok=True)
    tok = out / "tok"
    splits = {s: (str(SAMPLE / f"{s}.en"), str(SAMPLE / f"{s}.de")) for s in ("train", "val", "test")}
    bpe = None if a.word_vocab_size else a.bpe_vocab_size
    tokenize_corpus(splits, tok, TokenizerConfig(mode="whitespace", bpe_vocab_size=bpe, bpe_joint=bool(bpe),
                                                 detokenizer="none"), workers=1)
    val_en, val_de = _read(tok / "val.en"), _read(tok / "val.de")
    n_tv = min(a.train_val_pairs, len(val_en))
    trainval = (_write(out / "trainval.en", val_en[:n_tv]), _write(out / "trainval.de", val_de[:n_tv]))
    pairs = [(s, t) for s, t in zip(val_en, val_de) if s.strip() and t.strip()]
    if a.score_pairs:
        pairs = pairs[:a.score_pairs]
    score = (_write(out / "score.en", [_cut(s) for s, _ in pairs]),
             _write(out / "score.de", [_cut(t) for _, t in pairs]))
    test_src, test_ref, test_stats = write_test(tok, out, a.translate_sentences)
    channels = out / "channels"
    words = a.word_vocab_size or VocabConfig.num_words_source  # subwords: every type of the training text
    report = make_channels(str(tok / "train.en"), str(tok / "train.de"), str(trainval[0]), str(trainval[1]), channels,
                           VocabConfig(joint=True, num_words_source=words, num_words_target=words), workers=1)
    vocab_file = channels / "vocab" / "vocab.src.json"
    train_en, train_de = _read(tok / "train.en"), _read(tok / "train.de")
    long_pairs = sum(len(s.split()) > MAX_LEN or len(t.split()) > MAX_LEN for s, t in zip(train_en, train_de))
    stats: dict[str, Any] = {
        "train_pairs": len(train_en), "train_pairs_longer_than_max": long_pairs,
        "train_target_tokens_per_epoch_ours": sum(min(len(t.split()), MAX_LEN) + 1 for t in train_de),
        "vocab_size": report["vocab"]["source_size"], "trainval_pairs": n_tv, "score_pairs": len(pairs),
        "units": token_units(tok), **test_stats,
    }
    peer_data = None
    if peer is not None:
        peer_data = out / "sockeye-data"
        log = run_step("sockeye-prepare-data", [
            peer_tool(peer, "sockeye-prepare-data"), "--source", tok / "train.en", "--target", tok / "train.de",
            "--source-vocab", vocab_file, "--target-vocab", vocab_file, "--shared-vocab",
            "--max-seq-len", f"{MAX_LEN}:{MAX_LEN}", "--bucket-width", "8", "--seed", str(SEED),
            "--max-processes", "1", "--output", peer_data], out / "sockeye-prepare-data.log",
            peer_env(a.threads), 1800).log
        m = re.search(r"(\d+) sequences did not fit into buckets and were discarded", log.read_text(errors="replace"))
        stats["peer_train_pairs_discarded"] = int(m.group(1)) if m else None
    return Prepared(tok, channels, vocab_file, stats["vocab_size"], trainval, score, test_src, test_ref, peer_data,
                    stats)


def _run_index(path: Path) -> int:
    m = re.search(r"-train-(\d+)$", path.name)
    return int(m.group(1)) if m else 0


def reuse_data(data: Path, out: Path, a: argparse.Namespace, peer: Path | None, flag: str) -> Prepared:
    """The prepared data of a kept work folder (its ``data/``), read, never written: the translation input
    for --translate-sentences is written under `out`."""
    tok = data / "tok"
    if not (tok / "test.en").is_file() or not (data / "score.de").is_file():
        raise StepFailed(f"{flag} {data.parent}: no data/tok/test.en or data/score.de (not a bench_peer work folder)")
    if peer and not (data / "sockeye-data").is_dir():
        raise StepFailed(f"{flag} {data.parent}: no data/sockeye-data (it was made with --ours-only)")
    out.mkdir(parents=True, exist_ok=True)
    test_src, test_ref, stats = write_test(tok, out, a.translate_sentences)
    stats["reused_from"] = str(data.parent)
    stats["units"] = token_units(tok)
    channels = data / "channels"
    return Prepared(tok, channels, channels / "vocab" / "vocab.src.json", 0,
                    (data / "trainval.en", data / "trainval.de"), (data / "score.en", data / "score.de"), test_src,
                    test_ref, data / "sockeye-data" if peer else None, stats)


def reuse_work(src: Path, out: Path, a: argparse.Namespace, peer: Path | None) -> tuple[Prepared, dict[str, list]]:
    """What a kept work folder (``--keep-work`` / ``--work-dir`` of an earlier run) holds for translating
    again: its prepared data (read, never written: the translation input for --translate-sentences is
    written under `out`) and each training run's model with the validation perplexity its scoring step
    left (``score.json`` / ``scores.txt``), as the runs' results list a normal run builds."""
    prep = reuse_data(src / "data", out, a, peer, "--reuse-work")
    runs: dict[str, list] = {"ours": [], "peer": []}
    for d in sorted((src / "runs").glob("ours-train-*"), key=_run_index):
        model, score = d / "ml" / "model", d / "score.json"
        if (model / "params.pt").is_file() and score.is_file():
            runs["ours"].append({"model": str(model), **our_score_result(score)})
    if peer:
        for d in sorted((src / "runs").glob("peer-train-*"), key=_run_index):
            model, score = d / "model", d / "scores.txt"
            if (model / "params.best").exists() and score.is_file():
                runs["peer"].append({"model": str(model), **peer_score_result(score, prep.score[1])})
    for side in ("ours", "peer") if peer else ("ours",):
        if not runs[side]:
            raise StepFailed(f"--reuse-work {src}: no scored {side}-train-N run (a trained model and its score "
                             f"file) under {src / 'runs'}")
    return prep, runs


# --- training: ours ---------------------------------------------------------------------------------

def our_time_limit_name() -> str | None:
    """``max_training_seconds`` if our hyperparameters know it (it is being added), else None."""
    from model.hyperparameters import Hyperparameters

    names = {f.name for f in dataclasses.fields(Hyperparameters)}
    return "max_training_seconds" if "max_training_seconds" in names else None


def our_hyperparameters(a: argparse.Namespace, limit_name: str | None) -> dict[str, str]:
    """The shared configuration in our hyperparameter names (strings, as SageMaker passes them)."""
    from model.hyperparameters import format_value

    hp = {
        "encoder_type": "transformer", "decoder_type": "transformer",
        "num_layers_encoder": 3, "num_layers_decoder": 3, "transformer_model_size": 256,
        "transformer_attention_heads": 4, "transformer_feed_forward_num_hidden": 1024,
        "transformer_dropout": 0.1, "transformer_positional_embedding_type": "fixed",
        "num_embed_source": 256, "num_embed_target": 256,
        "weight_tying": "true", "weight_tying_type": "src_trg_softmax",
        "batch_type": "word", "batch_size": 2048, "max_seq_len_source": MAX_LEN, "max_seq_len_target": MAX_LEN,
        "label_smoothing": 0.1, "optimizer_type": "adam", "learning_rate": a.learning_rate,
        "clip_gradient": 1.0, "lr_scheduler_type": "plateau_reduce", "plateau_reduce_lr_factor": 0.5,
        "plateau_reduce_lr_threshold": 3, "learning_rate_warmup": 0,
        "optimized_metric": "perplexity", "bleu_sample_size": 0,
        "checkpoint_frequency_num_batches": a.checkpoint_interval, "checkpoint_threshold": 1_000_000,
        "seed": SEED, "precision": "fp32",
    }
    if limit_name:
        hp[limit_name] = a.train_seconds
    hp.update(our_overrides(a))
    return {k: format_value(v) for k, v in hp.items()}


def our_overrides(a: argparse.Namespace) -> dict[str, str]:
    """--our-hyperparameter NAME=VALUE pairs (e.g. another initialisation), each checked by our own
    hyperparameter parser before anything runs: a misspelt name or a bad value would otherwise fail
    minutes later, in the container."""
    from model.hyperparameters import parse_value

    out = {}
    for item in getattr(a, "our_hyperparameter", None) or ():
        name, sep, value = item.partition("=")
        if not sep:
            raise StepFailed(f"--our-hyperparameter {item!r}: expected NAME=VALUE")
        try:
            parse_value(name, value)
        except ValueError as e:
            raise StepFailed(f"--our-hyperparameter {item!r}: {e}") from e
        out[name] = value
    return out


_DURATION = r"(?:\d+h)?\d+m\d+s"


def parse_duration(text: str) -> float:
    """Our logs' ``1h02m03s`` / ``7m30s`` (whole seconds)."""
    m = re.fullmatch(r"(?:(\d+)h)?(\d+)m(\d+)s", text)
    if not m:
        raise ValueError(f"not a duration: {text!r}")
    return int(m.group(1) or 0) * 3600 + int(m.group(2)) * 60 + int(m.group(3))


_PROGRESS = re.compile(r"epoch \d+ batch \d+/\d+, update \d+(?:/\d+)?; last (" + _DURATION +
                       r"): ([\d.]+) updates/s, (\d+) target tokens/s")
_PHASE = re.compile(r"checkpoint \d+: validating \(")
_EPOCH = re.compile(r"epoch \d+: \d+ batches of ([\d.]+) sentences and (\d+) real target tokens on average; "
                    r"padding ([\d.]+)% of source and ([\d.]+)% of target positions")
_SUMMARY = re.compile(r"training done: (.*?); (\d+) updates \((\d+) in this process\), (\d+) target tokens/s over (" +
                      _DURATION + r") of training \+ (" + _DURATION + r") of checkpoints")


def parse_our_log(text: str) -> dict[str, Any]:
    """Throughput from our trainer's log: progress windows (steady state) and the final summary."""
    windows: list[tuple[float, float]] = []  # (seconds, target tokens/s)
    first = True
    after_phase = False
    skipped_after_phase = 0
    for line in text.splitlines():
        if _PHASE.search(line):
            after_phase = True
            continue
        m = _PROGRESS.search(line)
        if not m:
            continue
        if first:
            first = False
        elif after_phase:
            skipped_after_phase += 1
        else:
            windows.append((parse_duration(m.group(1)), float(m.group(3))))
        after_phase = False
    out: dict[str, Any] = {"progress_windows": len(windows), "windows_skipped_after_validation": skipped_after_phase}
    epoch = _EPOCH.search(text)
    if epoch:
        out["target_tokens_per_update"] = float(epoch.group(2))
        out["padding_share"] = float(epoch.group(4)) / 100
    total_w = sum(w for w, _ in windows)
    out["steady_tok_s"] = sum(w * r for w, r in windows) / total_w if total_w else None
    summaries = _SUMMARY.findall(text)
    if summaries:
        reason, updates, in_process, rate, train_d, ckpt_d = summaries[-1]
        out.update(stop_reason=reason, updates=int(updates), updates_in_process=int(in_process),
                   overall_tok_s=float(rate),
                   training_s=parse_duration(train_d), checkpoint_s=parse_duration(ckpt_d))
        out["target_tokens"] = out["overall_tok_s"] * out["training_s"]
    return out


def train_ours(prep: Prepared, run_dir: Path, a: argparse.Namespace, limit_name: str | None) -> dict[str, Any]:
    """One training run of our container entrypoint under a SageMaker-style root."""
    root = run_dir / "ml"
    for ch in ("train", "validation", "vocab"):
        shutil.copytree(prep.channels / ch, root / "input" / "data" / ch)
    config = root / "input" / "config"
    config.mkdir(parents=True)
    hp = our_hyperparameters(a, limit_name)
    (config / "hyperparameters.json").write_text(json.dumps(hp, indent=1))
    return run_our_training(root, run_dir / "train.log", hp, a, limit_name)


def train_ours_on(run_dir: Path, a: argparse.Namespace) -> dict[str, Any]:
    """--train-on: a kept run of ours trained on to --train-seconds in all. The budget counts across
    restarts, so the job resumes from its checkpoint (same weights, optimizer, schedule and place in the
    epoch) and stops when the total is spent: the model of one longer run, with the shorter run's
    translations measured on the way."""
    root = run_dir / "ml"
    config = root / "input" / "config" / "hyperparameters.json"
    before = json.loads((root / "model" / "metrics.json").read_text())
    if before.get("training_seconds", 0) >= a.train_seconds:
        raise StepFailed(f"--train-on: {run_dir} has already trained {before['training_seconds']:.0f} s; "
                         f"--train-seconds {a.train_seconds} is the new total budget and must be larger")
    hp = {**json.loads(config.read_text()), "max_training_seconds": str(a.train_seconds)}
    config.write_text(json.dumps(hp, indent=1))
    result = run_our_training(root, run_dir / f"train-to-{a.train_seconds}s.log", hp, a, "max_training_seconds")
    result["resumed_at"] = {"updates": before["num_updates"], "training_seconds": before.get("training_seconds")}
    return result


def run_our_training(root: Path, log: Path, hp: dict[str, str], a: argparse.Namespace,
                     limit_name: str | None) -> dict[str, Any]:
    """Our container entrypoint on the SageMaker-style `root`, timed and parsed."""
    run_dir = log.parent
    config = root / "input" / "config"
    env = {**thread_env(a.threads), "SAGEMAKER_BASE_DIR": str(root)}
    cmd = [sys.executable, ROOT / "container" / "train"]
    timeout = a.train_seconds + 1800
    sigterm: dict[str, float] = {}

    def fallback(proc: subprocess.Popen, elapsed: float) -> None:
        if "sent" in sigterm:
            return
        if "start" not in sigterm:
            if re.search(r"model \S+ encoder / \S+ decoder, \d+ parameters", log.read_text(errors="replace")):
                sigterm["start"] = elapsed
            return
        if elapsed - sigterm["start"] >= a.train_seconds:
            proc.send_signal(signal.SIGTERM)
            sigterm["sent"] = elapsed

    t0 = time.monotonic()
    done = run_step("our training", cmd, log, env, timeout, rss_interval=0.5,
                    poll=None if limit_name else fallback)
    wall, peak, text = done.wall_s, done.peak_rss, log.read_text(errors="replace")
    result: dict[str, Any] = {"time_limit": limit_name or "SIGTERM + resume (fallback)"}
    if not limit_name:
        m = re.search(r"stopped by SIGTERM at update (\d+)", text)
        if m:
            result["sigterm_at_update"] = int(m.group(1))
            hp["max_num_batches"] = str(int(m.group(1)) + 1)
            (config / "hyperparameters.json").write_text(json.dumps(hp, indent=1))
            done2 = run_step("our training (resumed to finish)", cmd, run_dir / "train-finish.log", env, timeout,
                             rss_interval=0.5)
            wall += done2.wall_s
            peak = max(peak, done2.peak_rss)
            result["finish_wall_s"] = done2.wall_s
        text += (run_dir / "train-finish.log").read_text(errors="replace")
    result.update(parse_our_log(text))
    metrics = json.loads((root / "model" / "metrics.json").read_text())
    if metrics.get("training_seconds"):  # the training loop's own clock, checkpoints included
        result["loop_s"] = metrics["training_seconds"]
    elif "training_s" in result:
        result["loop_s"] = result["training_s"] + result["checkpoint_s"]
    result.update(updates=metrics["num_updates"], epochs=metrics["epochs_completed"],
                  checkpoints=len(metrics["history"]), best_checkpoint=metrics["best_checkpoint"],
                  logged_val_ppl=metrics["best_metric"], wall_s=wall, peak_rss=peak, model=str(root / "model"),
                  log=str(log), started_after_s=sigterm.get("start"), elapsed_s=time.monotonic() - t0)
    if "target_tokens_per_update" not in result and result.get("target_tokens") and result.get("updates_in_process"):
        result["target_tokens_per_update"] = result["target_tokens"] / result["updates_in_process"]
    return result


# --- training: Sockeye ------------------------------------------------------------------------------

def peer_train_args(prep: Prepared, out: Path, a: argparse.Namespace) -> list[str]:
    """The shared configuration in sockeye-train's flags."""
    assert prep.peer_data is not None
    return [
        "--prepared-data", str(prep.peer_data), "--validation-source", str(prep.trainval[0]),
        "--validation-target", str(prep.trainval[1]), "--output", str(out), "--use-cpu", "--seed", str(SEED),
        "--encoder", "transformer", "--decoder", "transformer", "--num-layers", "3:3",
        "--transformer-model-size", "256", "--transformer-attention-heads", "4",
        "--transformer-feed-forward-num-hidden", "1024", "--num-embed", "256:256",
        "--transformer-positional-embedding-type", "fixed", "--transformer-preprocess", "n",
        "--transformer-postprocess", "dr", "--transformer-activation-type", "relu",
        "--transformer-dropout-attention", "0.1:0.1", "--transformer-dropout-act", "0.1:0.1",
        "--transformer-dropout-prepost", "0.1:0.1", "--embed-dropout", "0:0",
        "--weight-tying-type", "src_trg_softmax", "--shared-vocab",
        "--batch-type", a.peer_batch_type, "--batch-size", "2048", "--label-smoothing", "0.1",
        "--optimizer", "adam", "--initial-learning-rate", str(a.learning_rate),
        "--gradient-clipping-type", "abs", "--gradient-clipping-threshold", "1.0",
        "--learning-rate-scheduler-type", "plateau-reduce", "--learning-rate-reduce-factor", "0.5",
        "--learning-rate-reduce-num-not-improved", "3", "--learning-rate-warmup", "0",
        "--no-reload-on-learning-rate-reduce", "--optimized-metric", "perplexity",
        "--checkpoint-interval", str(a.checkpoint_interval), "--max-seconds", str(a.train_seconds),
        "--decode-and-evaluate", "0", "--keep-last-params", "1", "--dtype", "float32",
    ]


def summarize_peer_stats(stats: dict[str, Any]) -> dict[str, Any]:
    """Throughput from the runner's per-batch records (see peer_sockeye_train.py)."""
    steps, ckpts = stats.get("steps", []), stats.get("checkpoints", [])
    if not steps:
        return {}
    start = stats["fit_start"]

    def ckpt_inside(lo: float, hi: float) -> float:
        return sum(max(0.0, min(b, hi) - max(a, lo)) for a, b in ckpts)

    def rate(sel: list[list[float]], lo: float) -> float | None:
        if not sel:
            return None
        hi = sel[-1][1]
        span = hi - lo - ckpt_inside(lo, hi)
        return sum(s[2] for s in sel) / span if span > 0 else None

    steady = [s for s in steps if s[0] >= start + WARMUP_S]
    tokens = sum(s[2] for s in steps)
    loop_s = stats.get("fit_end", steps[-1][1]) - start
    ckpt_s = sum(b - a for a, b in ckpts)
    return {
        "steady_tok_s": rate(steady, steady[0][0]) if steady else None,
        "overall_tok_s": rate(steps, start), "target_tokens": tokens, "training_s": loop_s - ckpt_s,
        "checkpoint_s": ckpt_s, "loop_s": loop_s, "target_tokens_per_update": tokens / len(steps),
        "padding_share": 1 - tokens / sum(s[4] for s in steps),
        "steady_batches": len(steady),
    }


_SOCKEYE_TOK = re.compile(r"E=\d+ B=\d+\s+s/sec=([\d.]+) tok/sec=([\d.]+) u/sec=([\d.]+)")


def train_peer(prep: Prepared, peer: Path, run_dir: Path, a: argparse.Namespace,
               extra_args: Sequence[str] = ()) -> dict[str, Any]:
    """One Sockeye training run through the timing runner (`extra_args` go after the shared flags, so
    they win: e.g. ``--max-updates``)."""
    out = run_dir / "model"
    stats_file = run_dir / "peer-stats.json"
    env = {**peer_env(a.threads), "BENCH_PEER_STATS": str(stats_file)}
    if not a.peer_native_max_seconds:
        env["BENCH_PEER_DEADLINE_S"] = str(a.train_seconds)
    log = run_dir / "train.log"
    cmd = [peer_python(peer), PEER_RUNNER, *peer_train_args(prep, out, a), *extra_args]
    done = run_step("sockeye-train", cmd, log, env, a.train_seconds + 1800, rss_interval=0.5)
    stats = json.loads(stats_file.read_text())
    result: dict[str, Any] = {"time_limit": "--max-seconds" if a.peer_native_max_seconds else
                              "deadline -> max_updates (runner)"}
    result.update(summarize_peer_stats(stats))
    logged = _SOCKEYE_TOK.findall(log.read_text(errors="replace"))
    result.update(updates=stats.get("updates"), epochs=stats.get("epochs"), checkpoints=stats.get("checkpoints_done"),
                  best_checkpoint=stats.get("best_checkpoint"), logged_val_ppl=stats.get("best_metric"),
                  deadline_update=stats.get("deadline_update"), torch_threads=stats.get("torch_threads"),
                  wall_s=done.wall_s, peak_rss=done.peak_rss,
                  model=str(out), log=str(log),
                  logged_padded_source_tok_s=statistics.median(float(t) for _, t, _ in logged) if logged else None)
    return result


# --- validation perplexity ----------------------------------------------------------------------------

def score_ours(model: str, prep: Prepared, run_dir: Path, a: argparse.Namespace) -> dict[str, Any]:
    out = run_dir / "score.json"
    run_step("our scoring", [sys.executable, "-m", "benchmarks.peer_ours", "score", "--model", model,
                             "--source", prep.score[0], "--target", prep.score[1], "--output", out,
                             "--batch-size", "32", "--threads", str(a.threads)],
             run_dir / "score.log", thread_env(a.threads), 3600)
    return our_score_result(out)


def our_score_result(out: Path) -> dict[str, Any]:
    """Perplexity and counts from our scorer's JSON."""
    r = json.loads(out.read_text())
    return {"val_ppl": math.exp(r["nll_sum"] / r["tokens"]), "val_nll": r["nll_sum"], "val_tokens": r["tokens"],
            "val_pairs": r["pairs"]}


def score_peer(model: str, prep: Prepared, peer: Path, run_dir: Path, a: argparse.Namespace) -> dict[str, Any]:
    out = run_dir / "scores.txt"
    env = peer_env(a.threads)
    run_step("sockeye-score", [peer_tool(peer, "sockeye-score"), "--model", model, "--source", prep.score[0],
                               "--target", prep.score[1], "--use-cpu", "--batch-size", "32",
                               "--score-type", "neglogprob", "--length-penalty-alpha", "0",
                               "--length-penalty-beta", "0", "--brevity-penalty-weight", "0",
                               "--output-type", "score", "--output", out],
             run_dir / "score.log", env, 3600)
    return peer_score_result(out, prep.score[1])


def peer_score_result(out: Path, target_file: Path) -> dict[str, Any]:
    """Perplexity and counts from sockeye-score's sentence NLLs and the scored targets."""
    scores = [float(line.split("\t")[0]) for line in _read(out) if line.strip()]
    targets = _read(target_file)
    if len(scores) != len(targets):
        raise StepFailed(f"sockeye-score wrote {len(scores)} scores for {len(targets)} pairs ({out})")
    tokens = sum(len(t.split()) + 1 for t in targets)
    return {"val_ppl": math.exp(sum(scores) / tokens), "val_nll": sum(scores), "val_tokens": tokens,
            "val_pairs": len(scores)}


# --- translation ------------------------------------------------------------------------------------

def our_engine_args(a: argparse.Namespace) -> list[str]:
    """peer_ours.py's engine flags: our torch search (fp32) or CTranslate2 int8 on the model's export."""
    return ["--engine", "ctranslate2", "--compute-type", "int8"] if a.int8 else ["--engine", "torch"]


def peer_dtype(a: argparse.Namespace) -> str:
    """sockeye-translate's --dtype: float32, or int8 (its CPU int8 mode, see peer_engine)."""
    return "int8" if a.int8 else "float32"


def peer_engine(a: argparse.Namespace) -> str:
    """What decodes on Sockeye's side, for the report."""
    if a.int8:
        return (f"sockeye-translate --dtype int8 (torch {PEER_TORCH} dynamic int8 quantization of its nn.Linear "
                f"layers at load; its output layer and embeddings stay float32)")
    return "sockeye-translate --dtype float32"


def export_ours_int8(model: str, out: Path, a: argparse.Namespace) -> dict[str, Any]:
    """A copy of our trained model directory with its CTranslate2 export (``python -m model.ctranslate export
    --compute-type int8``: float32 and 7-bit int8 weights), made once before the timed runs and not timed
    in them. A copy, so that the trained model (maybe in a reused work folder) is not written to, and its
    own directory keeps no export that would change how it decodes."""
    if out.exists():
        raise StepFailed(f"{out} exists already")
    shutil.copytree(model, out, ignore=shutil.ignore_patterns("ctranslate2", ".ctranslate2.*"))
    done = run_step("CTranslate2 export of our model", [sys.executable, "-m", "model.ctranslate", "export", out,
                                                        "--compute-type", "int8"],
                    out.parent / "ours-int8-export.log", thread_env(a.threads), 1800)
    return {"source_model": model, "model": str(out), "export_wall_s": done.wall_s, "log": str(done.log)}


def translate_ours(model: str, prep: Prepared, run_dir: Path, beam: int, a: argparse.Namespace) -> dict[str, Any]:
    hyp = run_dir / "hyp.txt"
    done = run_step(f"our translation (beam {beam})", [
        sys.executable, "-m", "benchmarks.peer_ours", "translate", "--model", model, "--input", prep.test_src,
        "--output", hyp, "--beam-size", str(beam), "--batch-size", str(a.translate_batch_size),
        "--threads", str(a.threads), *our_engine_args(a)], run_dir / "translate.log", thread_env(a.threads), 3600,
        rss_interval=0.1)
    info = json.loads((run_dir / "hyp.txt.json").read_text())
    return {"sent_s": info["sentences"] / info["decode_s"], "out_tok_s": output_tokens(hyp) / info["decode_s"],
            "decode_s": info["decode_s"],
            "load_s": done.wall_s - info["decode_s"], "model_load_s": info["load_s"], "wall_s": done.wall_s,
            "peak_rss": done.peak_rss, "hyp": str(hyp), "output_length_rule": info.get("output_length_rule"),
            "engine": info.get("engine")}


_SOCKEYE_DONE = re.compile(r"Processed (\d+) lines\. Total time: ([\d.]+)")


def translate_peer(model: str, prep: Prepared, peer: Path, run_dir: Path, beam: int,
                   a: argparse.Namespace) -> dict[str, Any]:
    hyp = run_dir / "hyp.txt"
    env = peer_env(a.threads)
    cmd = [peer_tool(peer, "sockeye-translate"), "--models", model, "--input", prep.test_src, "--output", hyp,
           "--use-cpu", "--beam-size", str(beam), "--batch-size", str(a.translate_batch_size),
           "--output-type", "translation", "--length-penalty-alpha", "1.0", "--length-penalty-beta", "0.0",
           "--dtype", peer_dtype(a)]
    if a.peer_max_output_length:
        cmd += ["--max-output-length", str(a.peer_max_output_length)]
    log = run_dir / "translate.log"
    done = run_step(f"sockeye-translate (beam {beam})", cmd, log, env, 3600, rss_interval=0.1)
    m = _SOCKEYE_DONE.findall(log.read_text(errors="replace"))
    if not m:
        raise StepFailed(f"sockeye-translate: no 'Processed N lines. Total time' line in {log}:\n{tail(log)}")
    lines, seconds = int(m[-1][0]), float(m[-1][1])
    return {"sent_s": lines / seconds, "out_tok_s": output_tokens(hyp) / seconds, "decode_s": seconds,
            "load_s": done.wall_s - seconds, "wall_s": done.wall_s,
            "peak_rss": done.peak_rss, "hyp": str(hyp), "output_length_rule": peer_length_rule(Path(model), a),
            "engine": peer_engine(a)}


def peer_length_rule(model: Path, a: argparse.Namespace) -> str:
    """Sockeye's output length limit in words: --max-output-length, else its length-ratio rule, whose
    mean and std it saved in the model's config."""
    if a.peer_max_output_length:
        return f"{a.peer_max_output_length} tokens (+ </s>)"
    config = (model / "config").read_text(errors="replace") if (model / "config").is_file() else ""
    mean = re.search(r"length_ratio_mean: ([\d.]+)", config)
    std = re.search(r"length_ratio_std: ([\d.]+)", config)
    if not (mean and std):
        return "length-ratio rule (mean + 2 std)"
    return (f"ceil({float(mean.group(1)) + 2 * float(std.group(1)):.3g} x source tokens incl. </s>), "
            f"at most {MAX_LEN + 1}")


def output_tokens(hyp: Path) -> int:
    """Subword tokens of a hypothesis file plus one ``</s>`` per line, so that speeds compare even where
    the two models' outputs differ in length (beam search may take more steps than its answer has)."""
    return sum(len(line.split()) + 1 for line in _read(hyp))


def words(pieces: str) -> int:
    """Words of a SentencePiece-split line: the pieces joined back (``▁`` starts a word)."""
    return len(pieces.replace(" ", "").replace("▁", " ").split())


def token_units(tok: Path) -> str:
    """"subwords" where the prepared text was split by SentencePiece, else "words" (--word-vocab-size)."""
    return "subwords" if any(tok.glob("spm.*.model")) else "words"


def length_stats(hyp: Path, prep: Prepared) -> dict[str, Any]:
    """Output length against reference length, and against source length (per sentence)."""
    hyps, refs, srcs = _read(hyp), _read(prep.test_ref), _read(prep.test_src)
    if len(hyps) != len(refs):
        raise StepFailed(f"{hyp}: {len(hyps)} lines for {len(refs)} sources")
    h = [len(x.split()) for x in hyps]
    r = [len(x.split()) for x in refs]
    s = [len(x.split()) for x in srcs]
    count_words = words if token_units(prep.tok) == "subwords" else (lambda line: len(line.split()))
    # The sources longer than MAX_LEN were cut, their references not: a model that saw only part of a
    # source cannot write all of its reference, so those sentences pull the ratio down whatever the model.
    whole = [i for i, x in enumerate(_read(prep.tok / "test.en")[:len(hyps)]) if len(x.split()) <= MAX_LEN]
    # Outputs cut by the length limit are runaway loops (in the word setting, runs of <unk>): the ratio
    # over the others and the median sentence ratio show the length modelling apart from the loops.
    below = [i for i, n in enumerate(h) if n < MAX_LEN]
    vocab = json.loads(prep.vocab_file.read_text(encoding="utf-8"))
    ref_oov = sum(w not in vocab for x in refs for w in x.split())  # what a perfect model would write as <unk>

    def corr(x: list[int], y: list[int]) -> float | None:
        try:
            return statistics.correlation(x, y)
        except statistics.StatisticsError:
            return None

    return {"len_ratio_subword": sum(h) / sum(r),
            "len_ratio_word": sum(map(count_words, hyps)) / sum(map(count_words, refs)),
            "whole_sources": len(whole),
            "len_ratio_subword_whole": sum(h[i] for i in whole) / sum(r[i] for i in whole),
            "len_ratio_word_whole": (sum(count_words(hyps[i]) for i in whole)
                                     / sum(count_words(refs[i]) for i in whole)),
            "len_ratio_below_max": (sum(h[i] for i in below) / sum(r[i] for i in below)) if below else None,
            "median_sentence_ratio": statistics.median(n / max(m, 1) for n, m in zip(h, r)),
            "unk_share": sum(x.split().count(UNK) for x in hyps) / max(sum(h), 1),
            "ref_unk_share": ref_oov / max(sum(r), 1),
            "corr_src": corr(h, s), "ref_corr_src": corr(r, s),
            "at_max_share": sum(n >= MAX_LEN for n in h) / len(h), "empty": sum(n == 0 for n in h)}


def import_rss(python: str) -> int | None:
    """Peak RSS (bytes) of an interpreter that only imports torch: what each side pays before any work."""
    env = peer_env(2)
    proc = subprocess.run([python, "-c", "import resource, torch; "
                           "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"],
                          capture_output=True, text=True, env=env, timeout=300)
    return int(proc.stdout.strip()) * 1024 if proc.returncode == 0 and proc.stdout.strip().isdigit() else None


# --- reporting --------------------------------------------------------------------------------------

def _best(runs: list[dict[str, Any]], key: str, lower: bool = False) -> float | None:
    vals = [r[key] for r in runs if r.get(key) is not None]
    if not vals:
        return None
    return min(vals) if lower else max(vals)


def _fmt(v: Any, kind: str) -> str:
    if v is None:
        return "–"
    if kind == "int":
        return f"{v:,.0f}"
    if kind == "mib":
        return f"{v / 2**20:,.0f}"
    if kind == "pct":
        return f"{v:.1%}"
    if kind == "f1":
        return f"{v:,.1f}"
    if kind == "f3":
        return f"{v:.3f}"
    return f"{v:,.2f}"


def table(results: dict[str, Any], peer: bool, training: bool = True) -> list[str]:
    """The summary table: best-of figures of both sides and ours/peer (without `training`, the translation
    rows only, after the perplexity of the models that translated)."""
    o, p = results["ours"], results.get("peer", {})
    rows: list[tuple[str, Any, Any, str, str]] = []  # label, ours, peer, format, better

    def add(label: str, ours_v: Any, peer_v: Any, kind: str = "f2", better: str = "") -> None:
        rows.append((label, ours_v, peer_v, kind, better))

    ot, pt = o["train"], p.get("train", [])
    if not training:
        add("validation perplexity of the model used", _best(ot, "val_ppl", True), _best(pt, "val_ppl", True), "f2",
            "lower")
    else:
        add("training target tok/s, steady state", _best(ot, "steady_tok_s"), _best(pt, "steady_tok_s"), "int",
            "higher")
        add("training target tok/s, overall", _best(ot, "overall_tok_s"), _best(pt, "overall_tok_s"), "int", "higher")
        add("updates in the budget", _best(ot, "updates"), _best(pt, "updates"), "int")
        add("real target tokens / update", _best(ot, "target_tokens_per_update"), _best(pt, "target_tokens_per_update"),
            "int")
        add("training loop s (incl. checkpoints)", _best(ot, "loop_s", True), _best(pt, "loop_s", True), "f1")
        add("  of which checkpoints/validation s", _best(ot, "checkpoint_s", True), _best(pt, "checkpoint_s", True),
            "f1")
        add("training process wall s", _best(ot, "wall_s", True), _best(pt, "wall_s", True), "f1")
        add("validation perplexity (plain NLL)", _best(ot, "val_ppl", True), _best(pt, "val_ppl", True), "f2", "lower")
        add("peak RSS training MiB", _best(ot, "peak_rss", True), _best(pt, "peak_rss", True), "mib", "lower")
    for mode in ("beam5", "greedy"):
        ob, pb = o.get(mode, []), p.get(mode, [])
        add(f"translate {mode} sent/s (decode)", _best(ob, "sent_s"), _best(pb, "sent_s"), "f2", "higher")
        add(f"  {mode} output tokens/s (decode, incl. </s>)", _best(ob, "out_tok_s"), _best(pb, "out_tok_s"), "f1",
            "higher")
        add(f"  {mode} startup + load s (wall - decode)", _best(ob, "load_s", True), _best(pb, "load_s", True), "f2")
        add(f"  {mode} process wall s", _best(ob, "wall_s", True), _best(pb, "wall_s", True), "f1")
        ol, pl = o.get(f"{mode}_lengths", {}), p.get(f"{mode}_lengths", {})
        add(f"  {mode} output/ref length, subwords", ol.get("len_ratio_subword"), pl.get("len_ratio_subword"), "f3")
        add(f"  {mode} output/ref length, words", ol.get("len_ratio_word"), pl.get("len_ratio_word"), "f3")
        add(f"  {mode} same, sources within {MAX_LEN}: subwords", ol.get("len_ratio_subword_whole"),
            pl.get("len_ratio_subword_whole"), "f3")
        add(f"  {mode} same, sources within {MAX_LEN}: words", ol.get("len_ratio_word_whole"),
            pl.get("len_ratio_word_whole"), "f3")
        add(f"  {mode} corr(output len, source len)", ol.get("corr_src"), pl.get("corr_src"), "f3")
        add(f"  {mode} outputs at {MAX_LEN} tokens", ol.get("at_max_share"), pl.get("at_max_share"), "pct")
    add("peak RSS beam-5 translation MiB", _best(o.get("beam5", []), "peak_rss", True),
        _best(p.get("beam5", []), "peak_rss", True), "mib", "lower")
    add("RSS of `import torch` alone MiB", o.get("import_torch_rss"), p.get("import_torch_rss"), "mib")
    width = max(len(r[0]) for r in rows)
    out = [f"| {'':<{width}} | {'ours':>12} | {PEER_NAME if peer else '':>14} | {'ours/peer' if peer else '':>9} |",
           f"| {'-' * width} | {'-' * 11}: | {'-' * 13}: | {'-' * 8}: |"]
    for label, ov, pv, kind, better in rows:
        ratio = f"{ov / pv:.2f}" if peer and ov is not None and pv not in (None, 0) and kind != "pct" else ""
        if ratio and better:
            ratio += " ↑" if better == "higher" else " ↓"
        out.append(f"| {label:<{width}} | {_fmt(ov, kind):>12} | {_fmt(pv, kind) if peer else '':>14} | {ratio:>9} |")
    return out


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


# --- main ---------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train-seconds", type=int, default=450, help="training budget per run, both sides")
    ap.add_argument("--repeats", type=int, default=2, help="alternating training runs per side; the best counts")
    ap.add_argument("--translate-repeats", type=int, default=3, help="alternating translation runs per side and mode")
    ap.add_argument("--translate-sentences", type=int, default=500, help="the first N test sentences")
    ap.add_argument("--translate-batch-size", type=int, default=32, help="sentences per decoding batch, both sides")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for every measured process")
    ap.add_argument("--checkpoint-interval", type=int, default=100, help="updates between checkpoints, both sides")
    ap.add_argument("--learning-rate", type=float, default=0.0003, help="Adam learning rate, both sides")
    ap.add_argument("--bpe-vocab-size", type=int, default=8000, help="joint SentencePiece BPE size")
    ap.add_argument("--word-vocab-size", type=int, default=0, metavar="N",
                    help="words instead of subwords: one joint vocabulary of the N most frequent words of the "
                         "Moses-tokenized text, the others <unk> (the issue's first measurements: a shared 8k "
                         "vocabulary); 0: --bpe-vocab-size subwords")
    ap.add_argument("--train-val-pairs", type=int, default=500,
                    help="validation pairs evaluated at each checkpoint during training (final scoring uses all)")
    ap.add_argument("--score-pairs", type=int, default=0,
                    help="score only the first N validation pairs (0: all 3,000; sockeye-score pads every batch to "
                         "the maximum length, so it is slow)")
    ap.add_argument("--peer-batch-type", choices=("word", "max-word"), default="word",
                    help="Sockeye's --batch-type (max-word caps padded tokens as ours does)")
    ap.add_argument("--peer-max-output-length", type=int, default=0,
                    help="Sockeye's --max-output-length (0: its own length-ratio rule)")
    ap.add_argument("--peer-native-max-seconds", action="store_true",
                    help="stop Sockeye by its own --max-seconds (checked only at checkpoints) instead of at the budget")
    ap.add_argument("--peer-venv", type=Path, default=DEFAULT_PEER_VENV, help="the Sockeye virtualenv")
    ap.add_argument("--install-peer", action="store_true", help="create the Sockeye virtualenv if it is missing")
    ap.add_argument("--ours-only", action="store_true", help="measure our side only (no Sockeye needed)")
    ap.add_argument("--no-translate", action="store_true", help="skip the translation measurements")
    ap.add_argument("--reuse-work", type=Path, metavar="DIR",
                    help="translate only, with the best trained model of each side in DIR (the work folder of an "
                         "earlier run, kept; read, never written): no data preparation, no training")
    ap.add_argument("--train-on", type=Path, metavar="DIR",
                    help="train our kept runs in DIR (the work folder of an earlier --ours-only run) on to "
                         "--train-seconds in all, then score and translate them; DIR's runs are written, the "
                         "translations go under --work-dir")
    ap.add_argument("--int8", action="store_true",
                    help="int8 decoding on both sides: ours CTranslate2 compute type int8 (exported once, untimed), "
                         "Sockeye --dtype int8")
    ap.add_argument("--work-dir", type=Path, help="where everything is written (default: a temporary folder)")
    ap.add_argument("--keep-work", action="store_true", help="keep the temporary work folder")
    ap.add_argument("--our-hyperparameter", action="append", default=[], metavar="NAME=VALUE",
                    help="one of our hyperparameters set otherwise than the shared configuration, for our side only "
                         "(repeatable; e.g. xavier_factor_type=avg and weight_init_scale=3.0: Sockeye's "
                         "initialisation)")
    ap.add_argument("--json", type=Path, help="write all results as JSON here (also after every run, marked partial)")
    a = ap.parse_args(argv)
    if a.train_seconds < 10 or a.repeats < 1 or a.translate_repeats < 1 or a.translate_sentences < 1:
        ap.error("--train-seconds >= 10, --repeats, --translate-repeats and --translate-sentences >= 1")
    if a.reuse_work and a.train_on:
        ap.error("--reuse-work translates only, --train-on trains on: choose one")
    if a.train_on and not a.ours_only:
        ap.error("--train-on trains our runs only: add --ours-only")
    for flag in ("reuse_work", "train_on"):
        folder = getattr(a, flag)
        if not folder:
            continue
        name = "--" + flag.replace("_", "-")
        folder = folder.expanduser().resolve()
        setattr(a, flag, folder)
        if not (folder / "runs").is_dir() or not (folder / "data").is_dir():
            ap.error(f"{name} {folder}: no runs/ and data/ folders (the --work-dir of an earlier run)")
        if a.no_translate and flag == "reuse_work":
            ap.error("--reuse-work only translates: it cannot go with --no-translate")
        work = a.work_dir.expanduser().resolve() if a.work_dir else None
        if work and (work == folder or folder in work.parents):
            ap.error(f"--work-dir must be outside {name}")
    return a


def work_folder(a: argparse.Namespace) -> tuple[Path, bool]:
    """The work folder (outside the repository) and whether it is ours to remove at the end."""
    if a.work_dir is None:
        return Path(tempfile.mkdtemp(prefix="bench-peer-")), not a.keep_work
    work = a.work_dir.expanduser().resolve()
    if work == ROOT or ROOT in work.parents:
        sys.exit(f"error: --work-dir {work} is inside the repository; the benchmark writes nothing there")
    if work.exists() and any(work.iterdir()):
        sys.exit(f"error: --work-dir {work} is not empty")
    work.mkdir(parents=True, exist_ok=True)
    return work, False


def save_partial(results: dict[str, Any], a: argparse.Namespace) -> None:
    """The results so far into --json after every run, so that a long benchmark stopped half-way (or a
    step that fails late) still leaves what it measured."""
    if a.json:
        a.json.write_text(json.dumps({**results, "partial": True}, indent=2, default=str) + "\n")


def run(a: argparse.Namespace, work: Path, peer: Path | None) -> dict[str, Any]:
    started = time.time()
    load0 = os.getloadavg()
    print(f"bench_peer: ours vs {PEER_NAME if peer else '(ours only)'} on {cpu_name()}, {a.threads} threads per "
          f"process, work folder {work}" + (f", models of {a.reuse_work}" if a.reuse_work else ""), flush=True)
    if a.reuse_work:
        prep, runs = reuse_work(a.reuse_work, work / "data", a, peer)
        results: dict[str, Any] = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
                                   "data": prep.stats, "cpu": cpu_name(), "ours": {"train": runs["ours"]}}
        if peer:
            results["peer"] = {"train": runs["peer"], "name": PEER_NAME}
        print(f"reused {a.reuse_work}: {len(runs['ours'])} trained model(s) of ours"
              + (f", {len(runs['peer'])} of Sockeye" if peer else "")
              + f"; translating {prep.stats['test_sentences']} test sentences ({prep.stats['test_sources_cut']} cut "
              f"to {MAX_LEN})", flush=True)
    elif a.train_on:
        prep, results = train_on_all(a, work)
    else:
        prep, results = train_all(a, work, peer)
    if not a.no_translate:
        translate_all(results, prep, a, work, peer)
    results["ours"]["import_torch_rss"] = import_rss(sys.executable)
    if peer:
        results["peer"]["import_torch_rss"] = import_rss(str(peer_python(peer)))
    results["seconds"] = time.time() - started
    results["loadavg"] = {"start": load0, "end": os.getloadavg()}
    return results


def best_models(results: dict[str, Any]) -> dict[str, str]:
    """Each side's model to translate with: its training run of lowest validation perplexity."""
    return {side: min(results[side]["train"], key=lambda r: r["val_ppl"])["model"]
            for side in ("ours", "peer") if side in results}


def train_all(a: argparse.Namespace, work: Path, peer: Path | None) -> tuple[Prepared, dict[str, Any]]:
    """Data preparation, then the alternating training runs of both sides, each scored."""
    prep = prepare_data(work / "data", a, peer)
    limit = our_time_limit_name()
    st = prep.stats
    print(f"data: {st['train_pairs']:,} training pairs ({st['train_pairs_longer_than_max']:,} longer than {MAX_LEN} "
          f"{st['units']} on a side: ours truncates them"
          + (f", Sockeye discarded {st['peer_train_pairs_discarded']}" if peer else "")
          + f"), joint vocabulary {prep.vocab_size:,}, in-training validation {st['trainval_pairs']} pairs, "
          f"scoring {st['score_pairs']:,} validation pairs, translating {st['test_sentences']} test sentences "
          f"({st['test_sources_cut']} cut to {MAX_LEN})", flush=True)
    if not limit:
        print("note: model.hyperparameters has no max_training_seconds yet: our runs are stopped by SIGTERM at the "
              "budget and resumed for one update to validate and keep the best model", flush=True)
    results: dict[str, Any] = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
                               "data": st, "cpu": cpu_name(), "our_time_limit": limit,
                               "ours": {"train": []}}
    if peer:
        results["peer"] = {"train": [], "name": PEER_NAME}
    for i in range(1, a.repeats + 1):
        sides = [("ours", None)] + ([("peer", peer)] if peer else [])
        for side, venv in sides:
            run_dir = work / "runs" / f"{side}-train-{i}"
            print(f"[{time.strftime('%H:%M:%S')}] training {side} run {i}/{a.repeats} ({a.train_seconds} s) ...",
                  flush=True)
            if venv is None:
                r = train_ours(prep, run_dir, a, limit)
                r.update(score_ours(r["model"], prep, run_dir, a))
            else:
                r = train_peer(prep, venv, run_dir, a)
                r.update(score_peer(r["model"], prep, venv, run_dir, a))
            results[side]["train"].append(r)
            save_partial(results, a)
            print(f"    {r.get('updates')} updates, steady {_fmt(r.get('steady_tok_s'), 'int')} target tok/s, "
                  f"overall {_fmt(r.get('overall_tok_s'), 'int')}, loop {_fmt(r.get('loop_s'), 'f1')} s, "
                  f"val ppl {r['val_ppl']:.2f} ({r['val_tokens']:,} tokens), peak RSS "
                  f"{r['peak_rss'] / 2**20:,.0f} MiB", flush=True)
    if peer:
        ot, pt = results["ours"]["train"][0]["val_tokens"], results["peer"]["train"][0]["val_tokens"]
        if ot != pt:
            print(f"WARNING: the two perplexities count different tokens: ours {ot:,}, Sockeye {pt:,}")
    return prep, results


def train_on_all(a: argparse.Namespace, work: Path) -> tuple[Prepared, dict[str, Any]]:
    """--train-on: every kept run of ours in the folder trained on to the larger budget, then scored."""
    prep, _ = reuse_work(a.train_on, work / "data", a, None)
    prep.stats["score_pairs"] = len(_read(prep.score[1]))
    results: dict[str, Any] = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
                               "data": prep.stats, "cpu": cpu_name(), "our_time_limit": "max_training_seconds",
                               "ours": {"train": []}}
    for run_dir in sorted((a.train_on / "runs").glob("ours-train-*"), key=_run_index):
        print(f"[{time.strftime('%H:%M:%S')}] training {run_dir.name} on to {a.train_seconds} s ...", flush=True)
        r = train_ours_on(run_dir, a)
        r.update(score_ours(r["model"], prep, run_dir, a))
        results["ours"]["train"].append(r)
        save_partial(results, a)
        print(f"    from update {r['resumed_at']['updates']} to {r['updates']}, steady "
              f"{_fmt(r.get('steady_tok_s'), 'int')} target tok/s, val ppl {r['val_ppl']:.2f}", flush=True)
    return prep, results


def translate_all(results: dict[str, Any], prep: Prepared, a: argparse.Namespace, work: Path,
                  peer: Path | None) -> None:
    """The alternating translation runs (beam 5, then greedy) with each side's best model; with --int8 our
    model is exported for CTranslate2 first (untimed) and Sockeye loads its model with --dtype int8."""
    models = best_models(results)
    for side, model in models.items():
        ppl = min(r["val_ppl"] for r in results[side]["train"])
        print(f"translating with {side}: {model} (validation perplexity {ppl:.2f})", flush=True)
    if a.int8:
        print(f"[{time.strftime('%H:%M:%S')}] exporting our model for CTranslate2 int8 (not timed) ...", flush=True)
        exported = export_ours_int8(models["ours"], work / "runs" / "ours-int8-model", a)
        results["ours"]["int8_export"] = exported
        models["ours"] = exported["model"]
        print(f"    exported in {exported['export_wall_s']:.1f} s: {exported['model']}", flush=True)
    suffix = "-int8" if a.int8 else ""
    for mode, beam in (("beam5", 5), ("greedy", 1)):
        for i in range(1, a.translate_repeats + 1):
            for side in models:
                run_dir = work / "runs" / f"{side}-{mode}{suffix}-{i}"
                print(f"[{time.strftime('%H:%M:%S')}] translating {side} {mode}{suffix} run {i}/"
                      f"{a.translate_repeats} ...", flush=True)
                r = (translate_ours(models[side], prep, run_dir, beam, a) if side == "ours" else
                     translate_peer(models[side], prep, peer, run_dir, beam, a))  # type: ignore[arg-type]
                results[side].setdefault(mode, []).append(r)
                if i == 1:
                    results[side][f"{mode}_lengths"] = length_stats(Path(r["hyp"]), prep)
                save_partial(results, a)
                print(f"    {r['sent_s']:.2f} sent/s ({r['decode_s']:.1f} s decoding, {r['load_s']:.1f} s load), "
                      f"peak RSS {r['peak_rss'] / 2**20:,.0f} MiB", flush=True)


def report(results: dict[str, Any], a: argparse.Namespace) -> None:
    """Print the table and the notes that say how to read it."""
    if a.reuse_work:
        report_translation(results, a)
        return
    peer = "peer" in results
    o = results["ours"]["train"]
    print()
    print(f"ours vs {PEER_NAME if peer else '(ours only)'}: {a.train_seconds} s of training per run (best of "
          f"{a.repeats}), translation{' in int8 on both sides' if a.int8 else ''} of "
          f"{results['data']['test_sentences']} test sentences, batch "
          f"{a.translate_batch_size} (best of {a.translate_repeats}); {a.threads} threads, {results['cpu']}; "
          f"load average {results['loadavg']['start'][0]:.1f} at start, {results['loadavg']['end'][0]:.1f} at end")
    print()
    for line in table(results, peer):
        print(line)
    print()
    print("ours/peer: ↑ higher is better, ↓ lower is better. tok/s: real target tokens (</s> counted) per second "
          f"of training, checkpoints excluded; perplexity: {results['data']['score_pairs']:,} validation pairs, plain "
          f"NLL incl. </s>, {'both scored on the same ' if peer else ''}"
          f"{results['ours']['train'][0]['val_tokens']:,} tokens.")
    print(f"ours stopped by: {o[0]['time_limit']}; Sockeye by: "
          f"{results['peer']['train'][0]['time_limit'] if peer else '–'}")
    skipped = sum(r.get("windows_skipped_after_validation", 0) for r in o)
    if skipped:
        print(f"note: {skipped} of our progress lines followed a 'validating' line and were left out of the steady "
              "state: their window subtracts the whole validation although it began before the window, so they "
              "overstate the rate (model/progress.py Progress.log_line)")
    translation_notes(results, a)
    if peer:
        logged = _best(results["peer"]["train"], "logged_padded_source_tok_s")
        print(f"Sockeye's own tok/sec log figure (padded source positions, not comparable): median "
              f"{_fmt(logged, 'int')}; its padding share of target positions: "
              f"{_fmt(_best(results['peer']['train'], 'padding_share', True), 'pct')}")


def translation_notes(results: dict[str, Any], a: argparse.Namespace) -> None:
    """Each side's output length rule and decoding engine / compute type."""
    peer = "peer" in results
    if results["data"].get("units") == "words":
        print("tokens are words here (--word-vocab-size): the \"subwords\" rows count words, <unk> included")
    for side in ("ours", "peer") if peer else ("ours",):
        runs = results[side].get("beam5") or results[side].get("greedy") or []
        if runs:
            who = "ours" if side == "ours" else "Sockeye"
            print(f"output length limit, {who}: {runs[0].get('output_length_rule')}")
    for side in ("ours", "peer") if peer else ("ours",):
        runs = results[side].get("beam5") or results[side].get("greedy") or []
        if runs:
            who = "ours" if side == "ours" else "Sockeye"
            engine = runs[0].get("engine")
            if side == "ours" and engine == "torch":
                engine = "torch (our search), float32"
            print(f"decoding engine, {who}: {engine}")
    exported = results["ours"].get("int8_export")
    if exported:
        print(f"ours int8: `python -m model.ctranslate export --compute-type int8` of a copy of "
              f"{exported['source_model']} (float32 + 7-bit int8 weights, {exported['export_wall_s']:.1f} s, before "
              f"and outside the timed runs); CTranslate2 int8 holds every linear layer and the embeddings (the tied "
              f"output layer with them) in int8, Sockeye's int8 its nn.Linear layers only")


def report_translation(results: dict[str, Any], a: argparse.Namespace) -> None:
    """--reuse-work: the translation rows of the table, for the models of the kept work folder."""
    peer = "peer" in results
    print()
    print(f"ours vs {PEER_NAME if peer else '(ours only)'}, translation only with the models of {a.reuse_work}"
          f"{' (int8 on both sides)' if a.int8 else ''}: {results['data']['test_sentences']} test sentences, batch "
          f"{a.translate_batch_size} (best of {a.translate_repeats}); {a.threads} threads, {results['cpu']}; "
          f"load average {results['loadavg']['start'][0]:.1f} at start, {results['loadavg']['end'][0]:.1f} at end")
    print()
    for line in table(results, peer, training=False):
        print(line)
    print()
    print("ours/peer: ↑ higher is better, ↓ lower is better. Each side translates with its training run of lowest "
          "validation perplexity (the perplexity its scoring step wrote in the work folder).")
    translation_notes(results, a)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    try:
        our_overrides(a)  # a bad NAME=VALUE fails here, before the data is made
        peer = None if a.ours_only else ensure_peer(a)
    except StepFailed as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 1
    work, remove = work_folder(a)
    try:
        results = run(a, work, peer)
    except StepFailed as e:
        print(f"\nerror: {e}\n(everything is kept in {work})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted (work folder kept: {work})", file=sys.stderr)
        return 130
    report(results, a)
    return finish(results, a.json, work, remove)


def finish(results: dict[str, Any], json_path: Path | None, work: Path, remove: bool) -> int:
    """The results into --json, and the work folder removed (a temporary one) or named (a kept one)."""
    if json_path:
        json_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"results written to {json_path}")
    if remove:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"work folder: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
