"""Training throughput: our Trainer (bucketing) against a plain eager PyTorch loop, in target tokens/s.

    .venv/bin/python -m benchmarks.bench_training [--updates 30] [--repeats 3] [--threads N] [--quick]

Two configurations from the AWS English–German example, scaled down for a CPU: ``rnn`` (LSTM
encoder/decoder, mlp attention, 1+1 layers, --rnn-hidden / --rnn-embed) and ``transformer`` (our
extension, --tf-layers each side, --tf-size), both with max_seq_len 60 and 64 sentences a batch, on the
bundled WMT sample converted to channels by ``pipeline_tasks.channels.make_channels`` (vocabularies
capped at --vocab words a side) and read back with ``model.data_io.load_channel``.

- ours: ``model.training.Trainer`` as the product configures it (bucketing_enabled, bucket_width 10,
  batch_type sentence). What is timed is exactly ``fit()``'s inner loop: ``data_io.collate`` of each
  ``data_io.make_batches`` batch, then ``trainer.train_step``. ``fit()`` itself is not called
  because it ends with a checkpoint (validation, writing the model), which is not training; timing the
  loop directly needs no subtraction of a separately measured evaluation.
- baseline: the same ``build_model`` under the same seed (the initial weights are checked to be
  identical), batches made by shuffling all pairs and cutting them into batch_size chunks, each padded
  to its longest sentence with ``pad_sequence``, ``F.cross_entropy(..., ignore_index=0)``, Adam,
  gradient clipping by value (what clip_gradient means), one update per batch. It shares no code with
  the Trainer.

Both sides run --warmup untimed updates, then --updates timed ones (padding included in the time,
model building and data loading not). Target tokens are counted the same way for both from the
data's lengths: the real target tokens of each batch, ``</s>`` included, padding not. Best of
--repeats alternating runs, so a busy moment on a shared machine hurts neither side.

With CUDA available it also times the Trainer alone at bf16 (precision auto) at the example's sizes
and reports model-FLOPs utilisation, 6 x parameters x target tokens/s over --peak-tflops; the
parameters counted exclude the embedding tables (lookups, not matmuls) but include the output layer.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from benchmarks.common import SAMPLE
from model import data_io
from model.constants import TRAIN_CHANNEL, VOCAB_CHANNEL
from model.hyperparameters import Hyperparameters, validate
from model.model import build_model
from model.optim import build_optimizer, build_schedule
from model.training import Trainer
from model.vocab import BOS_ID, EOS_ID, PAD_ID
from pipeline_tasks.channels import VocabConfig, make_channels

MAX_SEQ_LEN = 60


@dataclass
class Corpus:
    data: data_io.ParallelData
    source_vocab_size: int
    target_vocab_size: int


@dataclass
class Run:
    seconds: float
    tokens: int
    updates: int
    checksum: float  # sum of the initial weights: both sides must start from the same model

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


def load_corpus(workdir: Path, vocab_words: int) -> Corpus:
    out = workdir / "channels"
    make_channels(str(SAMPLE / "train.en"), str(SAMPLE / "train.de"), str(SAMPLE / "val.en"),
                  str(SAMPLE / "val.de"), out, vocab_cfg=VocabConfig(num_words_source=vocab_words,
                                                                     num_words_target=vocab_words))
    src_vocab, trg_vocab = data_io.load_vocabularies(out / VOCAB_CHANNEL)
    data = data_io.load_channel(out / TRAIN_CHANNEL, TRAIN_CHANNEL, len(src_vocab), len(trg_vocab),
                                MAX_SEQ_LEN, MAX_SEQ_LEN)
    return Corpus(data, len(src_vocab), len(trg_vocab))


def rnn_hp(hidden: int, embed: int, batch_size: int) -> Hyperparameters:
    hp = replace(Hyperparameters(), encoder_type="rnn", decoder_type="rnn", rnn_cell_type="lstm",
                 rnn_attention_type="mlp", num_layers_encoder=1, num_layers_decoder=1, rnn_num_hidden=hidden,
                 num_embed_source=embed, num_embed_target=embed, max_seq_len_source=MAX_SEQ_LEN,
                 max_seq_len_target=MAX_SEQ_LEN, batch_size=batch_size)
    validate(hp)
    return hp


def transformer_hp(size: int, layers: int, batch_size: int) -> Hyperparameters:
    hp = replace(Hyperparameters(), encoder_type="transformer", decoder_type="transformer",
                 num_layers_encoder=layers, num_layers_decoder=layers, transformer_model_size=size,
                 transformer_feed_forward_num_hidden=4 * size, max_seq_len_source=MAX_SEQ_LEN,
                 max_seq_len_target=MAX_SEQ_LEN, batch_size=batch_size)
    validate(hp)
    return hp


def batch_plan(make: Callable[[int], list[np.ndarray]], n: int) -> list[np.ndarray]:
    """The first n batches of consecutive epochs (a small corpus may need more than one)."""
    plan: list[np.ndarray] = []
    epoch = 0
    while len(plan) < n:
        plan.extend(make(epoch))
        epoch += 1
    return plan[:n]


def plain_batches(data: data_io.ParallelData, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """What a naive loop does: shuffle every pair, cut into batch_size chunks."""
    perm = np.random.default_rng([seed, epoch]).permutation(len(data))
    return [perm[i:i + batch_size] for i in range(0, len(perm), batch_size)]


def real_target_tokens(data: data_io.ParallelData, batches: list[np.ndarray]) -> int:
    """Non-pad target tokens, ``</s>`` included: the one count used for both sides."""
    lengths = data.trg_lengths + 1
    return sum(int(lengths[b].sum()) for b in batches)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _fresh_model(hp: Hyperparameters, corpus: Corpus, device: torch.device) -> tuple[nn.Module, float]:
    torch.manual_seed(hp.seed)
    model = build_model(hp, corpus.source_vocab_size, corpus.target_vocab_size).to(device)
    model.train()
    with torch.no_grad():
        checksum = float(sum(p.double().sum() for p in model.parameters()))
    return model, checksum


def run_ours(hp: Hyperparameters, corpus: Corpus, updates: int, warmup: int, device: torch.device,
             workdir: Path) -> Run:
    model, checksum = _fresh_model(hp, corpus, device)
    optimizer = build_optimizer(model.parameters(), hp)
    data = corpus.data
    trainer = Trainer(hp, model, optimizer, build_schedule(optimizer, hp), data, data, [], workdir, workdir, device)
    plan = batch_plan(lambda epoch: data_io.make_batches(data, trainer.config, epoch), warmup + updates)
    for indices in plan[:warmup]:
        trainer.train_step(data_io.collate(data, indices).to(device))
    timed = plan[warmup:]
    _sync(device)
    t0 = time.perf_counter()
    for indices in timed:
        trainer.train_step(data_io.collate(data, indices).to(device))
    _sync(device)
    seconds = time.perf_counter() - t0
    assert trainer.state.num_updates == warmup + updates
    return Run(seconds, real_target_tokens(data, timed), updates, checksum)


def _plain_collate(data: data_io.ParallelData, indices: np.ndarray,
                   device: torch.device) -> tuple[torch.Tensor, ...]:
    eos, bos = torch.tensor([EOS_ID]), torch.tensor([BOS_ID])
    src, trg_in, trg_out = [], [], []
    for i in indices.tolist():
        s = torch.from_numpy(data.source(i).astype(np.int64))
        t = torch.from_numpy(data.target(i).astype(np.int64))
        src.append(torch.cat([s, eos]))
        trg_in.append(torch.cat([bos, t]))
        trg_out.append(torch.cat([t, eos]))
    lengths = torch.tensor([len(s) for s in src])
    return tuple(x.to(device) for x in (pad_sequence(src, batch_first=True, padding_value=PAD_ID), lengths,
                                        pad_sequence(trg_in, batch_first=True, padding_value=PAD_ID),
                                        pad_sequence(trg_out, batch_first=True, padding_value=PAD_ID)))


def run_plain(hp: Hyperparameters, corpus: Corpus, updates: int, warmup: int, device: torch.device) -> Run:
    model, checksum = _fresh_model(hp, corpus, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=hp.learning_rate)
    data = corpus.data
    plan = batch_plan(lambda epoch: plain_batches(data, hp.batch_size, hp.seed, epoch), warmup + updates)

    def step(indices: np.ndarray) -> None:
        src, lengths, trg_in, trg_out = _plain_collate(data, indices, device)
        logits = model(src, lengths, trg_in)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), trg_out.reshape(-1), ignore_index=PAD_ID)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_value_(model.parameters(), hp.clip_gradient)
        optimizer.step()

    for indices in plan[:warmup]:
        step(indices)
    timed = plan[warmup:]
    _sync(device)
    t0 = time.perf_counter()
    for indices in timed:
        step(indices)
    _sync(device)
    return Run(time.perf_counter() - t0, real_target_tokens(data, timed), updates, checksum)


def matmul_parameters(model: nn.Module) -> int:
    """Parameters that cost FLOPs per token: all but the embedding tables (a tied output layer counts)."""
    params = {id(p): p for p in model.parameters()}
    out_weight = model.decoder.output_layer.weight
    for m in model.modules():
        if isinstance(m, nn.Embedding) and m.weight is not out_weight:
            params.pop(id(m.weight), None)
    return sum(p.numel() for p in params.values())


def compare_cpu(name: str, hp: Hyperparameters, corpus: Corpus, a: argparse.Namespace, workdir: Path) -> float:
    device = torch.device("cpu")
    best_plain = best_ours = None
    for _ in range(a.repeats):
        plain = run_plain(hp, corpus, a.updates, a.warmup, device)
        ours = run_ours(hp, corpus, a.updates, a.warmup, device, workdir)
        assert plain.checksum == ours.checksum, "the two sides did not start from the same model"
        if best_plain is None or plain.tokens_per_s > best_plain.tokens_per_s:
            best_plain = plain
        if best_ours is None or ours.tokens_per_s > best_ours.tokens_per_s:
            best_ours = ours
    assert best_plain is not None and best_ours is not None
    data = corpus.data
    pad_plain = data_io.padding_fraction(data, plain_batches(data, hp.batch_size, hp.seed, 0))
    pad_ours = data_io.padding_fraction(data, data_io.make_batches(data, data_io.DataConfig.from_hyperparameters(hp),
                                                                   0))
    ratio = best_ours.tokens_per_s / best_plain.tokens_per_s
    for label, run, pad in (("plain loop", best_plain, pad_plain), ("ours (Trainer)", best_ours, pad_ours)):
        print(f"| {name:<11} | {label:<14} | {run.tokens_per_s:>10,.0f} | {run.updates / run.seconds:>9.2f} | "
              f"{run.tokens:>9,} | {pad:>8.1%} |")
    return ratio


def gpu_run(name: str, hp: Hyperparameters, corpus: Corpus, a: argparse.Namespace, workdir: Path,
            device: torch.device) -> None:
    best: Run | None = None
    for _ in range(a.repeats):
        run = run_ours(hp, corpus, a.gpu_updates, a.gpu_warmup, device, workdir)
        if best is None or run.tokens_per_s > best.tokens_per_s:
            best = run
    assert best is not None
    torch.manual_seed(hp.seed)
    params = matmul_parameters(build_model(hp, corpus.source_vocab_size, corpus.target_vocab_size))
    mfu = 6 * params * best.tokens_per_s / (a.peak_tflops * 1e12)
    print(f"| {name:<11} | {params / 1e6:>8.1f} M | {best.tokens_per_s:>10,.0f} | "
          f"{best.updates / best.seconds:>9.2f} | {mfu:>6.1%} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--updates", type=int, default=30, help="timed updates per run")
    ap.add_argument("--warmup", type=int, default=3, help="untimed updates before each run")
    ap.add_argument("--repeats", type=int, default=3, help="alternating runs of each side; the best counts")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch CPU threads")
    ap.add_argument("--vocab", type=int, default=8000, help="vocabulary cap, words per side")
    ap.add_argument("--batch-size", type=int, default=64, help="sentences per batch (CPU runs)")
    ap.add_argument("--rnn-hidden", type=int, default=256, help="rnn_num_hidden (the AWS example: 512)")
    ap.add_argument("--rnn-embed", type=int, default=128, help="num_embed_source/target (the AWS example: 512)")
    ap.add_argument("--tf-size", type=int, default=128, help="transformer_model_size")
    ap.add_argument("--tf-layers", type=int, default=2, help="transformer layers on each side")
    ap.add_argument("--configs", nargs="+", choices=("rnn", "transformer"), default=["rnn", "transformer"])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, 1 repeat: a smoke test of ~20 s")
    ap.add_argument("--no-gpu", action="store_true", help="skip the GPU measurement even with CUDA")
    ap.add_argument("--gpu-updates", type=int, default=200)
    ap.add_argument("--gpu-warmup", type=int, default=20)
    ap.add_argument("--peak-tflops", type=float, default=989.0,
                    help="the device's peak dense bf16 TFLOP/s for MFU (989: H100 SXM)")
    ap.add_argument("--workdir", type=Path)
    a = ap.parse_args()
    if a.quick:
        a.updates, a.warmup, a.repeats, a.vocab = 10, 2, 1, 2000
        a.rnn_hidden, a.rnn_embed, a.tf_size, a.tf_layers = 64, 32, 64, 1
        a.gpu_updates, a.gpu_warmup = 20, 5
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(a.threads)
    work = a.workdir or Path(tempfile.mkdtemp(prefix="bench-training-"))
    corpus = load_corpus(work, a.vocab)
    (work / "model").mkdir(exist_ok=True)

    configs = {
        "rnn": rnn_hp(a.rnn_hidden, a.rnn_embed, a.batch_size),
        "transformer": transformer_hp(a.tf_size, a.tf_layers, a.batch_size),
    }
    print(f"training throughput on CPU, {torch.get_num_threads()} threads: {len(corpus.data):,} WMT sample pairs, "
          f"vocab {corpus.source_vocab_size:,}/{corpus.target_vocab_size:,}, max_seq_len {MAX_SEQ_LEN}, batch "
          f"{a.batch_size} sentences, {a.updates} timed updates after {a.warmup} warm-up (best of {a.repeats})")
    print(f"  rnn: lstm 1+1 layers, mlp attention, rnn_num_hidden {a.rnn_hidden}, num_embed {a.rnn_embed}; "
          f"transformer: {a.tf_layers}+{a.tf_layers} layers, model size {a.tf_size}, ff {4 * a.tf_size}")
    print()
    print("(tokens: real target tokens of the timed updates; padding: share of padded target positions over a whole "
          "epoch of that batching)")
    print()
    print("| config      | loop           | target tok/s | updates/s | tokens    | padding  |")
    print("| ----------- | -------------- | -----------: | --------: | --------: | -------: |")
    ratios = {name: compare_cpu(name, configs[name], corpus, a, work / "model") for name in a.configs}
    print()
    for name, ratio in ratios.items():
        print(f"{name}: {ratio:.1f}x target tokens/s vs plain loop")

    if torch.cuda.is_available() and not a.no_gpu:
        gpu_configs = {
            "rnn": rnn_hp(512, 512, 64),
            "transformer": transformer_hp(512, 6, 128),
        }
        if a.quick:
            gpu_configs = {"rnn": rnn_hp(128, 128, 64), "transformer": transformer_hp(128, 2, 128)}
        print()
        print(f"GPU ({torch.cuda.get_device_name()}), Trainer at bf16 (precision auto), {a.gpu_updates} timed updates "
              f"after {a.gpu_warmup} warm-up (best of {a.repeats}); MFU = 6 x params x target tokens/s / "
              f"{a.peak_tflops:g} TFLOP/s peak bf16 (--peak-tflops)")
        print("  rnn: rnn_num_hidden/num_embed as the AWS example, batch 64; transformer: 6+6 layers, 512, batch 128"
              if not a.quick else "  (quick sizes)")
        print()
        print("| config      | params*    | target tok/s | updates/s | MFU    |")
        print("| ----------- | ---------: | -----------: | --------: | -----: |")
        for name in a.configs:
            gpu_run(name, gpu_configs[name], corpus, a, work / "model", torch.device("cuda"))
        print("  * excluding embedding tables")


if __name__ == "__main__":
    main()
