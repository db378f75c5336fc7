"""Line reading (UTF-8 replacement, '\\n'-only lines, gzip) and atomic outputs."""

from __future__ import annotations

import gzip
import os

import pytest

from pipeline_tasks.atomic import staged_dir, staged_file
from pipeline_tasks.textio import TextStats, count_lines, iter_lines, iter_pair_blocks, open_binary


def test_iter_lines_counts_replacements(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b"ok\nbad\xc3\n\xef\xbf\xbd genuine\nlast without newline")
    stats = TextStats(str(p))
    assert list(iter_lines(p, stats, block_lines=2)) == ["ok", "bad\ufffd", "\ufffd genuine", "last without newline"]
    assert stats.lines == 4 and stats.replaced_chars == 1 and stats.bad_lines == [2]


def test_gzip_detected_by_magic(tmp_path):
    p = tmp_path / "no-suffix"
    p.write_bytes(gzip.compress(b"a\nb\n"))
    with open_binary(p) as f:
        assert f.read() == b"a\nb\n"


def test_count_lines(tmp_path):
    for data, n in ((b"", 0), (b"a", 1), (b"a\n", 1), (b"a\nb", 2), (b"\n\n", 2)):
        p = tmp_path / "c"
        p.write_bytes(data)
        with open(p, "rb") as f:
            assert count_lines(f) == n


def test_pair_blocks_align(tmp_path):
    (tmp_path / "a").write_bytes(b"".join(b"%d\n" % i for i in range(25)))
    (tmp_path / "b").write_bytes(b"".join(b"x%d\n" % i for i in range(25)))
    blocks = list(iter_pair_blocks(tmp_path / "a", tmp_path / "b", block_lines=10))
    assert [(n, len(s), len(t)) for n, s, t in blocks] == [(1, 10, 10), (11, 10, 10), (21, 5, 5)]


def test_staged_file_publishes_only_on_success(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError), staged_file(target, "w") as f:
        f.write("partial")
        raise RuntimeError("boom")
    assert not target.exists() and os.listdir(tmp_path) == []
    with staged_file(target, "w") as f:
        f.write("whole")
    assert target.read_text() == "whole"
    assert oct(target.stat().st_mode & 0o777) != oct(0o600)


def test_staged_dir_replaces_files_and_cleans_up(tmp_path):
    target = tmp_path / "d"
    with staged_dir(target) as s:
        (s / "a").write_text("1")
    with pytest.raises(ValueError), staged_dir(target) as s:
        (s / "a").write_text("2")
        raise ValueError("fail")
    assert (target / "a").read_text() == "1" and sorted(os.listdir(tmp_path)) == ["d"]
    with staged_dir(target) as s:
        (s / "a").write_text("3")
        (s / "sub").mkdir()
        (s / "sub" / "b").write_text("4")
    assert (target / "a").read_text() == "3" and (target / "sub" / "b").read_text() == "4"
