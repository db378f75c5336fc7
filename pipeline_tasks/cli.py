"""`python -m pipeline_tasks <step> …`: every step runnable without a scheduler.

Each subcommand prints its result as JSON on stdout (for `inspect`: one JSON object per record),
logs progress on stderr, and exits 1 with a one-line error naming the file/line/field on bad input.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

log = logging.getLogger("pipeline_tasks")


_SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 1 << 10, "m": 10**6, "mb": 10**6, "mib": 1 << 20,
               "g": 10**9, "gb": 10**9, "gib": 1 << 30, "t": 10**12, "tb": 10**12, "tib": 1 << 40}


MAX_OUTPUT_LENGTH_HELP = ("most output tokens of every sentence, </s> counted (default: per sentence, the training "
                          "data's target/source length ratio + 2 standard deviations times the source length, at "
                          "most max_seq_len_target + 1)")


def parse_size(text: str) -> int:
    """A byte count as people write it: 1000000, 500MB, 64GiB, 1.5T (0: no limit)."""
    import re

    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([A-Za-z]*)\s*", text)
    unit = m and _SIZE_UNITS.get(m[2].lower())
    if not m or unit is None:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (bytes, or a number with kB, MB, GB, KiB, MiB, GiB…)")
    return int(float(m[1]) * unit)


def _print_json(obj: object) -> None:
    json.dump(obj, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


def cmd_download(a: argparse.Namespace) -> None:
    from pipeline_tasks.download import CATALOG, DownloadConfig, RetryPolicy, download

    if a.list:
        _print_json({name: e.description for name, e in CATALOG.items()})
        return
    if not a.source or not a.output:
        raise ValueError("download needs SOURCE and --output (or --list)")
    sha = {}
    for item in a.sha256 or []:
        url, sep, digest = item.rpartition("=")
        if not sep:
            url, digest = a.source, item
        sha[url] = digest
    cfg = DownloadConfig(cache_dir=a.cache_dir, sha256=sha, extract=not a.no_extract,
                         retry=RetryPolicy(attempts=a.retries + 1, timeout_s=a.timeout),
                         max_expansion_ratio=a.max_expansion_ratio or None,
                         max_decompressed_bytes=a.max_decompressed_size or None)
    _print_json(download(a.source, a.output, cfg))


def cmd_subset(a: argparse.Namespace) -> None:
    from pipeline_tasks.subset import SubsetConfig, subset

    cfg = SubsetConfig(size=a.size, mode=a.mode, seed=a.seed)
    _print_json(subset(a.source, a.target, a.output_source, a.output_target, cfg))


def cmd_clean(a: argparse.Namespace) -> None:
    from pipeline_tasks.clean import CleanConfig, clean

    cfg = CleanConfig.from_dict({**{name: False for name in a.off}, **({"enabled": False} if a.none else {}),
                                 **{k: v for k, v in (("min_len", a.min_len), ("max_len", a.max_len),
                                                      ("max_ratio", a.max_ratio)) if v is not None}})
    _print_json(clean(a.source, a.target, a.output_source, a.output_target, a.source_lang, a.target_lang, cfg,
                      workers=a.workers, keep_all=a.keep_all))


def cmd_tokenize(a: argparse.Namespace) -> None:
    from pipeline_tasks.tokenization import TokenizerConfig, tokenize_corpus

    splits = {"train": (a.train_source, a.train_target)}
    if a.val_source or a.val_target:
        splits["val"] = (a.val_source, a.val_target)
    if a.test_source or a.test_target:
        splits["test"] = (a.test_source, a.test_target)
    for name, (s, t) in splits.items():
        if not s or not t:
            raise ValueError(f"--{name}-source and --{name}-target go together")
    cfg = TokenizerConfig(mode=a.mode, source_lang=a.source_lang, target_lang=a.target_lang,
                          moses_escape=a.moses_escape, detokenizer=a.detokenizer,
                          bpe_vocab_size=a.bpe_vocab_size, bpe_joint=a.joint_bpe,
                          **({"bpe_max_sentences": a.bpe_sample} if a.bpe_sample else {}))
    _print_json(tokenize_corpus(splits, a.output, cfg, workers=a.workers))


def cmd_detokenize(a: argparse.Namespace) -> None:
    from pipeline_tasks.textio import iter_lines
    from pipeline_tasks.tokenization import Tokenizer

    tok = Tokenizer.load(a.tokenizer)
    for line in iter_lines(a.input):
        sys.stdout.write(tok.decode(line, a.side) + "\n")


def cmd_recordio(a: argparse.Namespace) -> None:
    from pipeline_tasks.channels import VocabConfig, make_channels

    cfg = VocabConfig(num_words_source=a.num_words_source, num_words_target=a.num_words_target,
                      min_count_source=a.min_count_source, min_count_target=a.min_count_target,
                      joint=a.joint_vocab, source_json=a.vocab_source_json, target_json=a.vocab_target_json)
    _print_json(make_channels(a.train_source, a.train_target, a.val_source, a.val_target, a.output, cfg,
                              workers=a.workers, tokenizer_dir=a.tokenizer, shards=a.shards))


def cmd_inspect(a: argparse.Namespace) -> None:
    from model.recordio import read_pairs

    out = sys.stdout
    for n, (src, trg) in enumerate(read_pairs(a.file)):
        if a.limit is not None and n >= a.limit:
            break
        out.write(json.dumps({"source": src, "target": trg}) + "\n")


def cmd_upload(a: argparse.Namespace) -> None:
    from pipeline_tasks.upload import upload_channels

    _print_json(upload_channels(a.channels, a.destination, delete_extra=a.delete_extra))


def cmd_transform(a: argparse.Namespace) -> None:
    from pipeline_tasks.transform import TransformConfig, transform

    cfg = TransformConfig(batch_size=a.batch_size, beam_size=a.beam_size, max_output_length=a.max_output_length,
                          text_format=a.text_format, unknown_tokens=a.unknown_tokens, on_error=a.on_error,
                          chunk_lines=a.chunk_lines, engine=a.engine, compute_type=a.compute_type,
                          quantize=a.quantize)
    _print_json(transform(a.model, a.input, a.output, cfg, device=a.device))


def cmd_transform_job(a: argparse.Namespace) -> None:
    from pipeline_tasks.jobs.local.transform import run_transform_job

    with open(a.request, encoding="utf-8") as f:
        request = json.load(f)
    result = run_transform_job(request)
    _print_json(result)
    if result["TransformJobStatus"] != "Completed":
        raise RuntimeError(f"transform job {result['TransformJobName']} failed: {result.get('FailureReason')}")


def cmd_training_job(a: argparse.Namespace) -> None:
    from pipeline_tasks.jobs.local.training import run_training_job

    with open(a.request, encoding="utf-8") as f:
        request = json.load(f)
    result = run_training_job(request, backend=a.backend, workdir=a.workdir, keep_root=a.keep_root)
    _print_json(result)
    if result["TrainingJobStatus"] == "Failed":
        raise RuntimeError(f"training job {result['TrainingJobName']} failed: {result.get('FailureReason')}")


def cmd_tune(a: argparse.Namespace) -> None:
    from pipeline_tasks.jobs.local.tuning import default_store, run_tuning_job

    with open(a.request, encoding="utf-8") as f:
        request = json.load(f)
    result = run_tuning_job(request, a.backend, store=a.store or default_store(request), workdir=a.workdir)
    _print_json(result)
    if result["HyperParameterTuningJobStatus"] != "Completed":
        raise RuntimeError(f"tuning job {result['HyperParameterTuningJobName']} failed: {result.get('FailureReason')}")


def cmd_evaluate(a: argparse.Namespace) -> None:
    import tempfile

    from pipeline_tasks.evaluate import EvaluateConfig, evaluate, summary
    from pipeline_tasks.transform import resolve_model

    cfg = EvaluateConfig(batch_size=a.batch_size, beam_size=a.beam_size, max_output_length=a.max_output_length,
                         max_sentences=a.max_sentences,
                         report=not a.no_report, text_format=a.text_format)
    with tempfile.TemporaryDirectory(prefix="evaluate-model-") as work:
        model_dir = resolve_model(a.model, work)
        _print_json(summary(evaluate(model_dir, a.source, a.reference, a.output, cfg, model_uri=str(a.model),
                                     device=a.device)))


def build_parser() -> argparse.ArgumentParser:
    from pipeline_tasks.inflate import DEFAULT_MAX_RATIO, DEFAULT_MAX_TOTAL

    p = argparse.ArgumentParser(prog="python -m pipeline_tasks", description=__doc__.split("\n")[0])
    p.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    sub = p.add_subparsers(dest="step", required=True, metavar="STEP")

    d = sub.add_parser("download", help="fetch a corpus (catalog name, URL or path), verified and cached")
    d.add_argument("source", nargs="?", help="catalog name (see --list), http(s) URL, file:// URL or path")
    d.add_argument("--output", help="folder for the fetched (and extracted) files")
    d.add_argument("--cache-dir", default=".cache/downloads", help="download cache (default: %(default)s)")
    d.add_argument("--sha256", action="append", metavar="[URL=]DIGEST", help="expected sha256 (repeatable)")
    d.add_argument("--no-extract", action="store_true", help="keep .gz/.tgz files as they are")
    d.add_argument("--retries", type=int, default=5, help="retries after a failed attempt (default: %(default)s)")
    d.add_argument("--timeout", type=float, default=60.0, help="socket timeout in seconds (default: %(default)s)")
    d.add_argument("--max-expansion-ratio", type=float, default=DEFAULT_MAX_RATIO, metavar="R",
                   help="refuse a compressed file that expands more than R times its size (a decompression bomb; "
                   "text compresses 10-20x); 0: no limit (default: %(default)g)")
    d.add_argument("--max-decompressed-size", type=parse_size, default=DEFAULT_MAX_TOTAL, metavar="SIZE",
                   help="refuse to decompress more than SIZE in total, e.g. 64GiB; 0: no limit (default: 64GiB)")
    d.add_argument("--list", action="store_true", help="list the catalog and exit")
    d.set_defaults(fn=cmd_download)

    s = sub.add_parser("subset", help="first N or a seeded random N pairs (length filters: see clean)")
    s.add_argument("--source", required=True)
    s.add_argument("--target", required=True)
    s.add_argument("--output-source", required=True)
    s.add_argument("--output-target", required=True)
    s.add_argument("-n", "--size", type=int, help="pairs to keep (default: all that pass the filters)")
    s.add_argument("--mode", choices=("head", "random"), default="head")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(fn=cmd_subset)

    c = sub.add_parser("clean", help="drop noisy pairs: bad characters, markup, URLs, copies, wrong script or "
                       "language, duplicates; a report of what each filter dropped")
    c.add_argument("--source", required=True)
    c.add_argument("--target", required=True)
    c.add_argument("--output-source", required=True)
    c.add_argument("--output-target", required=True)
    c.add_argument("--source-lang", required=True, help="ISO code of the source side (en)")
    c.add_argument("--target-lang", required=True, help="ISO code of the target side (de)")
    c.add_argument("--off", nargs="*", default=[], metavar="FILTER",
                   help="filters to switch off: too_short too_long ratio bad_characters markup url_only copy script "
                        "language duplicate near_duplicate")
    c.add_argument("--min-len", type=int, help="drop pairs with a side of fewer whitespace tokens (default 1)")
    c.add_argument("--max-len", type=int, help="drop pairs with a side of more tokens (default 100)")
    c.add_argument("--max-ratio", type=float, help="drop pairs whose longer side has more than this many times the "
                   "tokens of the shorter (default 3)")
    c.add_argument("--none", action="store_true", help="no filter: pass the pairs through, counted")
    c.add_argument("--keep-all", action="store_true", help="write every pair; only report what would be dropped")
    c.add_argument("--workers", type=int, help="processes (default: every core)")
    c.set_defaults(fn=cmd_clean)

    t = sub.add_parser("tokenize", help="whitespace or Moses tokenization, optional SentencePiece BPE")
    for split in ("train", "val", "test"):
        t.add_argument(f"--{split}-source", required=split == "train")
        t.add_argument(f"--{split}-target", required=split == "train")
    t.add_argument("--output", required=True, help="folder for {split}.{lang} files and tokenizer.json")
    t.add_argument("--mode", choices=("whitespace", "moses"), default="whitespace")
    t.add_argument("--source-lang", default="en")
    t.add_argument("--target-lang", default="de")
    t.add_argument("--moses-escape", action="store_true", help="escape special characters as Moses does")
    t.add_argument("--detokenizer", choices=("moses", "none"), default="moses")
    t.add_argument("--bpe-vocab-size", type=int, help="learn a SentencePiece BPE model of this size")
    t.add_argument("--joint-bpe", action="store_true", help="one subword model for both languages")
    t.add_argument("--bpe-sample", type=int, metavar="N",
                   help="sentences (sampled from the training split) the subword model learns from "
                   "(default: 2,000,000)")
    t.add_argument("--workers", type=int, help="processes (default: all cores)")
    t.set_defaults(fn=cmd_tokenize)

    dt = sub.add_parser("detokenize", help="turn tokenized text back into plain text")
    dt.add_argument("--tokenizer", required=True, help="folder with tokenizer.json (the tokenize output)")
    dt.add_argument("--input", required=True)
    dt.add_argument("--side", choices=("source", "target"), default="target")
    dt.set_defaults(fn=cmd_detokenize)

    r = sub.add_parser("recordio", help="vocabularies + RecordIO-protobuf train/validation channels")
    r.add_argument("--train-source", required=True)
    r.add_argument("--train-target", required=True)
    r.add_argument("--val-source", required=True)
    r.add_argument("--val-target", required=True)
    r.add_argument("--output", required=True, help="writes train/, validation/, vocab/ under it")
    r.add_argument("--num-words-source", type=int, default=50000)
    r.add_argument("--num-words-target", type=int, default=50000)
    r.add_argument("--min-count-source", type=int, default=1)
    r.add_argument("--min-count-target", type=int, default=1)
    r.add_argument("--joint-vocab", action="store_true", help="one vocabulary for both sides")
    r.add_argument("--vocab-source-json", help="reuse this source vocabulary")
    r.add_argument("--vocab-target-json", help="reuse this target vocabulary")
    r.add_argument("--tokenizer", help="the tokenize step's output folder: ships its tokenizer.json (and subword "
                   "models) in the vocab channel, so the trained model can take raw text")
    r.add_argument("--shards", type=int, default=1, help="write the training split as N files (line i in file i "
                   "mod N), for a training job of several instances with ShardedByS3Key (default: %(default)s)")
    r.add_argument("--workers", type=int, help="processes (default: all cores)")
    r.set_defaults(fn=cmd_recordio)

    i = sub.add_parser("inspect", help="print a .rec file's records as JSON lines")
    i.add_argument("file")
    i.add_argument("--limit", type=int, help="stop after this many records")
    i.set_defaults(fn=cmd_inspect)

    u = sub.add_parser("upload", help="upload the channels to s3://bucket/prefix/ or a local root")
    u.add_argument("--channels", required=True, help="the recordio step's output folder")
    u.add_argument("--destination", required=True, help="s3://bucket/prefix or a path")
    u.add_argument("--delete-extra", action="store_true", help="delete objects under the channel prefixes "
                   "that this upload does not have")
    u.set_defaults(fn=cmd_upload)
    tr = sub.add_parser("transform", help="translate JSON Lines {\"source\"} -> {\"target\"}, streaming")
    tr.add_argument("--model", required=True, help="model directory or model.tar.gz (path, file:// or s3://)")
    tr.add_argument("--input", required=True, help="JSON Lines input (path, file:// or s3://)")
    tr.add_argument("--output", required=True, help="JSON Lines output (path, file:// or s3://)")
    tr.add_argument("--batch-size", type=int, default=32, help="sentences decoded together (default: %(default)s)")
    tr.add_argument("--beam-size", type=int, help="default: the model's beam_size; 1 = greedy")
    tr.add_argument("--max-output-length", type=int, help=MAX_OUTPUT_LENGTH_HELP)
    tr.add_argument("--text-format", choices=("raw", "tokens"),
                    help="raw: tokenize and detokenize with the model's tokenizer (default when it has one)")
    tr.add_argument("--unknown-tokens", choices=("unk", "reject"), default="unk",
                    help="unk: map to <unk> as training did; reject: a bad line (default: %(default)s)")
    tr.add_argument("--on-error", choices=("fail", "record"), default="fail",
                    help="a bad line fails the job (naming it), or becomes {\"error\": …} (default: %(default)s)")
    tr.add_argument("--chunk-lines", type=int, default=2000, help="lines in memory at once (default: %(default)s)")
    tr.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    tr.add_argument("--engine", choices=("auto", "torch", "ctranslate2"),
                    help="auto (default): CTranslate2 when the model holds its export (python -m model.ctranslate "
                    "export), else torch")
    tr.add_argument("--compute-type", help="CTranslate2's compute type, e.g. int8 or float32 (default: the export's)")
    tr.add_argument("--quantize", choices=("none", "int8"), help="torch engine: int8 = torch.ao dynamic int8 (CPU)")
    tr.set_defaults(fn=cmd_transform)

    tj = sub.add_parser("transform-job", help="run a {\"Model\", \"Transform\"} SageMaker transform request "
                        "locally against container/serve")
    tj.add_argument("--request", required=True, help="JSON file: {\"Model\": CreateModel, \"Transform\": "
                    "CreateTransformJob}")
    tj.set_defaults(fn=cmd_transform_job)

    trj = sub.add_parser("training-job", help="run a CreateTrainingJob request here (one process or container per "
                        "instance) and print its DescribeTrainingJob-shaped result")
    trj.add_argument("--request", required=True, help="JSON file: the CreateTrainingJob request (channel URIs may "
                     "be paths or s3://)")
    trj.add_argument("--backend", choices=("local", "docker"), default="local",
                     help="local: the container's code as processes; docker: the image (default: %(default)s)")
    trj.add_argument("--workdir", help="where the job's SageMaker roots go (default: $SEQ2SEQ_LOCAL_JOBS_DIR or the "
                     "system temp dir)")
    trj.add_argument("--keep-root", action="store_true", help="keep the job's roots after a successful job")
    trj.set_defaults(fn=cmd_training_job)

    tu = sub.add_parser("tune", help="run a CreateHyperParameterTuningJob request here: Optuna searches, each "
                        "trial a local (or docker) training job")
    tu.add_argument("--request", required=True, help="JSON file: the CreateHyperParameterTuningJob request "
                    "(channel URIs may be paths or s3://)")
    tu.add_argument("--backend", choices=("local", "docker"), default="local",
                    help="where each trial's training job runs (default: %(default)s)")
    tu.add_argument("--store", help="where tuning jobs' results are kept, and a warm start finds its parents "
                    "(default: tuning-jobs/ beside the trials' output)")
    tu.add_argument("--workdir", help="where the trials' job folders go (default: $SEQ2SEQ_LOCAL_JOBS_DIR or the "
                    "system temp dir)")
    tu.set_defaults(fn=cmd_tune)

    ev = sub.add_parser("evaluate", help="translate a test set; sacreBLEU, chrF, tokenized BLEU, perplexity, report")
    ev.add_argument("--model", required=True, help="model directory or model.tar.gz (path, file:// or s3://)")
    ev.add_argument("--source", required=True, help="raw source text, one sentence per line")
    ev.add_argument("--reference", required=True, help="raw reference translations, aligned with --source")
    ev.add_argument("--output", required=True, help="folder for hypotheses.txt, metrics.json, report/")
    ev.add_argument("--batch-size", type=int, default=32, help="sentences decoded together (default: %(default)s)")
    ev.add_argument("--beam-size", type=int, help="default: the model's beam_size; 1 = greedy")
    ev.add_argument("--max-output-length", type=int, help=MAX_OUTPUT_LENGTH_HELP)
    ev.add_argument("--max-sentences", type=int, help="evaluate the first N lines only")
    ev.add_argument("--no-report", action="store_true", help="skip the PNG/HTML report")
    ev.add_argument("--text-format", choices=("raw", "tokens"),
                    help="raw: tokenize and detokenize with the model's tokenizer (default when it has one)")
    ev.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    ev.set_defaults(fn=cmd_evaluate)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        args.fn(args)
    except BrokenPipeError:  # `inspect … | head`
        sys.stderr.close()
        return 0
    except Exception as e:
        # Bad input and failed I/O (ours, or AWS's: S3 errors come from botocore/boto3) get one line;
        # anything else is a bug and keeps its traceback.
        if not isinstance(e, ValueError | OSError | RuntimeError) and \
                type(e).__module__.split(".")[0] not in ("botocore", "boto3"):
            raise
        log.debug("failed", exc_info=True)
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
