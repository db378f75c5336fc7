"""Translating new input with a trained model: the one code path behind serving (``container/serve``),
batch transform and evaluation, so the three can never disagree about what a model says.

:class:`Translator` turns prepared sources into translations. It sorts a request's sentences by
length and decodes them in batches (beam search, or greedy for beam size 1), so that a short
sentence does not pay for a long one's padding; results come back in input order. The content types
of the serving contract are built on it in :mod:`model.serving_codecs`.

Text is either ``raw`` (tokenized and subword-split with the tokenizer shipped in the model, and the
output detokenized) or ``tokens`` (space-separated model tokens, as the built-in algorithm takes them).
An item that cannot be translated raises :class:`InputError`, saying why; the caller says where.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from model import engines
from model.beam_search import (
    DEFAULT_NUM_STDS,
    Translation,
    beam_search,
    greedy_search,
    length_factor,
    output_length_limits,
)
from model.checkpoint import LoadedModel, load_model
from model.constants import TOKENIZER_FILE
from model.inference_config import InferenceConfig
from model.precision import autocast_context
from model.tokenizer import Tokenizer
from model.vocab import EOS_ID, PAD_ID, UNK_ID

log = logging.getLogger(__name__)

class InputError(ValueError):
    """One input item cannot be translated; the message says why (the caller adds where)."""


@dataclass
class Source:
    """A source sentence ready for the model."""

    ids: list[int]
    tokens: list[str]
    truncated: bool = False


@dataclass
class Output:
    target: str                        # what the user sees: detokenized text, or tokens
    target_tokens: list[str]           # model tokens, without </s>
    target_ids: list[int]
    source_tokens: list[str]           # model tokens the model saw (after truncation)
    matrix: list[list[float]] | None   # attention: one row per target token, one column per source token


def default_device() -> torch.device:
    """``$SEQ2SEQ_DEVICE`` (set per server worker), else the GPU when there is one."""
    name = os.environ.get("SEQ2SEQ_DEVICE")
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Translator:
    """A loaded model with its vocabularies and tokenizer, translating batches of sources."""

    def __init__(self, loaded: LoadedModel, tokenizer: Tokenizer | None, config: InferenceConfig,
                 device: torch.device) -> None:
        text_format = config.text_format or ("raw" if tokenizer is not None else "tokens")
        if text_format == "raw" and tokenizer is None:
            raise ValueError(f"text_format=raw needs the model's tokenizer, and {loaded.model_dir} has no "
                             f"{TOKENIZER_FILE}: make the vocab channel with `recordio --tokenizer` or "
                             f"use text_format=tokens")
        self.loaded = loaded
        self.tokenizer = tokenizer
        self.config = config
        self.device = device
        self.text_format = text_format
        hp = loaded.hp
        self.beam_size = config.beam_size or hp.beam_size
        # The longest output: what the config says for every sentence, else Sockeye's rule per sentence from
        # the training data's length ratio, never past the longest target the model was trained on.
        self.max_output_length = config.max_output_length or hp.max_seq_len_target + 1
        num_stds = config.max_output_length_num_stds
        self.length_factor = length_factor(loaded.length_ratio, DEFAULT_NUM_STDS if num_stds is None else num_stds)
        self.max_source_tokens = hp.max_seq_len_source
        self._source_vocab = loaded.source_vocab
        self._source_size = len(loaded.source_vocab)
        self._target_tokens = loaded.target_tokens
        self._lock = threading.Lock()
        self.engine = engines.prepare(loaded, config, device)  # None: our own search on loaded.model

    @classmethod
    def load(cls, model_dir: str | os.PathLike[str], config: InferenceConfig | None = None,
             device: torch.device | str | None = None) -> Translator:
        device = torch.device(device) if device is not None else default_device()
        loaded = load_model(model_dir, device)
        tokenizer = Tokenizer.load(model_dir) if (Path(model_dir) / TOKENIZER_FILE).is_file() else None
        translator = cls(loaded, tokenizer, config or InferenceConfig(), device)
        log.info("model %s loaded on %s: %s encoder / %s decoder, vocabularies %d/%d, text %s, beam %d, "
                 "output length %s, engine %s", model_dir, device, loaded.hp.encoder_type, loaded.hp.decoder_type,
                 len(loaded.source_vocab), len(loaded.target_vocab), translator.text_format, translator.beam_size,
                 translator.output_length_rule, engines.describe(translator.engine, translator.config))
        return translator

    # --- preparing sources ---------------------------------------------------------------------------

    def source_from_text(self, text: object) -> Source:
        """A text item (raw or tokens, per the config) as model ids; raises InputError."""
        if not isinstance(text, str):
            raise InputError(f"expected a string, got {type(text).__name__}")
        if not text.isascii():
            _check_unicode(text)
        if not text.strip():
            raise InputError("empty source")
        tokens_text = self.tokenizer.encode(text, "source") if self.text_format == "raw" else text
        tokens = tokens_text.split()
        if not tokens:
            raise InputError("source has no tokens after tokenization")
        unknown = [t for t in tokens if t not in self._source_vocab]
        if unknown and self.config.unknown_tokens == "reject":
            shown = ", ".join(short_repr(t) for t in unknown[:5]) + (", …" if len(unknown) > 5 else "")
            raise InputError(f"{len(unknown)} token(s) not in the source vocabulary: {shown}")
        ids = [self._source_vocab.get(t, UNK_ID) for t in tokens]
        return self._truncate(ids, tokens)

    def source_from_ids(self, ids: Sequence[int]) -> Source:
        """Source ids as they come in a Record; raises InputError for ids the model does not have."""
        if len(ids) == 0:
            raise InputError("empty source")
        bad = [i for i in ids if not (i == UNK_ID or 4 <= i < self._source_size)]
        if bad:
            raise InputError(f"source id(s) {', '.join(map(str, bad[:5]))} not allowed: ids must be 1 (<unk>) "
                             f"or 4..{self._source_size - 1} (this model's source vocabulary)")
        tokens = self.loaded.source_tokens
        return self._truncate(list(ids), [tokens[i] for i in ids])

    def _truncate(self, ids: list[int], tokens: list[str]) -> Source:
        if len(ids) > self.max_source_tokens:
            n = self.max_source_tokens
            return Source(ids[:n], tokens[:n], truncated=True)
        return Source(ids, tokens)

    # --- decoding ------------------------------------------------------------------------------------

    def translate(self, sources: Sequence[Source], attention: bool | Sequence[bool] = False,
                  on_batch: Callable[[int], None] | None = None) -> list[Output]:
        """Translations of `sources`, in their order, decoded in length-sorted batches. `on_batch` is told
        how many sources each finished batch held, so a caller can report progress inside a long call."""
        wants = [attention] * len(sources) if isinstance(attention, bool) else list(attention)
        order = sorted(range(len(sources)), key=lambda i: len(sources[i].ids), reverse=True)
        results: list[Output | None] = [None] * len(sources)
        bs = self.config.batch_size
        with self._lock:
            for start in range(0, len(order), bs):
                chunk = order[start:start + bs]
                batch = [sources[i] for i in chunk]
                translations = self._decode(batch, any(wants[i] for i in chunk))
                for i, src, tr in zip(chunk, batch, translations):
                    results[i] = self._output(src, tr, wants[i])
                if on_batch is not None:
                    on_batch(len(chunk))
        return results  # type: ignore[return-value]

    def _decode(self, batch: list[Source], attention: bool) -> list[Translation]:
        lengths = [len(s.ids) + 1 for s in batch]
        limits: int | torch.Tensor = self.max_output_length
        if self.config.max_output_length is None:
            limits = output_length_limits(torch.tensor(lengths), self.length_factor, self.max_output_length)
        if self.engine is not None:
            hp = self.loaded.hp
            per_sentence = limits.tolist() if isinstance(limits, torch.Tensor) else limits
            done = engines.try_decode(self.engine, [s.ids for s in batch], self.beam_size, per_sentence,
                                      hp.length_penalty_alpha, hp.length_penalty_beta, attention)
            if done is not None:
                return done
        src = torch.full((len(batch), max(lengths)), PAD_ID, dtype=torch.long)
        for row, s in enumerate(batch):
            src[row, :len(s.ids)] = torch.tensor(s.ids, dtype=torch.long)
            src[row, len(s.ids)] = EOS_ID
        src = src.to(self.device)
        lens = torch.tensor(lengths, dtype=torch.long, device=self.device)
        model = self.loaded.model
        with autocast_context(self.device, self.loaded.hp.precision):
            if self.beam_size == 1:
                return greedy_search(model, src, lens, limits, return_attention=attention)
            return beam_search(model, src, lens, self.beam_size, limits,
                               self.loaded.hp.length_penalty_alpha, self.loaded.hp.length_penalty_beta,
                               return_attention=attention)

    @property
    def output_length_rule(self) -> str:
        """The length limit in words, for reports and logs."""
        if self.config.max_output_length is not None:
            return f"{self.max_output_length} tokens"
        return f"ceil({self.length_factor:.3g} x source tokens), at most {self.max_output_length} (</s> counted)"

    def _output(self, src: Source, tr: Translation, attention: bool) -> Output:
        tokens = [self._target_tokens[t] for t in tr.tokens]
        text = " ".join(tokens)
        if self.text_format == "raw":
            text = self.tokenizer.decode(text, "target")  # type: ignore[union-attr]
        matrix = None
        if attention and tr.attention is not None:
            matrix = [row[:len(src.ids)] for row in tr.attention[:len(tokens)]]
        return Output(text, tokens, list(tr.tokens), src.tokens, matrix)

    def translate_texts(self, texts: Sequence[str]) -> list[str]:
        """Plain strings in, plain strings out; the first bad item raises InputError naming its index."""
        sources = []
        for i, text in enumerate(texts):
            try:
                sources.append(self.source_from_text(text))
            except InputError as e:
                raise InputError(f"item {i + 1}: {e}") from None
        return [o.target for o in self.translate(sources)]


# --- input checks ---------------------------------------------------------------------------------------

def _check_unicode(text: str) -> None:
    """Refuse a lone surrogate: JSON's ``"\\ud800"`` escape decodes to one, but it is not a character, so
    it cannot be tokenized (SentencePiece raises) nor written back as UTF-8. The client's mistake: a 4xx
    naming its item, not a 500."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(f"not valid Unicode: a lone surrogate U+{ord(text[e.start]):04X} at character {e.start} "
                         f"(a \\u{ord(text[e.start]):04x} escape without its pair)") from None


def short_repr(value: str, limit: int = 40) -> str:
    """A client's string quoted in a message: escaped (so a surrogate or control character cannot break the
    answer) and cut, so that a huge item does not come back in full."""
    return repr(value if len(value) <= limit else value[:limit] + "…")
