"""Fetching test sets: a catalog set's tarball over HTTP (a local server standing in for statmt.org) through
the download cache, checked against the md5 sacreBLEU's registry gives, its SGML turned into lines by
sacreBLEU's own reader; files given by path; the pipeline's test_sets stage."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pipeline_tasks import test_sets
from pipeline_tasks.pipeline import CorpusConfig, fetch_test_sets_step
from pipeline_tasks.runs import RunLayout
from pipeline_tasks.test_sets import TestSetError, fetch_test_set, parse_test_sets
from tests.conftest import NEWSTEST

SGM = NEWSTEST / "sgm"


def tarball() -> bytes:
    """test.tgz as statmt.org lays it out (test/newstest2017-ende-*.sgm), with the fixture's first segments."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in ("newstest2017-ende-src.en.sgm", "newstest2017-ende-ref.de.sgm"):
            data = (SGM / name).read_bytes()
            info = tarfile.TarInfo(f"test/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A local HTTP server with test.tgz; counts the requests it answers."""
    for var in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    root = tmp_path / "www"
    root.mkdir()
    (root / "test.tgz").write_bytes(tarball())
    hits: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(root), **kw)

        def do_GET(self):
            hits.append(self.path)
            super().do_GET()

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield {"url": f"http://127.0.0.1:{srv.server_address[1]}/test.tgz", "hits": hits,
           "md5": hashlib.md5((root / "test.tgz").read_bytes()).hexdigest()}
    srv.shutdown()


def test_a_catalog_set_is_fetched_checked_and_read_as_sacrebleu_reads_it(served, tmp_path, monkeypatch):
    # the registry's URL and md5 are statmt.org's real test.tgz: stand our server's in for them
    monkeypatch.setattr(test_sets, "catalog_source", lambda name: (served["url"], served["md5"]))
    [spec] = parse_test_sets(["newstest2017"], "en", "de")
    src, ref = fetch_test_set(spec, tmp_path / "out", str(tmp_path / "cache"), "en", "de")
    # sacreBLEU's SGML reading gives the official raw lines (the plain fixture is the same set, line by line)
    for path, plain in ((src, "newstest2017.en-de.en"), (ref, "newstest2017.en-de.de")):
        lines = path.read_text(encoding="utf-8").splitlines()
        assert len(lines) == 225
        assert lines[:200] == (NEWSTEST / plain).read_text(encoding="utf-8").splitlines()
    assert served["hits"] == ["/test.tgz"]
    fetch_test_set(spec, tmp_path / "again", str(tmp_path / "cache"), "en", "de")
    assert served["hits"] == ["/test.tgz"]  # the download cache answered


def test_a_tarball_that_is_not_the_registrys_is_refused(served, tmp_path, monkeypatch):
    monkeypatch.setattr(test_sets, "catalog_source", lambda name: (served["url"], "86a1724c276004aa25455ae2a04cef26"))
    [spec] = parse_test_sets(["newstest2017"], "en", "de")
    with pytest.raises(TestSetError) as e:
        fetch_test_set(spec, tmp_path / "out", str(tmp_path / "cache"), "en", "de")
    assert str(e.value) == (f"test set newstest2017: {served['url']} has md5 {served['md5']}, sacreBLEU's registry "
                            "says 86a1724c276004aa25455ae2a04cef26")
    # a mirror is fetched from its own URL, and held to the same md5
    monkeypatch.setattr(test_sets, "catalog_source", lambda name: ("https://data.statmt.org/x.tgz", served["md5"]))
    [mirrored] = parse_test_sets([{"name": "ns17", "catalog": "newstest2017", "url": served["url"]}], "en", "de")
    src, _ = fetch_test_set(mirrored, tmp_path / "mirror", str(tmp_path / "cache"), "en", "de")
    assert src.read_text(encoding="utf-8").splitlines()[0] == \
        (NEWSTEST / "newstest2017.en-de.en").read_text(encoding="utf-8").splitlines()[0]


def test_the_test_sets_stage_holds_given_files_and_refuses_misaligned_ones(tmp_path):
    layout = RunLayout(str(tmp_path / "root"), "wmt_seq2seq", "manual__1")
    corpus = CorpusConfig("wmt-toy-ende-sample")
    spec = [{"name": "ns17", "source": str(NEWSTEST / "newstest2017.en-de.en"),
             "reference": (NEWSTEST / "newstest2017.en-de.de").as_uri()}]
    result = fetch_test_sets_step(layout, corpus, ["test", *spec])
    assert result == {"test_sets": ["test", "ns17"], "fetched": layout.uri("test_sets")}
    folder = Path(layout.uri("test_sets")) / "ns17"
    assert (folder / "source.txt").read_bytes() == (NEWSTEST / "newstest2017.en-de.en").read_bytes()
    assert (folder / "reference.txt").read_bytes() == (NEWSTEST / "newstest2017.en-de.de").read_bytes()
    assert fetch_test_sets_step(layout, corpus, []) == {"test_sets": ["test"], "fetched": None}
    short = tmp_path / "short.de"
    short.write_text("eine Zeile\n", encoding="utf-8")
    with pytest.raises(TestSetError, match="test set bad: 200 source and 1 reference lines"):
        fetch_test_sets_step(RunLayout(str(tmp_path / "root2"), "wmt_seq2seq", "manual__2"), corpus,
                       [{"name": "bad", "source": str(NEWSTEST / "newstest2017.en-de.en"), "reference": str(short)}])
