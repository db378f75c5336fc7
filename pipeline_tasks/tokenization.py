"""The `tokenize` step and its inverse.

Modes: `whitespace` (input already tokenized, e.g. WMT's corpus.tc: whitespace is only normalised)
and `moses` (sacremoses, for raw text). Optionally a SentencePiece BPE model, trained on the
training split only and applied to every split, splits tokens into subwords.

The step writes `tokenizer.json` (plus the `.model` files) beside the tokenized text: everything
needed to tokenize new input and to detokenize model output the same way later (evaluation,
batch transform, serving). `model.tokenizer.Tokenizer.load(dir)` is that inverse; it lives in
model/ because the serving container ships model/ alone.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from model.constants import TOKENIZER_FILE
from model.tokenizer import DETOKENIZERS, MODES, Tokenizer, TokenizerConfig, pretokenize, sentencepiece_processor
from pipeline_tasks.atomic import staged_dir
from pipeline_tasks.parallel import WorkerPool, default_workers
from pipeline_tasks.progress import Progress
from pipeline_tasks.textio import BLOCK_LINES, TextStats, decode_lines, iter_raw_blocks, open_binary

log = logging.getLogger(__name__)

__all__ = ["DETOKENIZERS", "MODES", "Tokenizer", "TokenizerConfig", "tokenize_corpus"]

_PARALLEL_MIN_BYTES = 2 << 20


def _pretokenize_block(item: tuple[int, list[bytes], str, str, str, bool]) -> tuple[list[str], TextStats]:
    first_line, raw, path, mode, lang, escape = item
    stats = TextStats(path)
    lines = decode_lines(raw, first_line, stats)
    return [pretokenize(line, mode, lang, escape) for line in lines], stats


def _pretokenize_file(src: str, dst: Path, lang: str, cfg: TokenizerConfig, workers: int) -> TextStats:
    stats = TextStats(src)
    use = workers if cfg.mode == "moses" and os.path.getsize(src) >= _PARALLEL_MIN_BYTES else 1
    progress = Progress(log, f"tokenize {Path(src).name}", "lines")
    with open_binary(src, stats) as f, open(dst, "w", encoding="utf-8") as out, WorkerPool(use) as pool:
        def blocks():
            line_no = 1
            for block in iter_raw_blocks(f, BLOCK_LINES if use > 1 else 4096):
                yield line_no, block, src, cfg.mode, lang, cfg.moses_escape
                line_no += len(block)
        for lines, block_stats in pool.map(_pretokenize_block, blocks()):
            out.writelines(line + "\n" for line in lines)
            stats.merge(block_stats)
            progress.update(len(lines))
    progress.done()
    stats.warn_if_replaced()
    return stats


def _train_bpe(inputs: list[Path], model_prefix: Path, cfg: TokenizerConfig, workers: int) -> None:
    import sentencepiece as spm

    log.info("training SentencePiece BPE (vocab %d) on %s", cfg.bpe_vocab_size, ", ".join(p.name for p in inputs))
    spm.SentencePieceTrainer.train(
        input=[str(p) for p in inputs], model_prefix=str(model_prefix), model_type="bpe",
        vocab_size=cfg.bpe_vocab_size, hard_vocab_limit=False,
        character_coverage=cfg.bpe_character_coverage, input_sentence_size=cfg.bpe_max_sentences,
        shuffle_input_sentence=True, num_threads=workers, unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1,
        minloglevel=2)


def _apply_bpe(src: Path, dst: Path, model: Path, threads: int = 1) -> None:
    """Subword-split a pretokenized file, 4 MiB of lines at a time, on `threads` of SentencePiece's own
    (C++, outside the GIL: about 1.8x on 2 cores)."""
    sp = sentencepiece_processor(str(model))
    progress = Progress(log, f"subwords {src.name}", "lines")
    with open(src, encoding="utf-8") as f, open(dst, "w", encoding="utf-8") as out:
        while lines := f.readlines(1 << 22):
            pieces = sp.encode([line.rstrip("\n") for line in lines], out_type=str, num_threads=threads)
            out.writelines(" ".join(p) + "\n" for p in pieces)
            progress.update(len(lines))
    progress.done()


def tokenize_corpus(splits: dict[str, tuple[str, str]], output: str | os.PathLike[str],
                    cfg: TokenizerConfig, workers: int | None = None,
                    saved: str | os.PathLike[str] | None = None) -> dict:
    """Tokenize every split (name -> (source file, target file)) into `output`/{split}.{lang}.

    The subword model is learned from the "train" split only, unless `saved` names a folder holding a
    tokenizer saved before (its ``tokenizer.json`` and subword models, e.g. a parent model's): then that
    tokenizer is applied as it is and `cfg` is not used, so that the text splits into the pieces an
    earlier model knows. Returns a report; writes `tokenizer.json` and the subword model(s) beside the
    text. All or nothing, and `output` is replaced whole: a subword model of an earlier run must not sit
    beside text it did not make.
    """
    if saved is not None:
        cfg = Tokenizer.load(saved).cfg
        for lang in (cfg.source_lang, cfg.target_lang):
            model = cfg.bpe_model_file(lang)
            if model and not (Path(saved) / model).is_file():
                raise FileNotFoundError(f"{Path(saved) / model}: the saved tokenizer's subword model is missing")
    elif cfg.bpe_vocab_size and "train" not in splits:
        raise ValueError("a subword model needs a 'train' split to learn from")
    workers = workers or default_workers()
    for name, (s, t) in splits.items():
        for p in (s, t):
            if not os.path.isfile(p):
                raise FileNotFoundError(f"{name}: input file not found: {p}")
    report: dict = {"config": asdict(cfg), "reused_tokenizer": os.fspath(saved) if saved is not None else None,
                    "splits": {}}
    protected = [p for pair in splits.values() for p in pair] + ([saved] if saved is not None else [])
    with staged_dir(output, protected) as stage:
        pre = stage / ".pretok" if cfg.bpe_vocab_size else stage
        pre.mkdir(exist_ok=True)
        for name, (s, t) in splits.items():
            for path, lang in ((s, cfg.source_lang), (t, cfg.target_lang)):
                stats = _pretokenize_file(path, pre / f"{name}.{lang}", lang, cfg, workers)
                report["splits"].setdefault(name, {})[lang] = stats.as_dict()
        if cfg.bpe_vocab_size:
            langs = [cfg.source_lang, cfg.target_lang]
            groups = {"spm.joint": langs} if cfg.bpe_joint else {f"spm.{lang}": [lang] for lang in langs}
            for prefix, group in groups.items():
                if saved is not None:
                    shutil.copyfile(Path(saved) / f"{prefix}.model", stage / f"{prefix}.model")
                else:
                    started = time.monotonic()
                    _train_bpe([pre / f"train.{lang}" for lang in group], stage / prefix, cfg, workers)
                    report.setdefault("bpe_training_seconds", {})[prefix] = round(time.monotonic() - started, 1)
            for name in splits:
                for lang in langs:
                    _apply_bpe(pre / f"{name}.{lang}", stage / f"{name}.{lang}", stage / cfg.bpe_model_file(lang),
                               workers)
            shutil.rmtree(pre)
        (stage / TOKENIZER_FILE).write_text(json.dumps(asdict(cfg), indent=2) + "\n", encoding="utf-8")
    log.info("tokenize: %s written to %s", ", ".join(splits), output)
    return report


