"""The evaluation report's pieces: PNGs that are real images, an HTML page that escapes what it shows."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline_tasks.report import attention_png, learning_curves_png, write_report


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", path
    return struct.unpack(">II", data[16:24])


def history(n: int = 4, bleu: bool = True) -> list[dict]:
    out = []
    for k in range(1, n + 1):
        metrics = {"train:loss": 5.0 / k, "train:perplexity": 150.0 / k, "validation:perplexity": 120.0 / k,
                   "validation:accuracy": 0.1 * k}
        if bleu:
            metrics["validation:bleu"] = 3.0 * k
        out.append({"checkpoint": k, "updates": 100 * k, "epoch": k, "learning_rate": 0.001, "metrics": metrics,
                    "improved": k < n})
    return out


def test_learning_curves_png_with_and_without_bleu(tmp_path):
    with_bleu = png_size(learning_curves_png(history(), tmp_path / "a.png", best_checkpoint=3))
    without = png_size(learning_curves_png(history(bleu=False), tmp_path / "b.png"))
    assert with_bleu[0] > 0 and with_bleu[1] > 0 and without[0] > 0
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "b.png").read_bytes()
    with pytest.raises(ValueError, match="no training history"):
        learning_curves_png([], tmp_path / "c.png")


def test_attention_png_checks_the_shape(tmp_path):
    w, _ = png_size(attention_png(["a", "b", "c"], ["x", "y"], [[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], tmp_path / "a.png"))
    w2, _ = png_size(attention_png(["a"] * 12, ["x"] * 2, [[1 / 12] * 12] * 2, tmp_path / "b.png"))
    assert w2 > w  # more source tokens, wider picture
    with pytest.raises(ValueError, match="2x3 but there are 2 target and 2 source tokens"):
        attention_png(["a", "b"], ["x", "y"], [[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], tmp_path / "c.png")


def test_write_report_escapes_text_and_links_its_images(tmp_path):
    metrics = {"model": {"uri": "s3://bucket/<model>.tar.gz"},
               "bleu": {"score": 12.5, "signature": "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"},
               "perplexity": {"test:perplexity": 42.0}}
    examples = [{"line": 3, "source": "<script>alert(1)</script> & co", "reference": "Ref \"quoted\"",
                 "hypothesis": "Hyp", "source_tokens": ["<script>", "&"], "target_tokens": ["Hyp"],
                 "matrix": [[0.4, 0.6]]},
                {"line": 4, "source": "empty output", "reference": "r", "hypothesis": "", "source_tokens": ["e"],
                 "target_tokens": [], "matrix": []}]
    page = write_report(tmp_path, metrics, history(), examples, best_checkpoint=2)
    assert page == tmp_path / "report" / "index.html"
    text = page.read_text(encoding="utf-8")
    assert "<script>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in text
    assert "s3://bucket/&lt;model&gt;.tar.gz" in text
    assert "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0" in text
    assert '<img src="learning_curves.png"' in text and '<img src="attention_1.png"' in text
    assert sorted(p.name for p in page.parent.glob("*.png")) == ["attention_1.png", "learning_curves.png"]
    for png in page.parent.glob("*.png"):
        png_size(png)


def test_write_report_without_history(tmp_path):
    page = write_report(tmp_path, {}, [], [])
    assert "no training history" in page.read_text(encoding="utf-8")
    assert list(page.parent.glob("*.png")) == []


def test_importing_pipeline_tasks_does_not_import_matplotlib_or_torch():
    code = ("import sys, pipeline_tasks.report, pipeline_tasks.evaluate, pipeline_tasks.cli; "
            "print(sorted(m for m in ('matplotlib', 'torch', 'sacrebleu') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]"
