"""The `transform` step: batch translation of JSON Lines ``{"source": …}`` → ``{"target": …}``.

Two ways to run it, with the same semantics (one output line per input line, same order; a bad line
fails the job naming its line number, or with ``on_error=record`` becomes ``{"error": …}`` and is
counted):

- :func:`transform`: in-process, streaming. Lines are read, translated and written ``chunk_lines`` at
  a time, so memory stays flat for any input size; the output is staged and published whole.
- ``run_transform_job`` (pipeline_tasks/jobs/local/transform.py): the local emulation of a SageMaker
  transform job, executing the ``{"Model": CreateModel, "Transform": CreateTransformJob}`` request
  that pipeline_tasks/jobs/requests.py builds against ``container/serve``; it uses this module's model
  resolution, line reading and progress.

Both log their progress at least every :data:`PROGRESS_INTERVAL_S` seconds, from a timer, not only when
a piece of work ends: lines done of the total, lines/s over the last interval, ETA, and what is still
running (a chunk being decoded, a mini-batch waiting for the server), so a long step is never silent.

The model is a model directory or a ``model.tar.gz`` (what a training job leaves in S3), by path,
``file://`` or ``s3://`` URI; archives are extracted refusing anything that would land outside the
target folder.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from model.archive import MODEL_ARCHIVE_SUFFIXES, extract_model_archive
from model.constants import PARAMS_FILE
from model.inference_config import InferenceConfig
from pipeline_tasks import storage
from pipeline_tasks.atomic import staged_file
from pipeline_tasks.progress import format_duration

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 30.0   # the longest a transform stays silent in its log


# --- progress ----------------------------------------------------------------------------------------------

class LineProgress:
    """Progress of a transform, logged by a timer every `interval_s` (default :data:`PROGRESS_INTERVAL_S`)
    whether or not lines finished meanwhile: done / total, the rate over the last interval (a rate since
    the start hides a slowdown), an ETA, and the work in flight with how long it has been running.

    Thread-safe: lines may be counted from request threads while the timer reads."""

    def __init__(self, what: str, total: int | None, interval_s: float | None = None,
                 logger: logging.Logger | None = None) -> None:
        self.what, self.total = what, total
        self.interval_s = PROGRESS_INTERVAL_S if interval_s is None else interval_s
        self.logger = logger or log
        self.lines = 0
        self.start = self._mark = time.monotonic()
        self._mark_lines = 0
        self._running: dict[object, tuple[str, float]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"progress {what}", daemon=True)

    def __enter__(self) -> LineProgress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def add(self, n: int) -> None:
        with self._lock:
            self.lines += n

    def started(self, key: object, description: str) -> None:
        with self._lock:
            self._running[key] = (description, time.monotonic())

    def finished(self, key: object) -> None:
        with self._lock:
            self._running.pop(key, None)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.logger.info(self.line())

    def line(self) -> str:
        """The progress line now; starts a new rate window."""
        with self._lock:
            now = time.monotonic()
            window, done = now - self._mark, self.lines
            rate = (done - self._mark_lines) / window if window > 0 else 0.0
            self._mark, self._mark_lines = now, done
            running = sorted(self._running.values(), key=lambda r: r[1])
        elapsed = now - self.start
        msg = f"{self.what}: {done:,}"
        if self.total:
            msg += f" / {self.total:,} lines ({100.0 * done / self.total:.1f}%)"
        else:
            msg += " lines"
        msg += f", {rate:,.1f} lines/s over the last {format_duration(window) if window >= 1 else f'{window:.1f}s'}"
        if self.total:
            # the last window's rate when there was one; else the average so far
            pace = rate if rate > 0 else (done / elapsed if elapsed > 0 else 0.0)
            msg += f", ETA {format_duration((self.total - done) / pace)}" if pace > 0 else ", ETA unknown"
        if running:
            msg += "; running: " + ", ".join(f"{d} for {format_duration(now - t)}" for d, t in running)
        return msg

    def done(self) -> float:
        """Log the final line; returns the seconds since the start."""
        elapsed = time.monotonic() - self.start
        rate = self.lines / elapsed if elapsed > 0 else 0.0
        self.logger.info("%s: %s lines in %s (%.1f lines/s)", self.what, f"{self.lines:,}",
                         format_duration(elapsed), rate)
        return elapsed


# --- the model -------------------------------------------------------------------------------------------



def resolve_model(uri: str | os.PathLike[str], workdir: str | os.PathLike[str]) -> Path:
    """A local model directory for a model directory, or a model.tar.gz by path, file:// or s3:// URI
    (fetched and extracted under `workdir`)."""
    loc = storage.parse(uri)
    workdir = Path(workdir)
    if isinstance(loc, storage.S3Location):
        if not loc.key.endswith(MODEL_ARCHIVE_SUFFIXES):
            raise ValueError(f"{uri}: an S3 model must be a model.tar.gz object")
        archive = storage.get_file(str(loc), workdir / "download" / Path(loc.key).name)
        return extract_model_archive(archive, workdir / "model")
    if loc.is_dir():
        if not (loc / PARAMS_FILE).is_file():
            raise FileNotFoundError(f"{loc}: not a model directory (no params.pt)")
        return loc
    if loc.is_file():
        return extract_model_archive(loc, workdir / "model")
    raise FileNotFoundError(f"{uri}: model not found (a model directory or model.tar.gz)")


# --- in-process transform ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class TransformConfig(InferenceConfig):
    """The decoding settings of :class:`~model.inference_config.InferenceConfig` (what the Translator, or a
    server's environment, gets: :meth:`decoding`), plus what a batch transform adds."""

    chunk_lines: int = 2000          # lines in memory at once (sorted by length within a chunk)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.chunk_lines < 1:
            raise ValueError(f"chunk_lines must be >= 1, got {self.chunk_lines}")


def iter_line_chunks(f: IO[bytes], n: int) -> Iterator[list[bytes]]:
    """Lines (without their end of line) `n` at a time; a last line without a newline still counts."""
    chunk: list[bytes] = []
    for line in f:
        if line.endswith(b"\n"):
            line = line[:-1]
        if line.endswith(b"\r"):
            line = line[:-1]
        chunk.append(line)
        if len(chunk) >= n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def count_lines(path: str | os.PathLike[str]) -> int:
    n = 0
    last = b"\n"
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            n += block.count(b"\n")
            last = block[-1:]
    return n + (last != b"\n")


@contextlib.contextmanager
def local_input(uri: str, workdir: Path) -> Iterator[Path]:
    """The input as a local file to stream from: the file itself, or an S3 object fetched under `workdir`."""
    loc = storage.parse(uri)
    if isinstance(loc, storage.S3Location):
        yield storage.get_file(uri, workdir / "input" / (Path(loc.key).name or "input"))
    else:
        if not loc.is_file():
            raise FileNotFoundError(f"{uri}: input file not found")
        yield loc


@contextlib.contextmanager
def local_output(uri: str, workdir: Path) -> Iterator[IO[bytes]]:
    """A file to write; published (atomically locally, uploaded then verified on S3) only on success."""
    loc = storage.parse(uri)
    if isinstance(loc, storage.S3Location):
        tmp = workdir / "output" / (Path(loc.key).name or "output")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            yield f
        storage.put_file(tmp, uri)
    else:
        with staged_file(loc) as f:
            yield f


def transform(model: str | os.PathLike[str], input_uri: str, output_uri: str,
              cfg: TransformConfig | None = None, device: str | None = None,
              progress_interval_s: float | None = None) -> dict[str, Any]:
    """Translate a JSON Lines file into another, streaming; returns a report (lines, errors, speed).
    Progress is logged every `progress_interval_s` (:data:`PROGRESS_INTERVAL_S`), counted per decoded
    batch, so a chunk that takes minutes still shows its lines coming."""
    from model import engines
    from model.serving_codecs import RequestError, encode_jsonlines, translate_jsonlines
    from model.translator import Translator

    cfg = cfg or TransformConfig()
    input_uri, output_uri = os.fspath(input_uri), os.fspath(output_uri)
    with tempfile.TemporaryDirectory(prefix="transform-") as tmp:
        work = Path(tmp)
        model_dir = resolve_model(model, work)
        translator = Translator.load(model_dir, cfg.decoding(), device)
        lines = errors = 0
        error_lines: list[int] = []
        with local_input(input_uri, work) as local_in:
            progress = LineProgress(f"transform {Path(local_in).name}", count_lines(local_in), progress_interval_s)
            with progress, open(local_in, "rb") as fin, local_output(output_uri, work) as fout:
                for chunk in iter_line_chunks(fin, cfg.chunk_lines):
                    progress.started("chunk", f"lines {lines + 1:,}-{lines + len(chunk):,}")
                    try:
                        outputs = translate_jsonlines(translator, chunk, first_line=lines + 1,
                                                      name=f"{input_uri}: line", on_batch=progress.add)
                    except RequestError as e:
                        raise ValueError(str(e)) from None
                    for i, obj in enumerate(outputs):
                        if "error" in obj:
                            errors += 1
                            if len(error_lines) < 20:
                                error_lines.append(lines + i + 1)
                    fout.write(encode_jsonlines(outputs))
                    lines += len(chunk)
                    progress.finished("chunk")
            seconds = progress.done()
    if errors:
        log.warning("transform: %d of %d line(s) could not be translated and carry {\"error\": …} "
                    "(first at line(s) %s)", errors, lines, ", ".join(map(str, error_lines[:5])))
    return {"model": os.fspath(model), "input": input_uri, "output": output_uri, "lines": lines, "errors": errors,
            "error_lines": error_lines, "seconds": round(seconds, 3),
            "sentences_per_s": round(lines / seconds, 2) if seconds > 0 else None,
            "beam_size": translator.beam_size, "batch_size": cfg.batch_size, "text_format": translator.text_format,
            "max_output_length": translator.output_length_rule,
            "engine": engines.describe(translator.engine, translator.config)}
