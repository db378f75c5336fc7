"""The `download` step against a real HTTP server on 127.0.0.1 serving real WMT text (newstest2017 en-de).

The server (stdlib http.server in a thread) answers `Range: bytes=N-` with 206 + Content-Range and has
switchable misbehaviours: drop the connection, or go silent, part-way through the body (first request only),
answer 503 a few times, ignore Range, label a .gz with `Content-Encoding: gzip`, compress on the fly. It records
every request, so the tests can check what the client really sent (Range headers, how many requests).
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import itertools
import json
import os
import re
import socket
import subprocess
import sys
import tarfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pipeline_tasks import download as dl
from pipeline_tasks.download import (
    CATALOG,
    SAMPLE_DIR,
    WMT17_DEEN,
    ChecksumError,
    DownloadConfig,
    DownloadError,
    HTTPClientError,
    RetryPolicy,
    UnsafeArchiveError,
    cache_key,
    download,
    resolve_source,
)
from tests.conftest import NEWSTEST
from tests.conftest import ROOT as REPO

EN = NEWSTEST / "newstest2017.en-de.en"
DE = NEWSTEST / "newstest2017.en-de.de"


# ---------------------------------------------------------------------------------------------- server


@dataclass
class Seen:
    """One request as the server saw it, and what it answered."""

    path: str
    range: str | None
    accept_encoding: str | None
    status: int = 0
    body_bytes: int = 0


@dataclass
class ServerState:
    files: dict[str, bytes] = field(default_factory=dict)        # URL path -> body
    drop_after: dict[str, int] = field(default_factory=dict)     # path -> bytes sent before closing (once)
    stall_after: dict[str, int] = field(default_factory=dict)    # path -> bytes sent before going silent (once)
    release: threading.Event = field(default_factory=threading.Event)   # ends a stall (set at teardown)
    fail_503: dict[str, int] = field(default_factory=dict)       # path -> how many 503 answers remain
    ignore_range: set[str] = field(default_factory=set)          # paths answered 200 even to a Range request
    encoding_gzip: set[str] = field(default_factory=set)         # paths sent with `Content-Encoding: gzip`
    compress_if_accepted: set[str] = field(default_factory=set)  # paths gzipped on the fly if the client accepts
    seen: list[Seen] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)              # handler exceptions (a test fails on any)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def requests_for(self, path: str) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if s.path == path]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:   # keep pytest output clean
        pass

    def _answer(self, seen: Seen, status: int, body: bytes, headers: dict[str, str] | None = None,
                drop_at: int | None = None, stall: bool = False) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))   # always the full length, even when dropping
        sent = body if drop_at is None else body[:drop_at]
        seen.status, seen.body_bytes = status, len(sent)   # recorded before the client can have it all
        self.end_headers()
        self.wfile.write(sent)
        self.wfile.flush()
        if drop_at is not None:
            if stall:   # go silent with the connection open: the client's read timeout has to notice
                self.server.state.release.wait(10)
            self.close_connection = True

    def do_GET(self) -> None:
        st = self.server.state
        path = self.path.split("?", 1)[0]
        seen = Seen(path, self.headers.get("Range"), self.headers.get("Accept-Encoding"))
        with st.lock:
            st.seen.append(seen)
            if st.fail_503.get(path, 0) > 0:
                st.fail_503[path] -= 1
                fail = True
            else:
                fail = False
            drop_at = st.drop_after.pop(path, None)   # first request only
            stall_at = st.stall_after.pop(path, None)
        if fail:
            self._answer(seen, 503, b"busy\n", {"Retry-After": "0"})
            return
        if path not in st.files:
            self._answer(seen, 404, b"not found\n")
            return
        body = st.files[path]
        headers = {"Accept-Ranges": "bytes"}
        if path in st.encoding_gzip:
            headers["Content-Encoding"] = "gzip"
        if path in st.compress_if_accepted and "gzip" in (seen.accept_encoding or ""):
            body = gzip.compress(body, mtime=0)
            headers["Content-Encoding"] = "gzip"
        status = 200
        rng = seen.range
        if rng and path not in st.ignore_range:
            assert rng.startswith("bytes=") and rng.endswith("-"), rng   # the only form the client sends
            start = int(rng[len("bytes="):-1])
            if start >= len(body):
                self._answer(seen, 416, b"", {"Content-Range": f"bytes */{len(body)}"})
                return
            headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
            body, status = body[start:], 206
        stall = stall_at is not None
        if stall:
            drop_at = stall_at
        if drop_at is not None and drop_at >= len(body):
            drop_at, stall = None, False
        self._answer(seen, status, body, headers, drop_at, stall)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    state: ServerState

    def handle_error(self, request: object, client_address: object) -> None:
        err = sys.exc_info()[1]
        if isinstance(err, ConnectionError):   # the client hung up (a timeout, a closed keep-alive connection)
            return
        with self.state.lock:
            self.state.errors.append(repr(err))


@dataclass
class Server:
    state: ServerState
    base: str
    root: Path   # tmp folder holding the served files' sources

    def url(self, path: str) -> str:
        return self.base + path

    def serve(self, path: str, body: bytes) -> str:
        self.state.files[path] = body
        return self.url(path)

    @property
    def seen(self) -> list[Seen]:
        with self.state.lock:
            return list(self.state.seen)

    def requests_for(self, path: str) -> list[Seen]:
        return self.state.requests_for(path)


def _gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def _tgz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        dirs = sorted({name.rsplit("/", 1)[0] for name in members if "/" in name})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A fresh server per test, serving the fixture text as .de, .gz and .tgz (built in tmp_path)."""
    for var in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    root = tmp_path / "served"
    root.mkdir()
    (root / DE.name).write_bytes(DE.read_bytes())
    (root / (DE.name + ".gz")).write_bytes(_gz(DE.read_bytes()))
    (root / "dev.tgz").write_bytes(_tgz({f"dev/{EN.name}": EN.read_bytes(), f"dev/{DE.name}": DE.read_bytes()}))
    state = ServerState(files={f"/files/{p.name}": p.read_bytes() for p in root.iterdir()})
    srv = _Server(("127.0.0.1", 0), Handler)
    srv.state = state
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), name="test-http-server", daemon=True)
    thread.start()
    try:
        yield Server(state, f"http://127.0.0.1:{srv.server_address[1]}", root)
    finally:
        state.release.set()
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)
    assert state.errors == []


class Sleeps(list):
    """RetryPolicy.sleep that records the delays instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def cfg(tmp_path, sleeps) -> DownloadConfig:
    return DownloadConfig(cache_dir=str(tmp_path / "cache"), retry=RetryPolicy(attempts=4, timeout_s=10, sleep=sleeps))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------- plain downloads


def test_gz_is_downloaded_and_gunzipped(server, tmp_path, cfg, sleeps):
    url = server.url(f"/files/{DE.name}.gz")
    out = tmp_path / "out"
    result = download(url, out, cfg)
    assert result == {"output": str(out), "files": [DE.name]}
    assert _tree(out) == {DE.name: DE.read_bytes()}
    assert (out / DE.name).read_text(encoding="utf-8").count("\n") == 200
    assert [(s.path, s.range, s.status) for s in server.seen] == [(f"/files/{DE.name}.gz", None, 200)]
    assert sleeps == []
    cached = Path(cfg.cache_dir) / cache_key(url)
    assert cached.read_bytes() == _gz(DE.read_bytes())   # the cache keeps the file as served
    meta = json.loads(cached.with_name(cached.name + ".json").read_text())
    assert meta == {"url": url, "size": cached.stat().st_size, "sha256": _sha(cached.read_bytes())}


def test_extract_false_keeps_the_gz(server, tmp_path, cfg):
    url = server.url(f"/files/{DE.name}.gz")
    cfg.extract = False
    out = tmp_path / "out"
    assert download(url, out, cfg)["files"] == [DE.name + ".gz"]
    assert _tree(out) == {DE.name + ".gz": _gz(DE.read_bytes())}
    assert gzip.decompress((out / (DE.name + ".gz")).read_bytes()) == DE.read_bytes()


def test_plain_file_is_copied(server, tmp_path, cfg):
    out = tmp_path / "out"
    download(server.url(f"/files/{DE.name}"), out, cfg)
    assert _tree(out) == {DE.name: DE.read_bytes()}


def test_tgz_is_extracted_under_dev(server, tmp_path, cfg):
    out = tmp_path / "out"
    result = download(server.url("/files/dev.tgz"), out, cfg)
    assert result["files"] == [f"dev/{DE.name}", f"dev/{EN.name}"]
    assert _tree(out) == {f"dev/{DE.name}": DE.read_bytes(), f"dev/{EN.name}": EN.read_bytes()}
    assert not list(tmp_path.glob(".out.*"))   # no staging folder left beside the output


def test_rerun_into_existing_output_replaces_the_folder_whole(server, tmp_path, cfg):
    out = tmp_path / "out"
    out.mkdir()
    (out / DE.name).write_text("stale\n")
    (out / "dev").mkdir()
    (out / "dev" / "newstest2013.de").write_text("a file of an earlier download\n")
    download(server.url(f"/files/{DE.name}.gz"), out, cfg)
    assert _tree(out) == {DE.name: DE.read_bytes()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "out", "served"]


def test_output_holding_the_cache_is_refused_before_fetching(server, tmp_path):
    out = tmp_path / "out"
    cfg = DownloadConfig(cache_dir=str(out / "cache"), retry=RetryPolicy(attempts=1))
    with pytest.raises(ValueError, match=rf"{out}.*holds the input {out / 'cache'}"):
        download(server.url(f"/files/{DE.name}.gz"), out, cfg)
    assert server.seen == []


# ------------------------------------------------------------------------------------ resume / Range


def test_dropped_connection_is_resumed_with_range(server, tmp_path, cfg, sleeps):
    path = f"/files/{DE.name}"
    body = DE.read_bytes()
    server.state.drop_after[path] = 10_000
    out = tmp_path / "out"
    download(server.url(path), out, cfg)
    assert (out / DE.name).read_bytes() == body
    first, second = server.requests_for(path)
    assert (first.range, first.status, first.body_bytes) == (None, 200, 10_000)
    assert second.range is not None and second.status == 206
    start = int(second.range.removeprefix("bytes=").removesuffix("-"))
    assert start == 10_000   # resumed from every byte it had received, not from 0
    assert second.body_bytes == len(body) - start
    assert first.body_bytes + second.body_bytes == len(body)
    assert sleeps == [1.0]
    assert not list(Path(cfg.cache_dir).glob("*.part"))


def test_dropped_connection_of_a_gz_is_resumed(server, tmp_path, cfg):
    path = f"/files/{DE.name}.gz"
    server.state.drop_after[path] = 3000
    out = tmp_path / "out"
    download(server.url(path), out, cfg)
    assert _tree(out) == {DE.name: DE.read_bytes()}
    assert [(s.range, s.status) for s in server.requests_for(path)] == [(None, 200), ("bytes=3000-", 206)]


def test_stalled_connection_times_out_and_is_resumed(server, tmp_path, sleeps, monkeypatch):
    # A read timeout loses the chunk being read (up to CHUNK bytes); what was written before is resumed. Small
    # chunks make a 9 kB file behave like a big one.
    monkeypatch.setattr(dl, "CHUNK", 1000)
    path = f"/files/{DE.name}.gz"
    server.state.stall_after[path] = 4000
    cfg = DownloadConfig(cache_dir=str(tmp_path / "cache"), retry=RetryPolicy(attempts=3, timeout_s=1.0, sleep=sleeps))
    out = tmp_path / "out"
    download(server.url(path), out, cfg)
    assert _tree(out) == {DE.name: DE.read_bytes()}
    assert [(s.range, s.status) for s in server.requests_for(path)] == [(None, 200), ("bytes=4000-", 206)]
    assert sleeps == [1.0]


def test_server_ignoring_range_still_gives_the_right_bytes(server, tmp_path, cfg):
    path = f"/files/{DE.name}"
    server.state.drop_after[path] = 10_000
    server.state.ignore_range.add(path)
    out = tmp_path / "out"
    download(server.url(path), out, cfg)
    assert (out / DE.name).read_bytes() == DE.read_bytes()
    first, second = server.requests_for(path)
    assert first.status == 200 and first.body_bytes == 10_000
    assert second.range is not None and second.status == 200   # asked to resume, got the whole file
    assert second.body_bytes == len(DE.read_bytes())


def _seed_part(cfg, url: str, data: bytes) -> None:
    """Leave a partial download in the cache, as an interrupted earlier run would."""
    cache = Path(cfg.cache_dir)
    cache.mkdir()
    (cache / (cache_key(url) + ".part")).write_bytes(data)


def test_stale_part_file_with_garbage_is_overwritten_when_range_is_ignored(server, tmp_path, cfg):
    path = f"/files/{DE.name}"
    url = server.url(path)
    server.state.ignore_range.add(path)
    _seed_part(cfg, url, b"\x00garbage" * 100)
    out = tmp_path / "out"
    download(url, out, cfg)
    assert (out / DE.name).read_bytes() == DE.read_bytes()
    assert [s.range for s in server.seen] == ["bytes=800-"]


def test_complete_part_file_is_finished_by_a_416(server, tmp_path, cfg):
    path = f"/files/{DE.name}"
    url = server.url(path)
    body = DE.read_bytes()
    _seed_part(cfg, url, body)
    out = tmp_path / "out"
    download(url, out, cfg)
    assert (out / DE.name).read_bytes() == body
    assert [(s.range, s.status) for s in server.seen] == [(f"bytes={len(body)}-", 416)]


def test_part_file_longer_than_the_resource_starts_over(server, tmp_path, cfg):
    path = f"/files/{DE.name}"
    url = server.url(path)
    body = DE.read_bytes()
    _seed_part(cfg, url, body + b"extra")
    out = tmp_path / "out"
    download(url, out, cfg)
    assert (out / DE.name).read_bytes() == body
    assert [(s.range, s.status) for s in server.seen] == [(f"bytes={len(body) + 5}-", 416), (None, 200)]


# ------------------------------------------------------------------------------- Content-Encoding


def test_gz_labelled_content_encoding_gzip_is_kept_as_served(server, tmp_path, cfg):
    # Apache's `AddEncoding x-gzip .gz` labels a .gz file this way: its Content-Length and Range offsets count
    # the gzip bytes, so the client must store them undecoded (as wget and curl do).
    path = f"/files/{DE.name}.gz"
    server.state.encoding_gzip.add(path)
    cfg.extract = False
    out = tmp_path / "raw"
    download(server.url(path), out, cfg)
    assert (out / (DE.name + ".gz")).read_bytes() == _gz(DE.read_bytes())
    cfg.extract = True
    out = tmp_path / "out"
    download(server.url(path), out, cfg)
    assert _tree(out) == {DE.name: DE.read_bytes()}
    assert len(server.seen) == 1   # the second run came from the cache


def test_gz_labelled_content_encoding_gzip_resumes_in_gzip_bytes(server, tmp_path, cfg):
    path = f"/files/{DE.name}.gz"
    server.state.encoding_gzip.add(path)
    server.state.drop_after[path] = 3000
    out = tmp_path / "out"
    download(server.url(path), out, cfg)
    assert _tree(out) == {DE.name: DE.read_bytes()}
    assert [(s.range, s.status) for s in server.seen] == [(None, 200), ("bytes=3000-", 206)]


def test_server_side_compression_is_not_requested(server, tmp_path, cfg):
    path = f"/files/{DE.name}"
    server.state.compress_if_accepted.add(path)
    out = tmp_path / "out"
    download(server.url(path), out, cfg)
    assert (out / DE.name).read_bytes() == DE.read_bytes()
    assert [s.accept_encoding for s in server.seen] == ["identity"]


# ------------------------------------------------------------------------------------------ sha256


def test_checksum_mismatch_leaves_nothing_behind(server, tmp_path, cfg):
    url = server.url(f"/files/{DE.name}.gz")
    actual = _sha(_gz(DE.read_bytes()))
    wrong = "0" * 64
    cfg.sha256 = {url: wrong}
    out = tmp_path / "out"
    with pytest.raises(ChecksumError) as e:
        download(url, out, cfg)
    msg = str(e.value)
    assert url in msg and wrong in msg and actual in msg and "deleted" in msg
    assert isinstance(e.value, DownloadError)
    assert list(Path(cfg.cache_dir).iterdir()) == []
    assert not out.exists()
    assert not list(tmp_path.glob(".out.*"))


def test_correct_checksum_succeeds_and_is_recorded(server, tmp_path, cfg):
    url = server.url(f"/files/{DE.name}.gz")
    digest = _sha(_gz(DE.read_bytes()))
    cfg.sha256 = {url: digest}
    out = tmp_path / "out"
    download(url, out, cfg)
    assert _tree(out) == {DE.name: DE.read_bytes()}
    meta = Path(cfg.cache_dir) / (cache_key(url) + ".json")
    assert json.loads(meta.read_text())["sha256"] == digest


def test_checksum_of_a_resumed_download_is_checked(server, tmp_path, cfg):
    path = f"/files/{DE.name}"
    server.state.drop_after[path] = 5000
    cfg.sha256 = {server.url(path): _sha(DE.read_bytes())}
    download(server.url(path), tmp_path / "out", cfg)
    assert (tmp_path / "out" / DE.name).read_bytes() == DE.read_bytes()
    assert len(server.seen) == 2


def test_uppercase_checksum_is_accepted_and_cache_hits(server, tmp_path, cfg):
    url = server.url(f"/files/{DE.name}.gz")
    cfg.sha256 = {url: _sha(_gz(DE.read_bytes())).upper()}
    download(url, tmp_path / "a", cfg)
    download(url, tmp_path / "b", cfg)
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b") == {DE.name: DE.read_bytes()}
    assert len(server.seen) == 1


# ---------------------------------------------------------------------------------- errors, retries


def test_404_fails_at_once_without_retries(server, tmp_path, cfg, sleeps):
    url = server.url("/files/missing.gz")
    out = tmp_path / "out"
    with pytest.raises(HTTPClientError) as e:
        download(url, out, cfg)
    assert url in str(e.value) and "404" in str(e.value)
    assert isinstance(e.value, DownloadError)
    assert len(server.seen) == 1
    assert sleeps == []
    assert not out.exists()


def test_503_twice_then_success(server, tmp_path, cfg, sleeps):
    path = f"/files/{DE.name}.gz"
    server.state.fail_503[path] = 2
    cfg.retry.backoff_s = 0.5
    out = tmp_path / "out"
    download(server.url(path), out, cfg)
    assert _tree(out) == {DE.name: DE.read_bytes()}
    assert [s.status for s in server.seen] == [503, 503, 200]
    assert sleeps == [0.5, 1.0]   # exponential backoff, and no real waiting


def test_retries_exhausted_raise_download_error(server, tmp_path, sleeps):
    path = f"/files/{DE.name}.gz"
    url = server.url(path)
    server.state.fail_503[path] = 100
    cfg = DownloadConfig(cache_dir=str(tmp_path / "cache"),
                         retry=RetryPolicy(attempts=6, backoff_s=1.0, max_backoff_s=8.0, sleep=sleeps))
    out = tmp_path / "out"
    with pytest.raises(DownloadError) as e:
        download(url, out, cfg)
    assert not isinstance(e.value, HTTPClientError)
    msg = str(e.value)
    assert msg.startswith(url) and "giving up after 6 attempts" in msg and "HTTP 503" in msg
    assert len(server.seen) == 6
    assert sleeps == [1.0, 2.0, 4.0, 8.0, 8.0]   # grows, then capped at max_backoff_s
    assert all(b >= a for a, b in itertools.pairwise(sleeps))
    assert not out.exists()


def test_connection_refused_is_retried_then_fails(tmp_path, sleeps):
    with socket.socket() as s:   # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x.gz"
    cfg = DownloadConfig(cache_dir=str(tmp_path / "cache"), retry=RetryPolicy(attempts=3, timeout_s=5, sleep=sleeps))
    with pytest.raises(DownloadError, match="giving up after 3 attempts") as e:
        download(url, tmp_path / "out", cfg)
    assert url in str(e.value)
    assert sleeps == [1.0, 2.0]


# -------------------------------------------------------------------------------------------- cache


def test_second_run_uses_the_cache(server, tmp_path, cfg):
    urls = [server.url(f"/files/{DE.name}.gz"), server.url("/files/dev.tgz")]
    first = {u: download(u, tmp_path / "one", cfg) for u in urls}
    n = len(server.seen)
    assert n == 2
    second = {u: download(u, tmp_path / "two", cfg) for u in urls}
    assert len(server.seen) == n   # zero HTTP requests
    assert [r["files"] for r in first.values()] == [r["files"] for r in second.values()]
    assert _tree(tmp_path / "one") == _tree(tmp_path / "two")
    assert _tree(tmp_path / "two")[f"dev/{EN.name}"] == EN.read_bytes()
    download(urls[0], tmp_path / "one", cfg)   # same output folder again: still nothing fetched
    assert len(server.seen) == n
    assert _tree(tmp_path / "one")[DE.name] == DE.read_bytes()


def test_cache_entry_with_wrong_size_is_fetched_again(server, tmp_path, cfg):
    url = server.url(f"/files/{DE.name}")
    download(url, tmp_path / "one", cfg)
    cached = Path(cfg.cache_dir) / cache_key(url)
    cached.write_bytes(cached.read_bytes()[:100])   # truncated behind the cache's back
    download(url, tmp_path / "two", cfg)
    assert len(server.seen) == 2
    assert (tmp_path / "two" / DE.name).read_bytes() == DE.read_bytes()


def test_cache_is_keyed_by_the_whole_url(server, tmp_path, cfg):
    a = server.serve("/a/data.txt", EN.read_bytes())
    b = server.serve("/b/data.txt", DE.read_bytes())
    assert cache_key(a) != cache_key(b)
    download(a, tmp_path / "a", cfg)
    download(b, tmp_path / "b", cfg)
    assert (tmp_path / "a" / "data.txt").read_bytes() == EN.read_bytes()
    assert (tmp_path / "b" / "data.txt").read_bytes() == DE.read_bytes()


# ------------------------------------------------------------------------------------ unsafe archives


def _evil_tgz(path: Path, kind: str, outside: Path) -> str:
    """A .tgz with one legitimate file and one bad member; returns the bad member's name."""
    with tarfile.open(path, "w:gz") as tar:
        good = tarfile.TarInfo(f"dev/{EN.name}")
        data = EN.read_bytes()
        good.size = len(data)
        tar.addfile(good, io.BytesIO(data))
        payload = b"owned\n"
        if kind == "absolute":
            bad = tarfile.TarInfo(str(outside / "abs-evil.txt"))   # TarInfo keeps the leading "/"
        elif kind == "dotdot":
            bad = tarfile.TarInfo("../evil")
        elif kind == "nested-dotdot":
            bad = tarfile.TarInfo("dev/../../evil")
        elif kind == "symlink":
            bad = tarfile.TarInfo("dev/link")
            bad.type, bad.linkname = tarfile.SYMTYPE, str(outside / "target")
        elif kind == "hardlink":
            bad = tarfile.TarInfo("dev/hard")
            bad.type, bad.linkname = tarfile.LNKTYPE, "/etc/passwd"
        elif kind == "fifo":
            bad = tarfile.TarInfo("dev/fifo")
            bad.type = tarfile.FIFOTYPE
        else:  # pragma: no cover
            raise AssertionError(kind)
        if bad.isfile():
            bad.size = len(payload)
            tar.addfile(bad, io.BytesIO(payload))
        else:
            tar.addfile(bad)
    with tarfile.open(path) as tar:   # the archive really holds the bad member as built
        names = tar.getnames()
    assert names[-1] == bad.name
    return bad.name


@pytest.mark.parametrize("kind,why", [
    ("absolute", "absolute path"),
    ("dotdot", "outside the target folder"),
    ("nested-dotdot", "outside the target folder"),
    ("symlink", "is a link"),
    ("hardlink", "is a link"),
    ("fifo", "not a regular file or folder"),
])
def test_unsafe_archive_members_are_refused(server, tmp_path, cfg, kind, why):
    work = tmp_path / "work"
    work.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    member = _evil_tgz(server.root / "evil.tgz", kind, outside)
    url = server.serve("/files/evil.tgz", (server.root / "evil.tgz").read_bytes())
    out = work / "out"
    with pytest.raises(UnsafeArchiveError) as e:
        download(url, out, cfg)
    msg = str(e.value)
    assert repr(member) in msg and "evil.tgz" in msg and why in msg
    assert not out.exists()
    assert list(work.iterdir()) == []           # no staging folder, nothing beside it ("../evil" would land here)
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "evil").exists()


def test_sparse_archive_member_is_refused(server, tmp_path, cfg):
    """A sparse member's holes would be written out without passing through the decompression limits."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("dev/holes")
        info.type = tarfile.GNUTYPE_SPARSE
        tar.addfile(info)
    url = server.serve("/files/sparse.tgz", buf.getvalue())
    with pytest.raises(UnsafeArchiveError, match=r"sparse\.tgz: member 'dev/holes' is a sparse file"):
        download(url, tmp_path / "out", cfg)
    assert not (tmp_path / "out").exists()


def test_unsafe_local_archive_is_refused_too(tmp_path, cfg):
    outside = tmp_path / "outside"
    outside.mkdir()
    archive = tmp_path / "evil.tar.gz"
    member = _evil_tgz(archive, "dotdot", outside)
    with pytest.raises(UnsafeArchiveError, match=r"evil\.tar\.gz: member '\.\./evil'"):
        download(str(archive), tmp_path / "work" / "out", cfg)
    assert member == "../evil"
    assert list((tmp_path / "work").iterdir()) == []


# ------------------------------------------------------------------------------- local and catalog


def test_local_path_source(tmp_path, cfg):
    out = tmp_path / "out"
    assert download(str(DE), out, cfg) == {"output": str(out), "files": [DE.name]}
    assert _tree(out) == {DE.name: DE.read_bytes()}
    assert not Path(cfg.cache_dir).exists()   # local files are not copied into the cache


def test_file_url_source_with_gz_and_tgz(tmp_path, cfg):
    gz = tmp_path / "src dir" / (DE.name + ".gz")   # a space: the file:// URL is percent-encoded
    gz.parent.mkdir()
    gz.write_bytes(_gz(DE.read_bytes()))
    tgz = tmp_path / "src dir" / "dev.tgz"
    tgz.write_bytes(_tgz({f"dev/{EN.name}": EN.read_bytes()}))
    assert "%20" in gz.as_uri()
    download(gz.as_uri(), tmp_path / "gz", cfg)
    download(tgz.as_uri(), tmp_path / "tgz", cfg)
    assert _tree(tmp_path / "gz") == {DE.name: DE.read_bytes()}
    assert _tree(tmp_path / "tgz") == {f"dev/{EN.name}": EN.read_bytes()}


def test_local_checksum_mismatch_keeps_the_users_file(tmp_path, cfg):
    src = tmp_path / DE.name
    src.write_bytes(DE.read_bytes())
    cfg.sha256 = {str(src): "f" * 64}
    with pytest.raises(ChecksumError) as e:
        download(str(src), tmp_path / "out", cfg)
    assert str(src) in str(e.value) and "f" * 64 in str(e.value) and _sha(DE.read_bytes()) in str(e.value)
    assert src.read_bytes() == DE.read_bytes()
    assert not (tmp_path / "out").exists()
    cfg.sha256 = {str(src): _sha(DE.read_bytes())}
    download(str(src), tmp_path / "out", cfg)
    assert (tmp_path / "out" / DE.name).read_bytes() == DE.read_bytes()


def test_missing_local_file(tmp_path, cfg):
    missing = tmp_path / "nope.gz"
    with pytest.raises(FileNotFoundError, match=re.escape(f"source file not found: {missing}")):
        download(str(missing), tmp_path / "out", cfg)
    with pytest.raises(FileNotFoundError, match=re.escape(missing.as_uri())):
        download(missing.as_uri(), tmp_path / "out", cfg)
    assert not (tmp_path / "out").exists()


def test_catalog_toy_sample_downloads_the_six_bundled_files(tmp_path, cfg):
    out = tmp_path / "raw"
    result = download("wmt-toy-ende-sample", out, cfg)
    names = sorted(f"{split}.{lang}" for split in ("train", "val", "test") for lang in ("en", "de"))
    assert result == {"output": str(out), "files": names}
    assert _tree(out) == {n: (SAMPLE_DIR / n).read_bytes() for n in names}
    for split in ("train", "val", "test"):   # still line-aligned pairs
        en = (out / f"{split}.en").read_bytes().count(b"\n")
        assert en > 0 and en == (out / f"{split}.de").read_bytes().count(b"\n")


def test_catalog_wmt17_lists_the_three_statmt_urls():
    entry = CATALOG["wmt17-de-en-preprocessed"]
    expected = [
        "http://data.statmt.org/wmt17/translation-task/preprocessed/de-en/corpus.tc.de.gz",
        "http://data.statmt.org/wmt17/translation-task/preprocessed/de-en/corpus.tc.en.gz",
        "http://data.statmt.org/wmt17/translation-task/preprocessed/de-en/dev.tgz",
    ]
    assert list(entry.urls) == expected
    assert resolve_source("wmt17-de-en-preprocessed") == expected
    assert all(u.startswith(WMT17_DEEN) for u in expected)
    assert len({cache_key(u) for u in expected}) == 3
    assert resolve_source("http://example.org/x.gz") == ["http://example.org/x.gz"]


# ---------------------------------------------------------------------------------------------- CLI


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "PYTHONPATH": str(REPO)}
    for var in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(var, None)
    return subprocess.run([sys.executable, "-m", "pipeline_tasks", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


def test_cli_download_prints_json(server, tmp_path):
    url = server.url("/files/dev.tgz")
    out, cache = tmp_path / "out", tmp_path / "cache"
    p = _cli("download", url, "--output", str(out), "--cache-dir", str(cache))
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {"output": str(out), "files": [f"dev/{DE.name}", f"dev/{EN.name}"]}
    assert _tree(out) == {f"dev/{DE.name}": DE.read_bytes(), f"dev/{EN.name}": EN.read_bytes()}
    assert len(server.seen) == 1
    assert (cache / (cache_key(url) + ".json")).is_file()


def test_cli_404_is_a_one_line_error(server, tmp_path):
    url = server.url("/files/missing.tgz")
    out = tmp_path / "out"
    p = _cli("download", url, "--output", str(out), "--cache-dir", str(tmp_path / "cache"))
    assert p.returncode == 1
    assert p.stdout == ""
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and url in errors[0] and "404" in errors[0]
    assert p.stderr.splitlines()[-1] == errors[0]
    assert "Traceback" not in p.stderr
    assert len(server.seen) == 1
    assert not out.exists()


def test_cli_list_and_sha256_option(server, tmp_path):
    p = _cli("download", "--list")
    assert p.returncode == 0, p.stderr
    assert set(json.loads(p.stdout)) == {"wmt17-de-en-preprocessed", "wmt-toy-ende-sample", "europarl-v7-de-en",
                                         "news-commentary-v12-de-en", "commoncrawl-de-en", "rapid2016-de-en"}
    url = server.url(f"/files/{DE.name}.gz")
    p = _cli("download", url, "--output", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"),
             "--sha256", "0" * 64, "--retries", "0")
    assert p.returncode == 1
    assert p.stderr.splitlines()[-1].startswith(f"error: {url}: sha256 mismatch")
    assert not (tmp_path / "out").exists()


def test_file_names_of_sources():
    from pipeline_tasks.download import cache_key, file_name

    assert file_name("http://h/a/corpus.tc.de.gz?x=1") == "corpus.tc.de.gz"
    assert file_name("https://h/listing/") == "listing"
    assert file_name("https://h/") == "index"
    assert file_name("file:///tmp/my%20file.txt") == "my file.txt"
    assert file_name("/tmp/x/train.en") == "train.en"
    assert cache_key("http://h/a/x.gz") != cache_key("http://other/a/x.gz")


# ----------------------------------------------------------------------------- decompression bombs

MiB = 1 << 20


@pytest.fixture(scope="module")
def bomb_10m() -> bytes:
    """10 MiB of zeros gzipped: about 10 kB, an expansion of ~1000x (text manages 10-20x)."""
    return gzip.compress(bytes(10 * MiB), mtime=0)


@pytest.fixture(scope="module")
def bomb_64m() -> bytes:
    return gzip.compress(bytes(64 * MiB), mtime=0)


def test_gunzip_bomb_is_refused_at_the_ratio_limit(server, tmp_path, cfg, bomb_10m):
    url = server.serve("/files/zeros.txt.gz", bomb_10m)
    cfg.max_expansion_ratio = 50
    out = tmp_path / "work" / "out"
    with pytest.raises(dl.DecompressionLimitError) as e:
        download(url, out, cfg)
    msg = str(e.value)
    assert "zeros.txt.gz" in msg and "50" in msg and "--max-expansion-ratio" in msg
    assert e.value.written <= max(50 * len(bomb_10m), MiB) + dl.CHUNK   # stopped there, not at 10 MiB
    assert not out.exists() and list((tmp_path / "work").iterdir()) == []   # nothing half-written


def test_the_default_ratio_stops_a_bomb_long_before_it_is_inflated(server, tmp_path, cfg, bomb_64m):
    assert dl.DownloadConfig(cache_dir="x").max_expansion_ratio == 200
    assert dl.DownloadConfig(cache_dir="x").max_decompressed_bytes == 64 << 30
    url = server.serve("/files/corpus.tc.de.gz", bomb_64m)
    with pytest.raises(dl.DecompressionLimitError, match=r"corpus\.tc\.de\.gz.*200") as e:
        download(url, tmp_path / "out", cfg)
    assert e.value.written <= 200 * len(bomb_64m) + dl.CHUNK < 16 * MiB   # 64 MiB were never written
    assert not (tmp_path / "out").exists()


def test_the_ratio_can_be_raised_for_a_genuine_file(server, tmp_path, cfg, bomb_10m):
    url = server.serve("/files/zeros.txt.gz", bomb_10m)
    cfg.max_expansion_ratio = 2000
    download(url, tmp_path / "out", cfg)
    assert (tmp_path / "out" / "zeros.txt").stat().st_size == 10 * MiB


def test_total_decompressed_size_limit_names_the_file_and_the_setting(server, tmp_path, cfg):
    cfg.max_decompressed_bytes = 10_000   # the real newstest file is 21 kB
    url = server.url(f"/files/{DE.name}.gz")
    with pytest.raises(dl.DecompressionLimitError) as e:
        download(url, tmp_path / "out", cfg)
    msg = str(e.value)
    assert f"{DE.name}.gz" in msg and "10000" in msg and "--max-decompressed-size" in msg
    assert not (tmp_path / "out").exists()


def test_uncompressed_tar_is_extracted_without_ratio_checks(server, tmp_path, cfg):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for p in (EN, DE):
            info = tarfile.TarInfo(f"dev/{p.name}")
            info.size = p.stat().st_size
            tar.addfile(info, io.BytesIO(p.read_bytes()))
    cfg.max_expansion_ratio = 1   # a plain tar expands nothing
    download(server.serve("/files/dev.tar", buf.getvalue()), tmp_path / "out", cfg)
    assert _tree(tmp_path / "out") == {f"dev/{DE.name}": DE.read_bytes(), f"dev/{EN.name}": EN.read_bytes()}


def test_tgz_member_bigger_than_the_limit_is_refused_from_its_header(server, tmp_path, cfg):
    url = server.serve("/files/dev.tgz", _tgz({f"dev/{EN.name}": EN.read_bytes(), "dev/zeros": bytes(20 * MiB)}))
    cfg.max_expansion_ratio = 50
    with pytest.raises(dl.DecompressionLimitError, match=r"dev\.tgz: member 'dev/zeros'.*20971520 bytes") as e:
        download(url, tmp_path / "out", cfg)
    assert e.value.written < 2 * MiB
    assert list(tmp_path.glob("*out*")) == []


def test_tgz_of_many_small_members_is_stopped_by_the_stream_limit(server, tmp_path, cfg):
    members = {f"dev/part{i:02d}": bytes(MiB) for i in range(40)}   # each alone passes, together 40 MiB
    url = server.serve("/files/parts.tgz", _tgz(members))
    cfg.max_expansion_ratio = 50
    with pytest.raises(dl.DecompressionLimitError, match=r"parts\.tgz.*50") as e:
        download(url, tmp_path / "out", cfg)
    assert e.value.written <= max(50 * len(server.state.files["/files/parts.tgz"]), MiB) + dl.CHUNK + MiB
    assert list(tmp_path.glob("*out*")) == []


def test_tgz_total_limit_is_checked_against_member_headers(server, tmp_path, cfg):
    url = server.serve("/files/dev.tgz", _tgz({f"dev/{EN.name}": EN.read_bytes(), "dev/big": bytes(5 * MiB)}))
    cfg.max_expansion_ratio = 0   # no ratio limit: the total one must still hold
    cfg.max_decompressed_bytes = 100_000
    with pytest.raises(dl.DecompressionLimitError,
                       match=r"dev\.tgz: member 'dev/big' \(5242880 bytes\) passes the limit of 100000") as e:
        download(url, tmp_path / "out", cfg)
    assert e.value.written < 100_000
    assert not (tmp_path / "out").exists()


def test_tgz_total_limit_counts_every_member(server, tmp_path, cfg):
    cfg.max_decompressed_bytes = 30_000   # dev.tgz holds 19.2 kB + 21.3 kB
    with pytest.raises(dl.DecompressionLimitError, match=r"dev\.tgz: .*30000 decompressed bytes.*--max-decompressed"):
        download(server.url("/files/dev.tgz"), tmp_path / "out", cfg)
    assert not (tmp_path / "out").exists()


def test_content_encoding_gzip_bomb_is_stored_as_served_and_readers_refuse_it(server, tmp_path, cfg, bomb_10m):
    """requests would decode `Content-Encoding: gzip`; fetch_url reads the raw stream undecoded, so nothing is
    inflated here. The file stays gzip bytes; the text readers (subset etc.) decompress it, with a ratio limit."""
    from pipeline_tasks.subset import SubsetConfig, subset
    from pipeline_tasks.textio import RATIO_ENV

    url = server.serve("/files/train.en", bomb_10m)
    server.serve("/files/train.de", _gz(DE.read_bytes()))
    server.state.encoding_gzip.add("/files/train.en")
    download(url, tmp_path / "en", cfg)
    assert (tmp_path / "en" / "train.en").read_bytes() == bomb_10m
    download(server.url("/files/train.de"), tmp_path / "de", cfg)
    with pytest.raises(dl.DecompressionLimitError) as e:
        subset(str(tmp_path / "en" / "train.en"), str(tmp_path / "de" / "train.de"), tmp_path / "s.en",
               tmp_path / "s.de", SubsetConfig())
    assert str(tmp_path / "en" / "train.en") in str(e.value) and RATIO_ENV in str(e.value)
    assert e.value.written <= max(200 * len(bomb_10m), MiB) + dl.CHUNK
    assert not (tmp_path / "s.en").exists() and not (tmp_path / "s.de").exists()


def test_truncated_gz_is_a_clear_error_naming_the_file(server, tmp_path, cfg):
    url = server.serve("/files/cut.de.gz", _gz(DE.read_bytes())[:-100])
    with pytest.raises(ValueError, match=r"cut\.de\.gz: .*(truncated|corrupt)"):
        download(url, tmp_path / "out", cfg)
    assert not (tmp_path / "out").exists()


def test_cli_bomb_is_a_one_line_error_and_the_flag_raises_the_limit(server, tmp_path, bomb_10m):
    url = server.serve("/files/zeros.txt.gz", bomb_10m)
    cache = str(tmp_path / "cache")
    p = _cli("download", url, "--output", str(tmp_path / "out"), "--cache-dir", cache)
    assert p.returncode == 1
    last = p.stderr.splitlines()[-1]
    assert last.startswith("error: ") and "zeros.txt.gz" in last and "--max-expansion-ratio" in last
    assert "Traceback" not in p.stderr and not (tmp_path / "out").exists()
    p = _cli("download", url, "--output", str(tmp_path / "out"), "--cache-dir", cache,
             "--max-expansion-ratio", "5000", "--max-decompressed-size", "11MiB")
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "out" / "zeros.txt").stat().st_size == 10 * MiB
    p = _cli("download", url, "--output", str(tmp_path / "out2"), "--cache-dir", cache,
             "--max-expansion-ratio", "5000", "--max-decompressed-size", "1MiB")
    assert p.returncode == 1 and "1048576" in p.stderr.splitlines()[-1]
