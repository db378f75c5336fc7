"""Shared fixtures: paths to the real text shipped with the project, and torch's thread count."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "pipeline_tasks" / "sample_data" / "wmt-toy-ende"
NEWSTEST = ROOT / "tests" / "data" / "newstest"


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return SAMPLE


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Tiny models run several times faster on one thread: thread hand-offs cost more than the arithmetic,
    badly so on a shared 2-core machine. Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``;
    torch is imported here, not at the top, so that tests without torch do not pay for it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


@pytest.fixture(scope="session")
def copy_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory that copies its input (tests/models.py), trained once per session."""
    from tests.models import train_copy_model

    return train_copy_model(tmp_path_factory.mktemp("copy-model"))


@pytest.fixture(scope="session")
def wmt_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory on real English–German text with a Moses + BPE tokenizer, trained once per session."""
    from tests.models import train_wmt_model

    return train_wmt_model(tmp_path_factory.mktemp("wmt-model"))
