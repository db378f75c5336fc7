"""How text becomes model tokens and back: the tokenizer a corpus was prepared with.

The `tokenize` step (pipeline_tasks/tokenization.py) writes `tokenizer.json` (plus SentencePiece
`.model` files) beside the tokenized text; the recordio step puts them into the vocab channel and
training copies them into the model directory. Serving, batch transform and evaluation then load
this one class from the model, so new input is tokenized exactly as the training data was. It lives
in model/ because the container ships model/ alone.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path

from model.atomic import staged_file
from model.constants import TOKENIZER_FILE

MODES = ("whitespace", "moses")
DETOKENIZERS = ("moses", "none")


@dataclass
class TokenizerConfig:
    """How text becomes tokens. Saved as tokenizer.json so the inverse uses the same settings."""

    mode: str = "whitespace"
    source_lang: str = "en"
    target_lang: str = "de"
    moses_escape: bool = False          # escape & < > ' " as Moses does (corpus.tc style)
    detokenizer: str = "moses"          # how model output becomes text again (sacreBLEU wants raw text)
    bpe_vocab_size: int | None = None   # None: no subwords
    bpe_joint: bool = False             # one subword model for both languages
    bpe_character_coverage: float = 1.0
    bpe_max_sentences: int = 2_000_000  # sentences sampled for training the subword model

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"tokenizer mode must be one of {MODES}, got {self.mode!r}")
        if self.detokenizer not in DETOKENIZERS:
            raise ValueError(f"detokenizer must be one of {DETOKENIZERS}, got {self.detokenizer!r}")
        if self.bpe_vocab_size is not None and self.bpe_vocab_size < 8:
            raise ValueError(f"bpe_vocab_size must be >= 8, got {self.bpe_vocab_size}")
        if self.source_lang == self.target_lang and not self.bpe_joint and self.bpe_vocab_size:
            raise ValueError("source and target languages are the same: use bpe_joint")

    def bpe_model_file(self, lang: str) -> str | None:
        if not self.bpe_vocab_size:
            return None
        return "spm.joint.model" if self.bpe_joint else f"spm.{lang}.model"


@lru_cache(maxsize=8)
def _moses_tokenizer(lang: str):
    from sacremoses import MosesTokenizer
    return MosesTokenizer(lang=lang)


@lru_cache(maxsize=8)
def _moses_detokenizer(lang: str):
    from sacremoses import MosesDetokenizer
    return MosesDetokenizer(lang=lang)


@lru_cache(maxsize=8)
def sentencepiece_processor(path: str):
    """A ``sentencepiece.SentencePieceProcessor`` of the model at `path`, loaded once per process: tokenizing
    applies it line by line. The library is imported only when a subword model is used."""
    import sentencepiece as spm
    return spm.SentencePieceProcessor(model_file=path)


def pretokenize(line: str, mode: str, lang: str, escape: bool) -> str:
    """Word-level tokenization of one line (before any subword split)."""
    if mode == "moses":
        return _moses_tokenizer(lang).tokenize(line, return_str=True, escape=escape)
    return " ".join(line.split())


class Tokenizer:
    """The tokenizer a corpus was prepared with, for new input and for turning output back into text."""

    def __init__(self, cfg: TokenizerConfig, directory: str | os.PathLike[str] | None = None) -> None:
        self.cfg = cfg
        self.dir = Path(directory) if directory is not None else None
        if cfg.bpe_vocab_size and self.dir is None:
            raise ValueError("a tokenizer with a subword model needs the folder holding the model")

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Tokenizer:
        path = Path(directory) / TOKENIZER_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: tokenizer config not found") from None
        known = {f.name for f in fields(TokenizerConfig)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown field(s) {', '.join(unknown)}")
        return cls(TokenizerConfig(**data), directory)

    def _lang(self, side: str) -> str:
        if side not in ("source", "target"):
            raise ValueError(f"side must be 'source' or 'target', got {side!r}")
        return self.cfg.source_lang if side == "source" else self.cfg.target_lang

    def encode(self, line: str, side: str = "source") -> str:
        """Raw line -> space-separated tokens, as the training data was tokenized."""
        lang = self._lang(side)
        text = pretokenize(line, self.cfg.mode, lang, self.cfg.moses_escape)
        model = self.cfg.bpe_model_file(lang)
        if model:
            text = " ".join(sentencepiece_processor(str(self.dir / model)).encode(text, out_type=str))
        return text

    def decode(self, tokens: str, side: str = "target") -> str:
        """Space-separated tokens (model output) -> text for people and for sacreBLEU."""
        lang = self._lang(side)
        model = self.cfg.bpe_model_file(lang)
        if model:
            tokens = sentencepiece_processor(str(self.dir / model)).decode(tokens.split())
        if self.cfg.detokenizer == "moses":
            return _moses_detokenizer(lang).detokenize(tokens.split())
        return " ".join(tokens.split())


def tokenizer_files(directory: str | os.PathLike[str]) -> list[Path]:
    """The files that make up the tokenizer saved in `directory` (empty when there is none)."""
    root = Path(directory)
    if not (root / TOKENIZER_FILE).is_file():
        return []
    return [root / TOKENIZER_FILE, *sorted(root.glob("spm.*.model"))]


def copy_tokenizer(source_dir: str | os.PathLike[str], target_dir: str | os.PathLike[str]) -> list[str]:
    """Copy a saved tokenizer (if `source_dir` has one) into `target_dir`; returns the names copied."""
    names = []
    for path in tokenizer_files(source_dir):
        with open(path, "rb") as src, staged_file(Path(target_dir) / path.name) as dst:
            shutil.copyfileobj(src, dst)
        names.append(path.name)
    return names
