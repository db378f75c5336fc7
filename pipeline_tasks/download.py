"""The `download` step: fetch corpora over HTTP(S) (or from a path), verified, cached, extracted.

- a catalog of known corpora (WMT17 de-en preprocessed, as the AWS example uses; the bundled sample);
- retries with exponential backoff on connection errors, timeouts, 429 and 5xx;
- resume of a partial file with an HTTP Range request after a dropped connection;
- optional sha256 check (a mismatch deletes the file: a corrupt download is never cached);
- a cache keyed by URL, so a re-run downloads nothing;
- gunzip / untar into the output folder, refusing archive members that would land outside it
  (absolute paths, `..`, links, devices, sparse files);
- decompression bombs refused at a limit, never inflated in full (pipeline_tasks/inflate.py): an
  expansion ratio per file (default 200x: text compresses 10-20x) and a total per download (default
  64 GiB: the WMT17 corpus is ~1 GB unpacked), both raisable;
- everything streams: no file is read into memory whole.

HTTP bodies are stored exactly as served (`Accept-Encoding: identity`, and the raw stream read with
`decode_content=False`): nothing is decompressed on the wire, so the limits above see every byte
that is ever inflated here.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import logging
import os
import shutil
import tarfile
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import requests
import urllib3

from model.archive import sha256_file
from pipeline_tasks.atomic import check_output_dir, staged_dir, staged_file
from pipeline_tasks.inflate import (
    DEFAULT_MAX_RATIO,
    DEFAULT_MAX_TOTAL,
    Budget,
    CorruptCompressedError,
    DecompressionLimitError,
    LimitedReader,
    compression_of,
    ratio_limit,
)
from pipeline_tasks.progress import Progress

log = logging.getLogger(__name__)

CHUNK = 1 << 20
SAMPLE_DIR = Path(__file__).parent / "sample_data" / "wmt-toy-ende"
WMT17_DEEN = "http://data.statmt.org/wmt17/translation-task/preprocessed/de-en/"


@dataclass(frozen=True)
class CatalogEntry:
    """A named corpus: the files that make it up and what they are."""

    description: str
    urls: tuple[str, ...]
    sha256: dict[str, str] = field(default_factory=dict)   # url -> digest, where published


CATALOG: dict[str, CatalogEntry] = {
    "wmt17-de-en-preprocessed": CatalogEntry(
        "WMT17 de-en, Moses-tokenized and truecased (the AWS seq2seq example's data): "
        "corpus.tc.{de,en}.gz (~5.9M pairs, ~560 MB gzipped) and dev.tgz (newstest2014-2016)",
        (WMT17_DEEN + "corpus.tc.de.gz", WMT17_DEEN + "corpus.tc.en.gz", WMT17_DEEN + "dev.tgz"),
    ),
    # The WMT17 news task's raw (untokenized) de-en training corpora, to mix with weights (the corpus param's
    # list form); each holds a training split only: validation and test come from another source or test_sets.
    "europarl-v7-de-en": CatalogEntry(
        "Europarl v7 German-English (WMT17 training, raw): europarl-v7.de-en.{de,en}, ~1.9M pairs, ~190 MB",
        ("http://www.statmt.org/europarl/v7/de-en.tgz",)),
    "news-commentary-v12-de-en": CatalogEntry(
        "News Commentary v12 German-English (WMT17 training, raw): training/news-commentary-v12.de-en.{de,en}, "
        "~270k pairs", ("http://data.statmt.org/wmt17/translation-task/training-parallel-nc-v12.tgz",)),
    "commoncrawl-de-en": CatalogEntry(
        "CommonCrawl German-English (WMT13-17 training, raw, web-crawled and noisy: clean it): "
        "commoncrawl.de-en.{de,en}, ~2.4M pairs", ("http://www.statmt.org/wmt13/training-parallel-commoncrawl.tgz",)),
    "rapid2016-de-en": CatalogEntry(
        "Rapid 2016 German-English (EU press releases, WMT17 training, raw): rapid2016.de-en.{de,en}, ~1.3M pairs",
        ("http://data.statmt.org/wmt17/translation-task/rapid2016.tgz",)),
    "wmt-toy-ende-sample": CatalogEntry(
        "bundled offline sample: 10k WMT training pairs, newstest2012 validation, newstest2014 test "
        "(tokenized, en/de)",
        tuple(str(SAMPLE_DIR / f"{split}.{lang}") for split in ("train", "val", "test") for lang in ("en", "de")),
    ),
}


class DownloadError(RuntimeError):
    """A download that failed for good (after retries, or on a client error such as 404)."""


class HTTPClientError(DownloadError):
    """A 4xx answer other than 429: retrying would not help."""


class ChecksumError(DownloadError):
    """The downloaded bytes do not have the expected sha256."""


RATIO_HINT = "; if the file is genuine, raise the limit with --max-expansion-ratio (DownloadConfig.max_expansion_ratio)"
TOTAL_HINT = "; raise it with --max-decompressed-size (DownloadConfig.max_decompressed_bytes)"


class UnsafeArchiveError(ValueError):
    """An archive member would be written outside the extraction folder, or is a link/device."""


@dataclass
class RetryPolicy:
    """Retries with exponential backoff; the sleep is injectable so tests do not wait."""

    attempts: int = 6
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    timeout_s: float = 60.0
    sleep: Callable[[float], None] = time.sleep

    def delay(self, attempt: int) -> float:
        return min(self.backoff_s * (2 ** attempt), self.max_backoff_s)


@dataclass
class DownloadConfig:
    """Where the cache lives, what to verify, whether to extract, and how far extraction may inflate."""

    cache_dir: str
    sha256: dict[str, str] = field(default_factory=dict)   # url -> expected digest
    extract: bool = True
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_expansion_ratio: float | None = DEFAULT_MAX_RATIO          # per compressed file; None/0: no limit
    max_decompressed_bytes: int | None = DEFAULT_MAX_TOTAL         # over the whole download; None: no limit

    def __post_init__(self) -> None:
        if self.max_expansion_ratio is not None and self.max_expansion_ratio < 0:
            raise ValueError(f"max_expansion_ratio must be >= 0, got {self.max_expansion_ratio}")
        if self.max_decompressed_bytes is not None and self.max_decompressed_bytes < 0:
            raise ValueError(f"max_decompressed_bytes must be >= 0, got {self.max_decompressed_bytes}")


def resolve_source(source: str) -> list[str]:
    """Catalog name, URL or path -> list of URLs/paths."""
    if source in CATALOG:
        return list(CATALOG[source].urls)
    return [source]


def is_url(source: str) -> bool:
    return urllib.parse.urlsplit(source).scheme in ("http", "https")


def _local_path(source: str) -> Path:
    parts = urllib.parse.urlsplit(source)
    if parts.scheme == "file":
        return Path(urllib.parse.unquote(parts.path))
    return Path(source)


def file_name(source: str) -> str:
    """The name a fetched file gets: the URL's or path's last segment ("index" for a URL ending in /)."""
    if is_url(source):
        return PurePosixPath(urllib.parse.urlsplit(source).path).name or "index"
    return _local_path(source).name


def cache_key(url: str) -> str:
    """Cache file name for a URL: a hash of the whole URL (two URLs never collide) plus its basename."""
    digest = hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
    return f"{digest}-{file_name(url)}"


def _total_from_headers(resp: requests.Response, offset: int) -> int | None:
    if resp.status_code == 206:
        rng = resp.headers.get("Content-Range", "")
        if "/" in rng and not rng.endswith("/*"):
            return int(rng.rsplit("/", 1)[1])
    length = resp.headers.get("Content-Length")
    if length is None:
        return None
    return int(length) + (offset if resp.status_code == 206 else 0)


def fetch_url(url: str, dest: Path, retry: RetryPolicy, session: requests.Session | None = None) -> Path:
    """Download `url` to `dest`, resuming `dest.part` across dropped connections; returns `dest`."""
    session = session or requests.Session()
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    last_error: Exception | None = None
    for attempt in range(retry.attempts):
        offset = part.stat().st_size if part.exists() else 0
        # identity: the bytes as stored on the server, never compressed on the fly (sizes and Range offsets
        # then count the file's own bytes)
        headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={offset}-"} if offset else {})}
        try:
            with session.get(url, headers=headers, stream=True, timeout=retry.timeout_s) as resp:
                if resp.status_code == 416 and offset:
                    # Our partial file is at least as long as the resource: check against its size.
                    total = resp.headers.get("Content-Range", "").rsplit("/", 1)[-1]
                    if total.isdigit() and int(total) == offset:
                        os.replace(part, dest)
                        return dest
                    log.warning("%s: server refused resume at byte %d; starting over", url, offset)
                    part.unlink()
                    continue
                if resp.status_code in (429,) or resp.status_code >= 500:
                    raise DownloadError(f"{url}: HTTP {resp.status_code}")
                if resp.status_code >= 400:
                    raise HTTPClientError(f"{url}: HTTP {resp.status_code} {resp.reason}")
                if offset and resp.status_code == 200:
                    log.info("%s: server ignored the Range request; downloading from the start", url)
                    offset = 0
                elif offset:
                    log.info("%s: resuming at byte %d", url, offset)
                total = _total_from_headers(resp, offset)
                progress = Progress(log, f"download {file_name(url)}",
                                    "bytes", total=total, scale=1 << 20, scale_unit="MiB")
                progress.count = offset
                with open(part, "ab" if offset else "wb") as f:
                    # raw and undecoded: a .gz served with `Content-Encoding: gzip` is stored as the .gz it is
                    for chunk in resp.raw.stream(CHUNK, decode_content=False):
                        f.write(chunk)
                        progress.update(len(chunk))
                size = part.stat().st_size
                if total is not None and size != total:
                    raise requests.ConnectionError(f"connection closed at byte {size} of {total}")
                progress.done()
                os.replace(part, dest)
                return dest
        except HTTPClientError:
            raise
        except DownloadError as e:
            last_error = e
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                urllib3.exceptions.HTTPError) as e:   # raw.stream raises urllib3's own errors
            last_error = e
        if attempt + 1 < retry.attempts:
            delay = retry.delay(attempt)
            log.warning("%s: attempt %d/%d failed (%s); retrying in %.1fs", url, attempt + 1, retry.attempts,
                        last_error, delay)
            retry.sleep(delay)
    raise DownloadError(f"{url}: giving up after {retry.attempts} attempts: {last_error}")


def fetch_cached(source: str, cfg: DownloadConfig, session: requests.Session | None = None) -> Path:
    """A verified local copy of `source`: the cache entry for a URL, the file itself for a path."""
    expected = cfg.sha256.get(source)
    if not is_url(source):
        path = _local_path(source)
        if not path.is_file():
            raise FileNotFoundError(f"source file not found: {source}")
        if expected:
            _verify(path, source, expected, delete=False)
        return path
    cache = Path(cfg.cache_dir)
    dest = cache / cache_key(source)
    meta_path = dest.with_name(dest.name + ".json")
    if dest.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("url") == source and meta.get("size") == dest.stat().st_size and \
                (not expected or meta.get("sha256") == expected.lower()):
            log.info("%s: cached at %s (%d bytes), not downloading", source, dest, meta["size"])
            return dest
    fetch_url(source, dest, cfg.retry, session)
    digest = _verify(dest, source, expected, delete=True)
    with staged_file(meta_path, "w", encoding="utf-8") as f:
        json.dump({"url": source, "size": dest.stat().st_size, "sha256": digest}, f)
    return dest


def _verify(path: Path, source: str, expected: str | None, delete: bool) -> str:
    digest = sha256_file(path)
    if expected and digest != expected.lower():
        if delete:
            path.unlink()
        raise ChecksumError(f"{source}: sha256 mismatch: expected {expected.lower()}, got {digest}"
                            + (" (the download was deleted)" if delete else ""))
    return digest


def check_member(member: tarfile.TarInfo, archive: str) -> None:
    """Refuse any member that is not a plain file or folder strictly inside the target folder."""
    name = member.name
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path")
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        raise UnsafeArchiveError(f"{archive}: member {name!r} would be written outside the target folder")
    if member.issym() or member.islnk():
        raise UnsafeArchiveError(f"{archive}: member {name!r} is a link (to {member.linkname!r}); links are refused")
    if not (member.isfile() or member.isdir()):
        raise UnsafeArchiveError(f"{archive}: member {name!r} is not a regular file or folder")
    if member.type == tarfile.GNUTYPE_SPARSE or member.sparse is not None:
        # its holes would be written out in full without passing through the decompression limits
        raise UnsafeArchiveError(f"{archive}: member {name!r} is a sparse file; sparse files are refused")


def _check_member_size(member: tarfile.TarInfo, archive: str, archive_size: int, stream: LimitedReader,
                       max_ratio: float | None, budget: Budget | None) -> None:
    """Refuse a member whose declared size is already over a limit, before a byte of it is written."""
    allowed = ratio_limit(archive_size, max_ratio)
    if allowed is not None and member.size > allowed:
        raise DecompressionLimitError(
            f"{archive}: member {member.name!r} is {member.size} bytes, more than {max_ratio:g}x the archive's "
            f"{archive_size} bytes: a decompression bomb, or not text{RATIO_HINT}", archive, stream.written)
    remaining = budget.remaining() if budget is not None else None
    if remaining is not None and member.size > remaining:
        raise budget.refuse(archive, stream.written, f"member {member.name!r} ({member.size} bytes)")  # type: ignore[union-attr]


def _untar(path: Path, out_dir: Path, name: str, max_ratio: float | None, budget: Budget | None) -> list[Path]:
    """Extract member by member from one decompressing stream (tarfile's stream mode), so that every
    decompressed byte is counted once and a bomb stops at the limit; members are checked one by one
    before they are written (a refused archive leaves only the staging folder, which is removed)."""
    size = path.stat().st_size
    placed: list[Path] = []
    with open(path, "rb") as raw:
        opener = compression_of(raw)
        # an uncompressed tar inflates nothing: it is read as it is
        stream = LimitedReader(opener(raw), name, size, max_ratio, budget, RATIO_HINT) if opener else raw
        try:
            with stream, tarfile.open(fileobj=stream, mode="r|") as tar:  # type: ignore[call-overload]
                for m in tar:
                    check_member(m, name)
                    target = out_dir / m.name
                    if m.isdir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    if isinstance(stream, LimitedReader):
                        _check_member_size(m, name, size, stream, max_ratio, budget)
                    if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: a second line of defence
                        tar.extract(m, out_dir, filter="data")
                    else:  # pragma: no cover
                        tar.extract(m, out_dir)
                    placed.append(target)
        except tarfile.TarError as e:
            raise CorruptCompressedError(f"{name}: not a valid tar archive ({e})") from e
    return placed


def extract_into(path: Path, out_dir: Path, name: str, max_ratio: float | None = DEFAULT_MAX_RATIO,
                 budget: Budget | None = None) -> list[Path]:
    """Place one fetched file in `out_dir`: untar archives, gunzip .gz, copy anything else.

    Decompression stops with DecompressionLimitError once the file expands past `max_ratio` times its
    compressed size, or `budget` (shared by all files of one download) is spent."""
    lower = name.lower()
    if lower.endswith((".tgz", ".tar.gz", ".tar")):
        return _untar(path, out_dir, name, max_ratio, budget)
    if lower.endswith(".gz"):
        target = out_dir / name[:-3]
        raw = open(path, "rb")  # noqa: SIM115 -- closed by the LimitedReader
        src = LimitedReader(gzip.GzipFile(fileobj=raw, mode="rb"), name, path.stat().st_size,  # type: ignore[arg-type]
                            max_ratio, budget, RATIO_HINT, also_close=(raw,))
        with src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, CHUNK)
        return [target]
    target = out_dir / name
    shutil.copyfile(path, target)
    return [target]


def download(source: str, output: str | os.PathLike[str], cfg: DownloadConfig,
             session: requests.Session | None = None) -> dict:
    """Fetch every file of `source` (catalog name, URL or path) into `output`, atomically.

    `output` is replaced whole (nothing of an earlier download stays in it). Returns {"output": dir,
    "files": [relative paths]}.
    """
    out = Path(output)
    urls = resolve_source(source)
    inputs = [cfg.cache_dir, *(_local_path(u) for u in urls if not is_url(u))]
    check_output_dir(out, inputs)   # before any network work
    if source in CATALOG:
        cfg = dataclasses.replace(cfg, sha256={**CATALOG[source].sha256, **cfg.sha256})
    fetched = [(u, fetch_cached(u, cfg, session)) for u in urls]
    files: list[str] = []
    budget = Budget(cfg.max_decompressed_bytes or None, how_to_raise=TOTAL_HINT)
    with staged_dir(out, inputs) as stage:
        for url, path in fetched:
            name = file_name(url)
            if cfg.extract:
                placed = extract_into(path, stage, name, cfg.max_expansion_ratio, budget)
            else:
                placed = [stage / name]
                shutil.copyfile(path, placed[0])
            files += [str(p.relative_to(stage)) for p in placed]
    log.info("download: %d file(s) in %s", len(files), out)
    return {"output": str(out), "files": sorted(files)}
