"""The `evaluate` step: translate a held-out test set with a trained model and score it honestly
(docs/ARCHITECTURE.md §7).

What it writes into the output folder, atomically (a failure leaves no half-written folder):

- ``hypotheses.txt``: the detokenized translations, one per source line (a blank source line gets a
  blank hypothesis, never a dropped line, so the files stay aligned);
- ``reference.txt``: the reference as it was scored (UTF-8, invalid bytes replaced), so that
  ``sacrebleu reference.txt -i hypotheses.txt -m bleu chrf`` recomputes the published scores;
- ``hypotheses.tok.txt`` / ``reference.tok.txt``: both sides in the model's own tokens, for the
  tokenized BLEU that the built-in algorithm reports as ``validation:bleu``;
- ``metrics.json``: sacreBLEU (score, signature), chrF, tokenized BLEU, test-set perplexity, and what
  was evaluated (model and data checksums, decoding settings), with the commands that recompute them;
- ``training-metrics.json``: the model's own ``metrics.json`` (its training history), when it has one;
- ``report/``: learning curves and attention heatmaps as PNGs with an HTML page (pipeline_tasks/report.py).

Translation goes through model.translator.Translator, the same code path as serving and batch transform,
so the evaluated model is the model users get.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from model.archive import sha256_file
from model.constants import HYPERPARAMETERS_FILE, PARAMS_FILE
from model.constants import METRICS_FILE as MODEL_METRICS_FILE
from model.inference_config import InferenceConfig
from pipeline_tasks.atomic import check_output_dir, staged_dir
from pipeline_tasks.progress import Progress
from pipeline_tasks.textio import EmptyInputError, MisalignedError, TextStats, iter_lines

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
HYPOTHESES_FILE = "hypotheses.txt"
REFERENCE_FILE = "reference.txt"
HYPOTHESES_TOK_FILE = "hypotheses.tok.txt"
REFERENCE_TOK_FILE = "reference.tok.txt"
REPORT_DIR = "report"
# The evaluated model's own metrics.json (its training history), kept beside the scores: the evaluation
# folder then says how the model got there, and run tracking reads the learning curves from it.
TRAINING_METRICS_FILE = "training-metrics.json"
# Attention heatmaps of longer sentences are unreadable; examples are taken from shorter ones.
MAX_EXAMPLE_SOURCE_TOKENS = 40
MAX_REPORTED_LINES = 10


@dataclass(frozen=True)
class EvaluateConfig(InferenceConfig):
    """The decoding settings of :class:`~model.inference_config.InferenceConfig` (``batch_size`` is also the
    perplexity batch), plus what evaluation adds."""

    max_sentences: int | None = None   # evaluate the first N lines only (None: all)
    report: bool = True                # write report/ (PNGs + index.html)
    attention_examples: int = 3        # sentences whose attention the report shows
    chunk_sentences: int = 1000        # sentences per translate call: progress granularity, length sorting

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.chunk_sentences < 1:
            raise ValueError(f"chunk_sentences must be >= 1, got {self.chunk_sentences}")
        if self.max_sentences is not None and self.max_sentences < 1:
            raise ValueError(f"max_sentences must be >= 1, got {self.max_sentences}")
        if self.attention_examples < 0:
            raise ValueError(f"attention_examples must be >= 0, got {self.attention_examples}")


# --- reading and identity ------------------------------------------------------------------------------

def read_text(path: str | os.PathLike[str]) -> tuple[list[str], TextStats]:
    """Every line of a text file (UTF-8, invalid bytes replaced and counted; blank lines kept)."""
    stats = TextStats(os.fspath(path))
    lines = list(iter_lines(path, stats))
    stats.warn_if_replaced()
    return lines, stats


def _file_identity(stats: TextStats) -> dict[str, Any]:
    return {"path": stats.path, "sha256": sha256_file(stats.path), "lines": stats.lines,
            "replaced_chars": stats.replaced_chars, "bom_stripped": stats.bom_stripped}


def model_identity(model_dir: Path, model_uri: str | None) -> dict[str, Any]:
    """What a reader needs to know which model was scored: the weights' checksum and its training outcome."""

    ident: dict[str, Any] = {"uri": model_uri or str(model_dir), "params_sha256": sha256_file(model_dir / PARAMS_FILE),
                             "hyperparameters": json.loads((model_dir / HYPERPARAMETERS_FILE).read_text("utf-8"))}
    summary = training_summary(model_dir)
    for key in ("best_checkpoint", "num_updates", "optimized_metric", "best_metric", "stop_reason"):
        if key in summary:
            ident[key] = summary[key]
    ident["has_training_metrics"] = (model_dir / MODEL_METRICS_FILE).is_file()
    return ident


def training_summary(model_dir: Path) -> dict[str, Any]:
    """The model directory's metrics.json (history of checkpoints), or {} for a model without one."""

    path = model_dir / MODEL_METRICS_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        log.warning("%s is not valid JSON (%s): no learning curves", path, e)
        return {}
    return data if isinstance(data, dict) else {}


# --- translating -----------------------------------------------------------------------------------------

@dataclass
class Translated:
    """The step's view of the test set after decoding, in input order."""

    hypotheses: list[str]        # detokenized (or tokens, for text_format=tokens)
    hypotheses_tok: list[str]    # model tokens
    sources: list[Any]           # model.translator.Source as the model saw it (truncated); None: nothing to translate
    empty_lines: list[int]       # 1-based line numbers of sources with nothing to translate
    truncated_sources: int
    examples: list[dict[str, Any]]
    seconds: float


def _one_line(text: str) -> str:
    """A hypothesis must stay one line in hypotheses.txt, or the files would no longer recompute the score."""
    return text.replace("\r", " ").replace("\n", " ")


def _chunks(n: int, size: int) -> Iterator[range]:
    for start in range(0, n, size):
        yield range(start, min(start + size, n))


def translate_lines(translator: Any, sources: Sequence[str], cfg: EvaluateConfig) -> Translated:
    """Translate every line; blank (or untokenizable) sources get an empty hypothesis and are counted."""
    from model.translator import InputError

    hyps: list[str] = [""] * len(sources)
    hyps_tok: list[str] = [""] * len(sources)
    seen: list[Any] = [None] * len(sources)
    empty: list[int] = []
    examples: list[dict[str, Any]] = []
    truncated = 0
    progress = Progress(log, "evaluate: translated", "sentences", total=len(sources))
    for chunk in _chunks(len(sources), cfg.chunk_sentences):
        prepared, where, wants = [], [], []
        for i in chunk:
            try:
                src = translator.source_from_text(sources[i])
            except InputError as e:
                empty.append(i + 1)
                if len(empty) <= MAX_REPORTED_LINES:
                    log.warning("source line %d: %s: its hypothesis is an empty line", i + 1, e)
                continue
            truncated += src.truncated
            seen[i] = src
            want = len(examples) + sum(wants) < cfg.attention_examples and len(src.ids) <= MAX_EXAMPLE_SOURCE_TOKENS
            prepared.append(src)
            where.append(i)
            wants.append(want)
        outputs = translator.translate(prepared, attention=wants) if prepared else []
        for i, out, want in zip(where, outputs, wants):
            hyps[i] = _one_line(out.target)
            hyps_tok[i] = " ".join(out.target_tokens)
            if want and out.matrix is not None:
                examples.append({"line": i + 1, "source": sources[i], "hypothesis": hyps[i],
                                 "source_tokens": out.source_tokens, "target_tokens": out.target_tokens,
                                 "matrix": out.matrix})
        progress.update(len(chunk))
    seconds = progress.done()
    if empty:
        log.warning("%d source line(s) had nothing to translate (first: %s); their hypotheses are empty lines",
                    len(empty), ", ".join(map(str, empty[:MAX_REPORTED_LINES])))
    return Translated(hyps, hyps_tok, seen, empty, truncated, examples, seconds)


# --- scoring ---------------------------------------------------------------------------------------------

def sacrebleu_scores(hypotheses: list[str], references: list[str]) -> dict[str, dict[str, Any]]:
    """sacreBLEU BLEU, chrF, chrF++ (word bigrams too) and TER with their signatures: detokenized output
    against the raw reference."""
    from sacrebleu.metrics import BLEU, CHRF, TER

    out = {}
    for name, metric in (("bleu", BLEU()), ("chrf", CHRF()), ("chrfpp", CHRF(word_order=2)), ("ter", TER())):
        score = metric.corpus_score(hypotheses, [references])
        out[name] = {"score": float(score.score), "signature": str(metric.get_signature()), "string": str(score)}
    return out


def tokenize_references(translator: Any, references: Sequence[str]) -> list[str]:
    """The reference in the model's own tokens, as the training data was tokenized."""
    if translator.text_format == "tokens":
        return [" ".join(r.split()) for r in references]
    return [translator.tokenizer.encode(r, "target") if r.strip() else "" for r in references]


def perplexity_on(translator: Any, sources: Sequence[Any], references_tok: Sequence[str],
                  batch_size: int) -> dict[str, Any]:
    """exp(mean token NLL) of the reference given the source, ``</s>`` counted, ``<pad>`` not (docs/ARCHITECTURE.md §7).

    `sources` are model.translator.Source items as the translator prepared them (already truncated to
    max_seq_len_source; None for a blank line). Targets are prepared as training prepares them (same
    vocabulary, ``<unk>`` for unknown tokens, truncation to max_seq_len_target), pairs with a blank side
    are skipped as training skips them, and the pairs are scored by training's own evaluate_likelihood,
    so test and validation perplexity mean the same thing."""
    from model import data_io
    from model.checkpoint_decoder import evaluate_likelihood
    from model.vocab import UNK_ID

    loaded = translator.loaded
    max_trg = loaded.hp.max_seq_len_target
    src_ids: list[list[int]] = []
    trg_ids: list[list[int]] = []
    truncated = unk_src = unk_trg = 0
    for src, ref_tok in zip(sources, references_tok):
        tokens = ref_tok.split()
        if src is None or not tokens:
            continue
        ids = [loaded.target_vocab.get(t, UNK_ID) for t in tokens]
        unk_src += sum(i == UNK_ID for i in src.ids)
        unk_trg += sum(i == UNK_ID for i in ids[:max_trg])
        truncated += src.truncated or len(ids) > max_trg
        src_ids.append(src.ids)
        trg_ids.append(ids[:max_trg])
    result: dict[str, Any] = {"pairs": len(src_ids), "pairs_skipped": len(sources) - len(src_ids),
                              "truncated_pairs": truncated, "unk_tokens": {"source": unk_src, "target": unk_trg}}
    if not src_ids:
        log.warning("no pair with both sides non-blank: no test perplexity")
        return {**result, "perplexity": None, "accuracy": None, "nll_sum": 0.0, "tokens": 0}
    data = data_io.from_lists(src_ids, trg_ids)
    lik = evaluate_likelihood(loaded.model, data, batch_size, translator.device, loaded.hp.precision)
    return {**result, "perplexity": lik["perplexity"], "accuracy": lik["accuracy"], "nll_sum": lik["nll"],
            "tokens": lik["tokens"], "mean_nll": lik["nll"] / lik["tokens"]}


# --- writing ---------------------------------------------------------------------------------------------

def _write_lines(path: Path, lines: Sequence[str]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for line in lines:
            f.write(line + "\n")


def _recompute_commands(folder: Path | None) -> dict[str, str]:
    """The commands that recompute the scores; `folder` None: relative names, to run in the published
    folder (an s3:// location, which sacrebleu cannot read)."""
    q = shlex.quote

    def f(name: str) -> str:
        return q(str(folder / name)) if folder is not None else q(name)

    return {
        "recompute": f"sacrebleu {f(REFERENCE_FILE)} -i {f(HYPOTHESES_FILE)} -m bleu chrf ter -w 4",
        "recompute_chrfpp": f"sacrebleu {f(REFERENCE_FILE)} -i {f(HYPOTHESES_FILE)} -m chrf --chrf-word-order 2 -w 4",
        "recompute_tokenized": f"sacrebleu {f(REFERENCE_TOK_FILE)} -i {f(HYPOTHESES_TOK_FILE)} "
                               f"-m bleu -tok none --force -w 4",
    }


def _published_folder(out: Path, output_uri: str | None) -> Path | None:
    if output_uri is None:
        return out
    from pipeline_tasks import storage

    loc = storage.parse(output_uri)
    return loc if isinstance(loc, Path) else None


def _fmt(value: float | None) -> str:
    """Figures for people: 2 decimals (metrics.json keeps full precision)."""
    return "n/a" if value is None else f"{value:.2f}"


# --- several test sets ------------------------------------------------------------------------------------

PRIMARY = "test"                   # the metric prefix of the first (or only) test set, as the gate has always read it
MEAN = "mean"                      # the prefix of the scores averaged over the test sets
TEST_SETS_DIR = "test_sets"        # where the other test sets' evaluation folders go
_AVERAGED = ("bleu", "chrf", "chrfpp", "ter", "tokenized_bleu")
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


@dataclass(frozen=True)
class EvalSet:
    """A named test set: raw source and raw reference, line by line."""

    name: str
    source: str
    reference: str

    def __post_init__(self) -> None:
        check_set_name(self.name)


def check_set_name(name: str) -> None:
    """Test set names become metric names (``newstest2017:bleu``) and folder names."""
    if not isinstance(name, str) or not name or not set(name) <= _NAME_CHARS:
        raise ValueError(f"test set name {name!r}: use letters, digits, '.', '_' and '-'")
    if name == MEAN:
        raise ValueError(f"test set name {name!r} is reserved for the scores averaged over the test sets")


def set_metrics(name: str, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """A set's ``test:*`` metrics under its own name (``newstest2017:bleu``)."""
    return {f"{name}:{key.split(':', 1)[1]}": value for key, value in metrics.items()}


def mean_metrics(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Scores over every test set: the mean of each set's BLEU, chrF, chrF++, TER and tokenized BLEU (as WMT
    averages systems over test sets); perplexity and accuracy pooled over all their target tokens."""
    out: dict[str, Any] = {}
    for m in _AVERAGED:
        values = [r["metrics"].get(f"{PRIMARY}:{m}") for r in results]
        if values and all(isinstance(v, int | float) for v in values):
            out[f"{MEAN}:{m}"] = sum(values) / len(values)
    ppl = [r.get("perplexity") or {} for r in results]
    tokens = sum(p.get("tokens") or 0 for p in ppl)
    if tokens and all(p.get("tokens") for p in ppl):
        import math

        out[f"{MEAN}:perplexity"] = math.exp(sum(p["nll_sum"] for p in ppl) / tokens)
        out[f"{MEAN}:accuracy"] = sum((p.get("accuracy") or 0.0) * p["tokens"] for p in ppl) / tokens
    return out


def describe_test_sets(metrics: Mapping[str, Any], sets: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per test set (evaluate_step's list) and one for the mean, for logs and the demo (none with a
    single set)."""
    if len(sets) < 2:
        return []

    def row(name: str) -> str:
        parts = [f"{label} {metrics[f'{name}:{key}']:.2f}" for label, key in
                 (("BLEU", "bleu"), ("chrF", "chrf"), ("chrF++", "chrfpp"), ("TER", "ter"),
                  ("perplexity", "perplexity")) if isinstance(metrics.get(f"{name}:{key}"), int | float)]
        return f"{name:>17}: " + ", ".join(parts)

    return [row(s["name"]) for s in sets] + [row(MEAN)]


def set_summary(result: Mapping[str, Any], folder: str) -> dict[str, Any]:
    """What the summary keeps of one set's evaluation (its full metrics.json is in `folder`)."""
    return {"folder": folder, "metrics": dict(result["metrics"]), "bleu_signature": result["bleu"]["signature"],
            "sentences": result["sentences"]["total"], "source": result["data"]["source"]["path"],
            "reference": result["data"]["reference"]["path"]}


def evaluate_sets(model_dir: str | os.PathLike[str], sets: Sequence[EvalSet], output: str | os.PathLike[str],
                  cfg: EvaluateConfig | None = None, model_uri: str | None = None, device: str | None = None,
                  output_uri: str | None = None, parent: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate on each test set: the first into `output` (its metrics are ``test:*``, as with one set), the
    others into ``output/test_sets/<name>/``, each folder complete on its own (hypotheses, references,
    metrics.json, report). `output`'s metrics.json also holds every set's scores under its name
    (``newstest2017:bleu``), their means (``mean:bleu``, ``mean:perplexity`` pooled) and a table of the
    sets (``test_sets``), which the report shows. `output` is a working folder the caller publishes."""
    if not sets:
        raise ValueError("no test set to evaluate on")
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        raise ValueError(f"test set names must be unique, got {names}")
    if PRIMARY in names[1:]:
        raise ValueError(f"a test set named {PRIMARY!r} must come first: its metrics are the {PRIMARY}:* ones")
    out = Path(output)
    others: dict[str, dict[str, Any]] = {}
    scratch = out.parent / f".{out.name}-{TEST_SETS_DIR}"
    shutil.rmtree(scratch, ignore_errors=True)
    for s in sets[1:]:
        folder = f"{TEST_SETS_DIR}/{s.name}"
        sub_uri = f"{output_uri.rstrip('/')}/{folder}" if output_uri else None
        others[s.name] = evaluate(model_dir, s.source, s.reference, scratch / s.name, cfg, model_uri=model_uri,
                                  device=device, output_uri=sub_uri, name=s.name,
                                  parent=(parent or {}).get("test_set_results", {}).get(s.name))
    first = sets[0]
    result = evaluate(model_dir, first.source, first.reference, out, cfg, model_uri=model_uri, device=device,
                      output_uri=output_uri, parent=parent, name=first.name, others=others)
    if others:
        (out / TEST_SETS_DIR).mkdir()
        for name in others:
            os.replace(scratch / name, out / TEST_SETS_DIR / name)
        shutil.rmtree(scratch, ignore_errors=True)
    result["test_set_results"] = others  # in memory only: what a child's parent comparison needs
    return result


def evaluate(model_dir: str | os.PathLike[str], source: str | os.PathLike[str], reference: str | os.PathLike[str],
             output: str | os.PathLike[str], cfg: EvaluateConfig | None = None,
             model_uri: str | None = None, device: str | None = None,
             output_uri: str | None = None, parent: Mapping[str, Any] | None = None, name: str = PRIMARY,
             others: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Translate `source`, score against `reference`, write the evaluation folder `output`; returns metrics.json.

    `model_uri` is what the user named (an S3 URI or model.tar.gz that was unpacked into `model_dir`),
    recorded as the model's identity. `device`: a torch device name (default: cuda when available).
    `output_uri`: where `output` is published afterwards (the pipeline writes a temporary folder and
    uploads it), so that the log and the recompute commands name the place people will look. `parent`: the
    metrics.json of a warm start's parent evaluated on the same files, shown beside this model's. `name`:
    the test set's name; `others`: the results of the other test sets this model was evaluated on
    (:func:`evaluate_sets`), whose scores this metrics.json and report then show beside this set's."""
    import torch

    from model import metrics as model_metrics
    from model.translator import Translator

    cfg = cfg or EvaluateConfig()
    started = time.monotonic()
    model_path, out = Path(model_dir), Path(output)
    check_output_dir(out, [source, reference, model_path])   # before hours of decoding, not after
    sources, src_stats = read_text(source)
    references, ref_stats = read_text(reference)
    if src_stats.lines != ref_stats.lines:
        raise MisalignedError(src_stats.path, src_stats.lines, ref_stats.path, ref_stats.lines)
    if not sources:
        raise EmptyInputError(f"{src_stats.path} has no lines: nothing to evaluate")
    if cfg.max_sentences is not None:
        sources, references = sources[:cfg.max_sentences], references[:cfg.max_sentences]
    blank_refs = sum(not r.strip() for r in references)
    if blank_refs:
        log.warning("%s: %d blank reference line(s)", ref_stats.path, blank_refs)

    translator = Translator.load(model_path, cfg.decoding(), device)
    log.info("evaluating %s on %d sentences of %s", model_uri or model_path, len(sources), src_stats.path)
    translated = translate_lines(translator, sources, cfg)
    references_tok = tokenize_references(translator, references)
    scores = sacrebleu_scores(translated.hypotheses, references)
    tok_bleu = model_metrics.corpus_bleu(translated.hypotheses_tok, references_tok)
    ppl = perplexity_on(translator, translated.sources, references_tok, cfg.batch_size)
    training = training_summary(model_path)

    result: dict[str, Any] = {
        "metrics": {"test:bleu": scores["bleu"]["score"], "test:chrf": scores["chrf"]["score"],
                    "test:chrfpp": scores["chrfpp"]["score"], "test:ter": scores["ter"]["score"],
                    "test:tokenized_bleu": tok_bleu, "test:perplexity": ppl["perplexity"],
                    "test:accuracy": ppl["accuracy"]},
        **{name: {**scores[name], "hypotheses": HYPOTHESES_FILE, "reference": REFERENCE_FILE}
           for name in ("bleu", "chrf", "chrfpp", "ter")},
        "tokenized_bleu": {"score": tok_bleu, "tokenize": "none", "hypotheses": HYPOTHESES_TOK_FILE,
                           "reference": REFERENCE_TOK_FILE,
                           "note": "BLEU on the model's own tokens (the built-in algorithm's validation:bleu view)"},
        "perplexity": {"test:perplexity": ppl.pop("perplexity"), **ppl},
        "sentences": {"total": len(sources), "translated": len(sources) - len(translated.empty_lines),
                      "empty_source": len(translated.empty_lines),
                      "empty_source_lines": translated.empty_lines[:MAX_REPORTED_LINES],
                      "blank_references": blank_refs, "truncated_sources": translated.truncated_sources},
        "model": model_identity(model_path, model_uri),
        "data": {"source": _file_identity(src_stats), "reference": _file_identity(ref_stats),
                 "max_sentences": cfg.max_sentences},
        "decoding": {"beam_size": translator.beam_size, "batch_size": cfg.batch_size,
                     "max_output_length": translator.output_length_rule, "text_format": translator.text_format,
                     "device": str(translator.device), "torch": torch.__version__},
        **_recompute_commands(_published_folder(out, output_uri)),
    }
    result["test_set"] = name
    if others:
        every = {name: result, **others}
        result["test_sets"] = {n: set_summary(r, "." if n == name else f"{TEST_SETS_DIR}/{n}")
                               for n, r in every.items()}
        for n, r in every.items():
            result["metrics"].update(set_metrics(n, r["metrics"]))
        result["metrics"].update(mean_metrics(list(every.values())))
    if parent is not None:
        result["parent"] = {"model": parent["model"], "metrics": parent["metrics"],
                            "bleu_signature": parent["bleu"]["signature"], "metrics_file": f"parent/{METRICS_FILE}"}
    with staged_dir(out, [source, reference, model_path]) as stage:
        _write_lines(stage / HYPOTHESES_FILE, translated.hypotheses)
        _write_lines(stage / REFERENCE_FILE, references)
        _write_lines(stage / HYPOTHESES_TOK_FILE, translated.hypotheses_tok)
        _write_lines(stage / REFERENCE_TOK_FILE, references_tok)
        if (model_path / MODEL_METRICS_FILE).is_file():
            shutil.copyfile(model_path / MODEL_METRICS_FILE, stage / TRAINING_METRICS_FILE)
        if cfg.report:
            from pipeline_tasks.report import write_report

            examples = [{**ex, "reference": references[ex["line"] - 1]} for ex in translated.examples]
            write_report(stage, result, training.get("history") or [], examples,
                         best_checkpoint=training.get("best_checkpoint"))
            result["report"] = f"{REPORT_DIR}/index.html"
        seconds = time.monotonic() - started
        result["timing"] = {"wall_seconds": round(seconds, 3), "translate_seconds": round(translated.seconds, 3),
                            "sentences_per_second": round(len(sources) / max(translated.seconds, 1e-9), 2)}
        result["config"] = asdict(cfg)
        with open(stage / METRICS_FILE, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2, ensure_ascii=False, allow_nan=False)
            f.write("\n")
    log.info("evaluate: BLEU %s, chrF %s, tokenized BLEU %s, test perplexity %s on %d sentences (sacreBLEU %s) -> %s",
             _fmt(scores["bleu"]["score"]), _fmt(scores["chrf"]["score"]), _fmt(tok_bleu),
             _fmt(result["metrics"]["test:perplexity"]), len(sources), scores["bleu"]["signature"],
             output_uri or out)
    return result


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """metrics.json without the bulky parts, for printing on the command line."""
    out = {k: v for k, v in result.items() if k != "config"}
    if isinstance(out.get("model"), dict):
        out["model"] = {k: v for k, v in out["model"].items() if k != "hyperparameters"}
    return out
