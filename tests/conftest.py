"""Shared fixtures: paths to the real text shipped with the project."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "pipeline_tasks" / "sample_data" / "wmt-toy-ende"
NEWSTEST = ROOT / "tests" / "data" / "newstest"


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return SAMPLE


def head_lines(src: Path, dst: Path, n: int) -> Path:
    """Copy the first n lines of a real file (bytes as they are)."""
    with open(src, "rb") as f:
        lines = [next(f) for _ in range(n)]
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(b"".join(lines))
    return dst


@pytest.fixture
def small_corpus(tmp_path: Path) -> dict[str, Path]:
    """300 training and 100 validation pairs of the real sample, as files in tmp_path."""
    out = {}
    for split, n in (("train", 300), ("val", 100)):
        for lang in ("en", "de"):
            out[f"{split}.{lang}"] = head_lines(SAMPLE / f"{split}.{lang}", tmp_path / "corpus" / f"{split}.{lang}", n)
    return out
