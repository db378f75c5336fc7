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


# --- staged_dir: a re-run replaces the folder whole; staging of dead runs is removed ------------------------

def _siblings(folder) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir() if p != folder)


def test_staged_dir_rerun_leaves_nothing_of_the_old_output(tmp_path):
    """A stale file of an earlier output (a .rec training would also load) must not survive a re-run."""
    target = tmp_path / "out"
    with staged_dir(target) as s:
        (s / "train").mkdir()
        (s / "train" / "old.rec").write_bytes(b"old records")
        (s / "report.json").write_text("{}")
    with staged_dir(target) as s:
        (s / "train").mkdir()
        (s / "train" / "train.rec").write_bytes(b"new records")
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*")) == ["train", "train/train.rec"]
    assert (target / "train" / "train.rec").read_bytes() == b"new records"
    assert _siblings(target) == []   # neither the staging folder nor the old output left beside it


def test_staged_dir_rerun_without_an_atomic_exchange_still_replaces_whole(tmp_path, monkeypatch):
    import errno

    from pipeline_tasks import atomic

    def unsupported(a, b):
        raise OSError(errno.EINVAL, "renameat2 not supported here")

    monkeypatch.setattr(atomic, "_exchange", unsupported)
    target = tmp_path / "out"
    with staged_dir(target) as s:
        (s / "stale.txt").write_text("old")
    with staged_dir(target) as s:
        (s / "a").write_text("new")
    assert sorted(os.listdir(target)) == ["a"] and _siblings(target) == []


def test_staged_dir_refuses_a_file_destination_before_any_work(tmp_path):
    target = tmp_path / "out"
    target.write_text("a file the user keeps")
    ran = []
    with pytest.raises(NotADirectoryError, match=rf"{target}.*is a file"), staged_dir(target):
        ran.append(1)
    assert ran == [] and target.read_text() == "a file the user keeps" and _siblings(target) == []


def test_staged_dir_refuses_a_parent_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError, match=rf"{tmp_path / 'f'}.*not a folder"), \
            staged_dir(tmp_path / "f" / "out"):
        pass


def test_staged_dir_refuses_a_folder_holding_an_input(tmp_path):
    """Replacing it would delete the input it was made from."""
    target = tmp_path / "data"
    target.mkdir()
    (target / "train.en").write_text("Resumption of the session\n")
    with pytest.raises(ValueError, match=rf"{target}.*holds the input {target / 'train.en'}"), \
            staged_dir(target, inputs=[target / "train.en"]):
        pass
    assert (target / "train.en").read_text() == "Resumption of the session\n"


def test_staged_dir_refuses_the_current_folder_and_its_ancestors(tmp_path, monkeypatch):
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    monkeypatch.chdir(work / "sub")
    for target in (work / "sub", work, "."):
        with pytest.raises(ValueError, match="current folder"), staged_dir(target):
            pass
    assert (work / "sub").is_dir()


def _dead_pid() -> int:
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_staging_of_a_dead_run_is_removed_and_a_live_ones_kept(tmp_path, caplog):
    import subprocess
    import sys

    from pipeline_tasks import atomic

    target = tmp_path / "recordio"
    dead = tmp_path / f".recordio.{atomic.owner_tag(_dead_pid())}.abcd1234.staging"
    (dead / ".scratch").mkdir(parents=True)
    (dead / ".scratch" / "train.src.ids").write_bytes(b"\0" * 1000)
    live_proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".recordio.{atomic.owner_tag(live_proc.pid)}.efgh5678.staging"
        mine = tmp_path / f".recordio.{atomic.owner_tag(os.getpid())}.ijkl9012.staging"
        unknown = tmp_path / ".recordio.mnop3456.staging"   # written before staging folders named their owner
        other_step = tmp_path / f".tok.{atomic.owner_tag(_dead_pid())}.qrst7890.staging"
        for d in (live, mine, unknown, other_step):
            d.mkdir()
        with caplog.at_level("WARNING"), staged_dir(target) as s:
            (s / "a").write_text("1")
        assert not dead.exists()
        assert live.is_dir() and mine.is_dir() and unknown.is_dir()
        assert other_step.is_dir()   # only the staging of this destination is looked at
        assert any(str(unknown) in r.getMessage() and "no owner" in r.getMessage() for r in caplog.records)
    finally:
        live_proc.kill()
        live_proc.wait()


# --- gzip input: streamed, with a limit on how far it may expand ---------------------------------------------

def test_a_gzip_bomb_read_as_text_stops_at_the_ratio_limit(tmp_path, monkeypatch):
    from pipeline_tasks.textio import RATIO_ENV, DecompressionLimitError

    p = tmp_path / "train.en.gz"
    p.write_bytes(gzip.compress(b"Resumption of the session\n" + b"0" * (20 << 20), mtime=0))   # one 20 MB "line"
    with pytest.raises(DecompressionLimitError) as e:
        list(iter_lines(p))
    msg = str(e.value)
    assert str(p) in msg and "200" in msg and RATIO_ENV in msg
    assert e.value.written <= max(200 * p.stat().st_size, 1 << 20) + (1 << 20)   # the line was not read whole
    monkeypatch.setenv(RATIO_ENV, "100000")
    lines = list(iter_lines(p))
    assert lines[0] == "Resumption of the session" and len(lines[1]) == 20 << 20


def test_real_gzip_text_is_well_within_the_limit(tmp_path, sample_dir):
    p = tmp_path / "train.de.gz"
    p.write_bytes(gzip.compress((sample_dir / "train.de").read_bytes()))
    assert list(iter_lines(p)) == (sample_dir / "train.de").read_text("utf-8").splitlines()


def test_truncated_gzip_input_names_the_file(tmp_path, sample_dir):
    p = tmp_path / "val.en.gz"
    p.write_bytes(gzip.compress((sample_dir / "val.en").read_bytes())[:-50])
    with pytest.raises(ValueError, match=rf"{p}: .*truncated"):
        list(iter_lines(p))


# --- a UTF-8 byte-order mark at the start of a file is not text -------------------------------------------

BOM = "\ufeff".encode()


def test_bom_at_the_start_is_stripped_and_counted_also_gzipped(tmp_path, sample_dir, caplog):
    lines = (sample_dir / "val.en").read_text("utf-8").splitlines()[:3]
    body = ("\n".join(lines) + "\n").encode()
    for name, data in (("plain.en", BOM + body), ("gz.en.gz", gzip.compress(BOM + body))):
        p = tmp_path / name
        p.write_bytes(data)
        stats = TextStats(str(p))
        with caplog.at_level("INFO"):
            got = list(iter_lines(p, stats))
            stats.warn_if_replaced()
        assert got == lines and got[0].split()[0] == lines[0].split()[0] != "\ufeff" + lines[0].split()[0]
        assert stats.bom_stripped and stats.as_dict()["bom_stripped"] is True and stats.lines == 3
        assert any(str(p) in r.getMessage() and "byte-order mark" in r.getMessage() for r in caplog.records)


def test_only_a_leading_bom_is_stripped(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b"a b\n" + BOM + b"c\n")
    stats = TextStats(str(p))
    assert list(iter_lines(p, stats)) == ["a b", "\ufeffc"] and not stats.bom_stripped


def test_utf16_input_is_refused_naming_the_file(tmp_path):
    p = tmp_path / "train.de"
    p.write_bytes("Wiederaufnahme der Sitzungsperiode\n".encode("utf-16"))
    with pytest.raises(ValueError, match=rf"{p}: .*UTF-16.*UTF-8"):
        list(iter_lines(p))


def test_pair_blocks_strip_each_sides_bom(tmp_path):
    (tmp_path / "a").write_bytes(BOM + b"Resumption of the session\n")
    (tmp_path / "b").write_bytes(BOM + b"Wiederaufnahme der Sitzungsperiode\n")
    sa, sb = TextStats("a"), TextStats("b")
    [(_, raw_a, raw_b)] = list(iter_pair_blocks(tmp_path / "a", tmp_path / "b", source_stats=sa, target_stats=sb))
    assert raw_a == [b"Resumption of the session\n"] and raw_b == [b"Wiederaufnahme der Sitzungsperiode\n"]
    assert sa.bom_stripped and sb.bom_stripped
