"""The DAG's steps as plain functions on URIs: what each Airflow task calls (dags/ holds only wiring).

Every step reads its inputs from the run's URIs (pipeline_tasks/runs.py), works in a temporary folder,
and publishes its output folder whole (``put_tree`` writes a ``_COMPLETE`` marker last). A step whose
output is already complete returns at once, so a retried or re-run task is idempotent and a task
killed half-way leaves nothing a later task could take for whole. Nothing here imports Airflow; the
return values are small JSON-able dicts (URIs and metrics) for XCom.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline_tasks import storage
from pipeline_tasks.jobs.names import job_name, job_name_prefix, name_for_try
from pipeline_tasks.runs import RunLayout, get_tree, is_complete, put_tree

log = logging.getLogger(__name__)

# Where each split's files are inside a downloaded corpus ({lang} is the language code; a pattern may
# match in a subfolder, e.g. dev.tgz's). Params can give their own for a URL or path source.
CORPUS_LAYOUTS: dict[str, dict[str, str]] = {
    "wmt17-de-en-preprocessed": {"train": "corpus.tc.{lang}", "val": "newstest2014.tc.{lang}",
                                 "test": "newstest2016.tc.{lang}"},
    "wmt-toy-ende-sample": {"train": "train.{lang}", "val": "val.{lang}", "test": "test.{lang}"},
    "europarl-v7-de-en": {"train": "europarl-v7.de-en.{lang}"},
    "news-commentary-v12-de-en": {"train": "news-commentary-v12.de-en.{lang}"},
    "commoncrawl-de-en": {"train": "commoncrawl.de-en.{lang}"},
    "rapid2016-de-en": {"train": "rapid2016.de-en.{lang}"},
}
DEFAULT_LAYOUT = {"train": "train.{lang}", "val": "val.{lang}", "test": "test.{lang}"}
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class CorpusSource:
    """One corpus of the run: where it comes from, where its splits are, how much of the training mix it makes."""

    source: str                                           # catalog name, URL or path
    layout: Mapping[str, str] = field(default_factory=dict)  # split -> pattern; empty: the catalog's
    weight: float = 1.0                                   # upsampling factor in a mix
    share: float | None = None                            # or a share of the mix
    name: str = ""

    def files(self) -> dict[str, str]:
        return {**CORPUS_LAYOUTS.get(self.source, DEFAULT_LAYOUT), **self.layout}


def _source_name(source: str) -> str:
    base = source.rstrip("/").rsplit("/", 1)[-1]
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in base) or "corpus"


def corpus_sources(value: str | Sequence[Any], layout: Mapping[str, str] | None = None) -> list[CorpusSource]:
    """The ``corpus`` param: one source (a string, with `layout`), or a list of sources, each a string or
    ``{source, layout, weight | share, name}``. Names default to the catalog name or the file's name."""
    from pipeline_tasks.subset import MixSource, uses_shares

    if isinstance(value, str):
        return [CorpusSource(value, dict(layout or {}), name=_source_name(value))]
    if not isinstance(value, Sequence) or not value:
        raise ValueError(f"corpus must be a source or a non-empty list of sources, got {value!r}")
    out = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            item = {"source": item}
        if not isinstance(item, Mapping) or not isinstance(item.get("source"), str) or not item["source"]:
            raise ValueError(f"corpus[{i}]: a source (catalog name, URL or path) or {{source, layout, weight}}, "
                             f"got {item!r}")
        unknown = sorted(set(item) - {"source", "layout", "weight", "share", "name"})
        if unknown:
            raise ValueError(f"corpus[{i}]: unknown key(s) {', '.join(unknown)}; known: source, layout, weight, "
                             "share, name")
        weight, share = item.get("weight", 1.0), item.get("share")
        for what, value in (("weight", weight), ("share", share)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise ValueError(f"corpus[{i}]: {what} must be a number, got {value!r}")
        out.append(CorpusSource(item["source"], dict(item.get("layout") or {}), float(weight),
                                None if share is None else float(share),
                                item.get("name") or _source_name(item["source"])))
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise ValueError(f"corpus: two sources have the same name ({', '.join(names)}); give each a name")
    # the mix's own rules (weight > 0, share in (0, 1], shares for all or none), checked now, before any download
    uses_shares([MixSource(s.name, s.source, s.source, s.weight, s.share) for s in out])
    return out


@dataclass(frozen=True)
class CorpusConfig:
    source: str | Sequence[Any] = "wmt17-de-en-preprocessed"   # catalog name, URL or path; or a list (a mix)
    source_lang: str = "en"
    target_lang: str = "de"
    layout: Mapping[str, str] = field(default_factory=dict)  # split -> pattern; empty: the catalog's

    def sources(self) -> list[CorpusSource]:
        return corpus_sources(self.source, self.layout)

    @property
    def is_mix(self) -> bool:
        return not isinstance(self.source, str)

    def files(self) -> dict[str, str]:
        return self.sources()[0].files()


def _tmp(prefix: str) -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix=f"wmt-{prefix}-")


def find_split(folder: Path, pattern: str, lang: str) -> Path:
    """The one file matching the split's pattern anywhere under `folder`."""
    name = pattern.format(lang=lang)
    found = sorted(p for p in folder.rglob(Path(name).name) if p.is_file() and str(p).endswith(name))
    if len(found) != 1:
        have = ", ".join(sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())[:20])
        raise FileNotFoundError(f"corpus: expected one file matching {name!r}, found {len(found)} (files: {have})")
    return found[0]


def _done(uri: str, what: str) -> bool:
    if is_complete(uri):
        log.info("%s: %s is already complete (an earlier try published it): nothing to do", what, uri)
        return True
    return False


def _cache_dir(layout: RunLayout) -> str:
    """Downloads are cached under the artifact root when it is local (<root>/cache/downloads), else in the
    system temp folder."""
    local_root = storage.parse(layout.root)
    return (str(Path(local_root) / "cache" / "downloads") if isinstance(local_root, Path)
            else os.path.join(tempfile.gettempdir(), "wmt-seq2seq-cache"))


def download_step(layout: RunLayout, corpus: CorpusConfig, cache_dir: str | None = None,
                  limits: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The corpus under raw/ (a mix: each source under raw/<name>/). `limits` may raise DownloadConfig's
    decompression limits (``max_expansion_ratio``, ``max_decompressed_bytes``) for a corpus that really
    inflates that much."""
    from pipeline_tasks.download import DownloadConfig, download

    out = layout.uri("raw")
    if not _done(out, "download"):
        cfg = DownloadConfig(cache_dir=cache_dir or _cache_dir(layout), **dict(limits or {}))
        with _tmp("raw") as tmp:
            if corpus.is_mix:
                (Path(tmp) / "raw").mkdir()
                for src in corpus.sources():
                    download(src.source, Path(tmp) / "raw" / src.name, cfg)
            else:
                download(corpus.source, Path(tmp) / "raw", cfg)  # type: ignore[arg-type]
            put_tree(Path(tmp) / "raw", out)
    return {"raw": out}


def fetch_test_sets_step(layout: RunLayout, corpus: CorpusConfig, test_sets: Any, cache_dir: str | None = None
                   ) -> dict[str, Any]:
    """The run's test sets (the ``test_sets`` param, pipeline_tasks/test_sets.py) fetched as raw source and
    reference under test_sets/<name>/; the corpus's own test split stays with the corpus (subset/)."""
    from pipeline_tasks.test_sets import parse_test_sets

    specs = parse_test_sets(test_sets, corpus.source_lang, corpus.target_lang)
    fetched = [s for s in specs if not s.corpus_split]
    out = layout.uri("test_sets")
    if fetched and not _done(out, "test_sets"):
        from pipeline_tasks.test_sets import fetch_test_set

        with _tmp("test-sets") as tmp:
            for spec in fetched:
                fetch_test_set(spec, Path(tmp) / "sets" / spec.name, cache_dir or _cache_dir(layout),
                               corpus.source_lang, corpus.target_lang)
            put_tree(Path(tmp) / "sets", out)
    return {"test_sets": [s.name for s in specs], "fetched": out if fetched else None}


def test_set_uris(layout: RunLayout, corpus: CorpusConfig, name: str) -> tuple[str, str]:
    """(source, reference) of a run's test set: the corpus split's in subset/, a named set's in test_sets/."""
    from pipeline_tasks.evaluate import PRIMARY
    from pipeline_tasks.test_sets import REFERENCE_FILE, SOURCE_FILE

    if name == PRIMARY:
        sub = layout.uri("subset")
        return storage.join(sub, f"test.{corpus.source_lang}"), storage.join(sub, f"test.{corpus.target_lang}")
    return layout.uri("test_sets", name, SOURCE_FILE), layout.uri("test_sets", name, REFERENCE_FILE)


def eval_sets(layout: RunLayout, corpus: CorpusConfig, names: list[str], work: Path) -> list[Any]:
    """The test sets as local files, in the param's order (raw, as they came)."""
    from pipeline_tasks.evaluate import EvalSet

    sets = []
    for name in names:
        folder = work / "sets" / name
        folder.mkdir(parents=True)
        src_uri, ref_uri = test_set_uris(layout, corpus, name)
        src = storage.get_file(src_uri, folder / "source.txt")
        ref = storage.get_file(ref_uri, folder / "reference.txt")
        sets.append(EvalSet(name, str(src), str(ref)))
    return sets


def subset_step(layout: RunLayout, corpus: CorpusConfig, cfg: Any) -> dict[str, Any]:
    """The training subset (SubsetConfig), or with several corpora the training mix (subset.mix);
    validation and test pass through unchanged (with a mix: from the first source that has them)."""
    from pipeline_tasks.subset import MixSource, mix, subset

    out = layout.uri("subset")
    report: dict[str, Any] = {}
    if not _done(out, "subset"):
        with _tmp("subset") as tmp:
            raw = get_tree(layout.uri("raw"), Path(tmp) / "raw")
            dst = Path(tmp) / "subset"
            dst.mkdir()
            src_l, trg_l = corpus.source_lang, corpus.target_lang
            sources = corpus.sources()
            folders = [raw / s.name for s in sources] if corpus.is_mix else [raw]
            if corpus.is_mix:
                mixed = [MixSource(s.name, str(find_split(f, s.files()["train"], src_l)),
                                   str(find_split(f, s.files()["train"], trg_l)), s.weight, s.share)
                         for s, f in zip(sources, folders)]
                report = mix(mixed, dst / f"train.{src_l}", dst / f"train.{trg_l}", cfg)
            else:
                train = corpus.files()["train"]
                report = subset(str(find_split(raw, train, src_l)), str(find_split(raw, train, trg_l)),
                                dst / f"train.{src_l}", dst / f"train.{trg_l}", cfg)
            for split in ("val", "test"):
                found = _split_of(sources, folders, split, src_l, trg_l)
                if found is None:
                    if split == "val":
                        raise FileNotFoundError("corpus: no source has a validation split (layout 'val'); give one "
                                                "a layout with val, e.g. {\"val\": \"newstest2016.{lang}\"}")
                    log.info("subset: no source has a test split: the run is scored on its test_sets only")
                    continue
                report.setdefault("splits_from", {})[split] = found[0]
                for lang, path in zip((src_l, trg_l), found[1]):
                    (dst / f"{split}.{lang}").write_bytes(path.read_bytes())
            (dst / "subset-report.json").write_text(json.dumps(report, indent=2) + "\n")
            put_tree(dst, out)
    return {"subset": out, "report": report}


def _split_of(sources: list[CorpusSource], folders: list[Path], split: str, src_l: str, trg_l: str
              ) -> tuple[str, tuple[Path, Path]] | None:
    """(source name, (source file, target file)) of the first source whose layout has `split`."""
    for source, folder in zip(sources, folders):
        pattern = source.files().get(split)
        if pattern:
            return source.name, (find_split(folder, pattern, src_l), find_split(folder, pattern, trg_l))
    return None


def clean_step(layout: RunLayout, corpus: CorpusConfig, cfg: Any) -> dict[str, Any]:
    """The training pairs through the clean filters (pipeline_tasks/clean.py's CleanConfig). Validation and
    test pass through untouched; what the filters would have dropped of them is reported, not applied."""
    from pipeline_tasks.clean import clean

    out = layout.uri("clean")
    report: dict[str, Any] = {}
    if not _done(out, "clean"):
        with _tmp("clean") as tmp:
            sub = get_tree(layout.uri("subset"), Path(tmp) / "subset")
            dst = Path(tmp) / "clean"
            dst.mkdir()
            s, t = corpus.source_lang, corpus.target_lang
            report = {"train": clean(str(sub / f"train.{s}"), str(sub / f"train.{t}"), dst / f"train.{s}",
                                     dst / f"train.{t}", s, t, cfg)}
            for split in ("val", "test"):
                if (sub / f"{split}.{s}").is_file():  # a mix may have no test split (scored on its test_sets)
                    report[split] = clean(str(sub / f"{split}.{s}"), str(sub / f"{split}.{t}"), dst / f"{split}.{s}",
                                          dst / f"{split}.{t}", s, t, cfg, keep_all=True)
            (dst / "clean-report.json").write_text(json.dumps(report, indent=2) + "\n")
            put_tree(dst, out)
    return {"clean": out, "report": {split: {k: r[k] for k in ("pairs_in", "pairs_out", "dropped")}
                                     for split, r in report.items()}}


def parent_step(layout: RunLayout, corpus: CorpusConfig, parent: Mapping[str, Any] | None,
                hyperparameters: Mapping[str, Any], tokenizer: Any) -> dict[str, Any]:
    """The warm start's parent (resolved by plan, or None) fetched once and checked before any data is
    prepared; what the data steps reuse of it is published under parent/ (pipeline_tasks/parent_model.py).
    Raises ParentModelError when the run cannot start from it."""
    from pipeline_tasks.parent_model import PARENT_FILE, ParentModelError, check_parent, keep_parent_files
    from pipeline_tasks.transform import resolve_model

    if not parent:
        log.info("parent model: none, this run trains from scratch")
        return {"parent": None}
    out = layout.uri("parent")
    if not _done(out, "parent_model"):
        with _tmp("parent") as tmp:
            try:
                model_dir = resolve_model(parent["model"], Path(tmp) / "fetch")
            except (ValueError, FileNotFoundError) as e:
                raise ParentModelError(f"parent model {parent['model']}: {e}") from None
            cfg = check_parent(model_dir, hyperparameters, corpus.source_lang, corpus.target_lang, tokenizer)
            record = keep_parent_files(model_dir, Path(tmp) / "parent", parent, cfg)
            log.info("parent model %s: params.pt sha256 %s, tokenizer %s; the run reuses %s", parent["model"],
                     record["params_sha256"][:12], record["tokenizer"] or "none (word level)",
                     ", ".join(record["files"]))
            put_tree(Path(tmp) / "parent", out)
    return {"parent": {**_read_json(storage.join(out, PARENT_FILE)), "dir": out}}


def tokenize_step(layout: RunLayout, corpus: CorpusConfig, cfg: Any,
                  parent: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Tokenize every split; with a warm start's parent that has a tokenizer, with the parent's (so that
    the text splits into the pieces its vocabulary knows) instead of `cfg`."""
    from pipeline_tasks.parent_model import describe_tokenizer
    from pipeline_tasks.tokenization import tokenize_corpus

    out = layout.uri("tok")
    if not _done(out, "tokenize"):
        with _tmp("tok") as tmp:
            sub = get_tree(layout.uri("clean"), Path(tmp) / "clean")
            saved = None
            if parent and parent.get("tokenizer"):
                saved = get_tree(parent["dir"], Path(tmp) / "parent")
                mine = describe_tokenizer(cfg)
                log.info("tokenize: with the parent model's tokenizer (%s)%s", parent["tokenizer"],
                         f"; the run's tokenizer params ({mine}) are not used" if mine != parent["tokenizer"] else "")
            s, t = corpus.source_lang, corpus.target_lang
            splits = {split: (str(sub / f"{split}.{s}"), str(sub / f"{split}.{t}")) for split in SPLITS
                      if (sub / f"{split}.{s}").is_file()}
            tokenize_corpus(splits, Path(tmp) / "tok", cfg, saved=saved)
            put_tree(Path(tmp) / "tok", out)
    return {"tok": out}


def recordio_step(layout: RunLayout, corpus: CorpusConfig, cfg: Any,
                  parent: Mapping[str, Any] | None = None, shards: int = 1) -> dict[str, Any]:
    """Vocabularies and RecordIO channels (the training split as `shards` files); with a warm start's
    parent, its vocabularies (id 417 means what it meant to the parent; words it never saw become <unk>,
    counted in the report)."""
    from dataclasses import replace

    from model.constants import VOCAB_SOURCE_FILE, VOCAB_TARGET_FILE
    from pipeline_tasks.channels import REPORT_FILE, make_channels

    out = layout.uri("recordio")
    if not _done(out, "recordio"):
        with _tmp("recordio") as tmp:
            tok = get_tree(layout.uri("tok"), Path(tmp) / "tok")
            origin = None
            if parent:
                pdir = get_tree(parent["dir"], Path(tmp) / "parent")
                cfg = replace(cfg, source_json=str(pdir / VOCAB_SOURCE_FILE), target_json=str(pdir / VOCAB_TARGET_FILE))
                origin = parent["model"]
            s, t = corpus.source_lang, corpus.target_lang
            report = make_channels(str(tok / f"train.{s}"), str(tok / f"train.{t}"), str(tok / f"val.{s}"),
                                   str(tok / f"val.{t}"), Path(tmp) / "channels", cfg, tokenizer_dir=tok,
                                   vocab_origin=origin, shards=shards)
            if origin:
                log.info("recordio: the parent's vocabularies (%d source, %d target entries); tokens it never saw, "
                         "now <unk>: %d source and %d target in training, %d and %d in validation",
                         report["vocab"]["source_size"], report["vocab"]["target_size"],
                         report["train"]["source_unk_tokens"], report["train"]["target_unk_tokens"],
                         report["validation"]["source_unk_tokens"], report["validation"]["target_unk_tokens"])
            put_tree(Path(tmp) / "channels", out)
    report = _read_json(storage.join(out, REPORT_FILE))
    return {"recordio": out, "train_records": report["train"]["records"],
            "validation_records": report["validation"]["records"], "vocab": report["vocab"]}


def upload_step(layout: RunLayout, destination: str | None = None) -> dict[str, Any]:
    """The three channels at `destination` (default: the run's channels/), verified: what training reads."""
    from pipeline_tasks.upload import upload_channels

    dest = destination or layout.uri("channels")
    with _tmp("upload") as tmp:
        local = get_tree(layout.uri("recordio"), Path(tmp) / "channels")
        report = upload_channels(local, dest)
    return {"channels": {ch: storage.join(dest, ch) for ch in ("train", "validation", "vocab")},
            "destination": dest, "uploaded": report, "sha256": report["sha256"]}


def _read_json(uri: str) -> Any:
    with _tmp("json") as tmp:
        path = storage.get_file(uri, Path(tmp) / "f.json")
        return json.loads(path.read_text(encoding="utf-8"))


def evaluate_step(layout: RunLayout, corpus: CorpusConfig, model_uri: str, cfg: Any,
                  test_sets: list[str] | None = None, parent: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Score the model on each test set (`test_sets`: names from fetch_test_sets_step; default the corpus's test
    split, raw, before tokenization); publishes eval/ (the first set; the others under eval/test_sets/)
    with hypotheses, metrics.json and the report. With a warm start's `parent`, the parent is scored too,
    on the same sentences with the same settings (eval/parent/), and the report shows both side by side:
    the gate's view of what the retrain changed."""
    from dataclasses import replace

    from pipeline_tasks.evaluate import PRIMARY, evaluate_sets
    from pipeline_tasks.transform import resolve_model

    out = layout.uri("eval")
    if not _done(out, "evaluate"):
        with _tmp("eval") as tmp:
            work = Path(tmp)
            sets = eval_sets(layout, corpus, test_sets or [PRIMARY], work)
            parent_result = None
            if parent:
                log.info("evaluate: the parent model %s first, on the same test sentences", parent["model"])
                parent_dir = resolve_model(parent["model"], work / "parent-model")
                parent_result = evaluate_sets(parent_dir, sets, work / "parent-eval", replace(cfg, report=False),
                                              model_uri=parent["model"], output_uri=storage.join(out, "parent"))
            model_dir = resolve_model(model_uri, work / "model")
            evaluate_sets(model_dir, sets, work / "eval", cfg, model_uri=model_uri, output_uri=out,
                          parent=parent_result)
            if parent_result is not None:
                os.replace(work / "parent-eval", work / "eval" / "parent")
            put_tree(work / "eval", out)
    metrics = _read_json(storage.join(out, "metrics.json"))
    return {"eval": out, "report": storage.join(out, "report", "index.html"), "metrics": metrics["metrics"],
            "bleu_signature": metrics["bleu"]["signature"], "parent": metrics.get("parent"),
            # a list, in the param's order (the first set's scores are test:*): run.json sorts its keys
            "test_sets": [{"name": name, **{k: v for k, v in s.items() if k in ("folder", "sentences",
                                                                                  "bleu_signature")}}
                          for name, s in (metrics.get("test_sets") or {}).items()]}


def transform_input_step(layout: RunLayout, corpus: CorpusConfig, source: str | None = None,
                         test_set: str = "test") -> str:
    """The batch transform's input prefix: the given URI, or the first test set's sources as JSON Lines."""
    if source:
        return source
    prefix = layout.uri("transform", "input")
    target = storage.join(prefix, "test.jsonl")
    with _tmp("transform-input") as tmp:
        src = storage.get_file(test_set_uris(layout, corpus, test_set)[0], Path(tmp) / "src")
        jsonl = Path(tmp) / "test.jsonl"
        with open(src, encoding="utf-8", errors="replace") as fin, open(jsonl, "w", encoding="utf-8") as fout:
            for line in fin:
                fout.write(json.dumps({"source": line.rstrip("\n")}, ensure_ascii=False) + "\n")
        storage.put_file(jsonl, target)
    return prefix


def model_package_request(params: Mapping[str, Any], dag_id: str, run_id: str, model: Mapping[str, Any],
                          scores: Mapping[str, Any], reason: str) -> dict[str, Any]:
    """The SageMaker model package of a model the gate promotes: in the language pair's group (the MLflow
    registered model's name), PendingManualApproval while a person's approval is awaited, else Approved;
    served with the run's batch-transform decoding settings; one package per run and model, however often
    the task is retried (the client token)."""
    import uuid

    from pipeline_tasks.jobs.requests import APPROVED, PENDING_MANUAL_APPROVAL, model_package_config
    from pipeline_tasks.tracking import registered_model_name
    from pipeline_tasks.transform import TransformConfig

    metrics = scores.get("metrics") or {}
    return model_package_config(
        group=registered_model_name(params["source_lang"], params["target_lang"]), image_uri=params["image"],
        model_data_url=model["model"], status=PENDING_MANUAL_APPROVAL if params["require_approval"] else APPROVED,
        description=f"{dag_id} run {run_id}: {reason}", metrics_uri=storage.join(scores["eval"], "metrics.json"),
        transform_instance_type=params["transform_instance_type"],
        cfg=TransformConfig(beam_size=params["beam_size"], max_output_length=params["max_output_length"]),
        metadata={"dag_id": dag_id, "run_id": run_id, "training_job": model.get("job_name"),
                  "bleu_signature": scores.get("bleu_signature"),
                  **{k: v for k, v in metrics.items() if k in ("test:bleu", "test:chrf", "test:perplexity")}},
        client_token=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{dag_id}/{run_id}/{model['model']}")),
        tags={"dag_id": dag_id})


def parent_summary(parent: Mapping[str, Any] | None, scored: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """run.json's view of a warm start: the model the run started from, and its scores on this run's test
    set (beside the child's ``metrics``); None for a run trained from scratch."""
    if not parent:
        return None
    keys = ("model", "init_model", "params_sha256", "run_id", "training_job", "tokenizer")
    return {**{k: parent.get(k) for k in keys}, "metrics": (scored or {}).get("metrics"),
            "bleu_signature": (scored or {}).get("bleu_signature")}


def publish_step(layout: RunLayout, summary: Mapping[str, Any]) -> dict[str, Any]:
    """``<run>/run.json``: what this run produced and decided, for people and for downstream tools."""
    uri = storage.join(layout.base, "run.json")
    with _tmp("publish") as tmp:
        path = Path(tmp) / "run.json"
        path.write_text(json.dumps(dict(summary), indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
        storage.put_file(path, uri)
    log.info("run summary written to %s", uri)
    return {"summary": uri, **summary}


# --- the local executions of the SageMaker requests (backends local and docker) ----------------------------

def _request_for_try(request: Mapping[str, Any], run_id: str, try_number: int) -> tuple[dict[str, Any], str]:
    """A copy of the AWS request with this try's job name (unique per run and try) and without our key."""
    config = json.loads(json.dumps(request))
    return config, name_for_try(config, run_id, try_number)


def train_step(request: Mapping[str, Any], backend: str, run_id: str, try_number: int) -> dict[str, Any]:
    """Run a CreateTrainingJob request here (local process or docker); raises when the job failed, with
    its FailureReason. Returns ``{"Training": DescribeTrainingJob-like}``, as the SageMaker operator does."""
    from pipeline_tasks.jobs.local.training import run_training_job, stored_result

    config, name = _request_for_try(request, run_id, try_number)
    output = config["OutputDataConfig"]["S3OutputPath"]
    for earlier in range(try_number - 1, 0, -1):  # a try that trained but died before returning
        done = stored_result(output, job_name(job_name_prefix(request), run_id, earlier))
        if done and done.get("TrainingJobStatus") == "Completed":
            log.info("training job %s of try %d completed and stored its model: using it", done["TrainingJobName"],
                     earlier)
            return {"Training": done}
    result = run_training_job(config, backend=backend)
    if result["TrainingJobStatus"] == "Failed":
        raise RuntimeError(f"training job {name} failed: {result.get('FailureReason')}")
    return {"Training": result}


def tune_step(request: Mapping[str, Any], backend: str, run_id: str, try_number: int, store: str) -> dict[str, Any]:
    """Run a CreateHyperParameterTuningJob request here (each trial a local or docker training job);
    raises when no trial completed. Returns ``{"Tuning": DescribeHyperParameterTuningJob-like with
    TrainingJobSummaries, "Training": the best training job's DescribeTrainingJob-like}``."""
    from pipeline_tasks.jobs.local.training import stored_result
    from pipeline_tasks.jobs.local.tuning import run_tuning_job

    config, name = _request_for_try(request, run_id, try_number)
    result = run_tuning_job(config, backend, store=store)
    if result["HyperParameterTuningJobStatus"] != "Completed":
        raise RuntimeError(f"tuning job {name} failed: {result.get('FailureReason')}")
    best = result["BestTrainingJob"]["TrainingJobName"]
    job = stored_result(config["TrainingJobDefinition"]["OutputDataConfig"]["S3OutputPath"], best)
    if job is None:
        raise RuntimeError(f"tuning job {name}: its best training job {best} left no model")
    return {"Tuning": result, "Training": job}


def tuning_summary(tuning: Mapping[str, Any]) -> dict[str, Any]:
    """What run.json and the run history keep of a tuning job: the best trial and every trial's values."""
    objective = tuning["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]
    return {
        "name": tuning["HyperParameterTuningJobName"], "objective": objective,
        "strategy": tuning["HyperParameterTuningJobConfig"]["Strategy"],
        "best": (tuning.get("BestTrainingJob") or {}).get("TrainingJobName"),
        "counters": tuning.get("TrainingJobStatusCounters"),
        "trials": [{"name": s["TrainingJobName"], "status": s["TrainingJobStatus"],
                    "tuned": s.get("TunedHyperParameters"),
                    "objective": (s.get("FinalHyperParameterTuningJobObjectiveMetric") or {}).get("Value")}
                   for s in tuning.get("TrainingJobSummaries") or []],
    }


def transform_step(request: Mapping[str, Any], run_id: str, try_number: int,
                   backend: str = "local") -> dict[str, Any]:
    """Run a {"Model", "Transform"} request here against the serve entrypoint (a process, or the image
    with backend docker); raises when the job failed. Returns ``{"Transform": DescribeTransformJob-like}``,
    as the SageMaker operator does."""
    from pipeline_tasks.jobs.local.transform import run_transform_job

    config, name = _request_for_try(request, run_id, try_number)
    result = run_transform_job(config, backend=backend)
    if result["TransformJobStatus"] != "Completed":
        raise RuntimeError(f"transform job {name} failed: {result.get('FailureReason')}")
    return {"Transform": result}
