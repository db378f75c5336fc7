"""The evaluation report: what people look at instead of reading metrics.json.

`report/index.html` beside the evaluation's files: the scores with the sacreBLEU signature, the
learning curves from the training history (model directory's metrics.json), and attention heatmaps of
a few test sentences with their source, reference and hypothesis. Plain HTML with relative <img> links,
so the folder can be copied to S3 or opened from disk as it is.

matplotlib is imported inside the functions (importing pipeline_tasks stays light) and draws with the
Agg canvas on a bare Figure, not pyplot: no display needed, no global pyplot state in a worker process.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPORT_DIR = "report"
INDEX_FILE = "index.html"
CURVES_FILE = "learning_curves.png"

# (panel title, [(metric name in history, label)], log scale)
_PANELS: list[tuple[str, list[tuple[str, str]], bool]] = [
    ("training loss", [("train:loss", "train")], False),
    ("perplexity", [("train:perplexity", "train"), ("validation:perplexity", "validation")], True),
    ("validation BLEU (tokenized)", [("validation:bleu", "validation")], False),
    ("validation accuracy", [("validation:accuracy", "validation")], False),
]


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _value(entry: Mapping[str, Any], name: str) -> float:
    value = (entry.get("metrics") or {}).get(name)
    return float(value) if isinstance(value, int | float) else math.nan


def _best_entry(history: Sequence[Mapping[str, Any]], best_checkpoint: int | None) -> Mapping[str, Any] | None:
    if best_checkpoint is not None:
        found = [h for h in history if h.get("checkpoint") == best_checkpoint]
        if found:
            return found[0]
    improved = [h for h in history if h.get("improved")]
    return improved[-1] if improved else None


def learning_curves_png(history: Sequence[Mapping[str, Any]], path: str | os.PathLike[str],
                        best_checkpoint: int | None = None) -> Path:
    """One panel per quantity over updates (loss, perplexity on a log scale, validation BLEU when training
    computed it, accuracy), the best checkpoint marked, so over- or under-training shows at a glance."""
    if not history:
        raise ValueError("no training history: nothing to plot")
    updates = [float(h.get("updates", h.get("checkpoint", i + 1))) for i, h in enumerate(history)]
    panels = [p for p in _PANELS if any(not math.isnan(_value(h, name)) for h in history for name, _ in p[1])]
    best = _best_entry(history, best_checkpoint)
    cols = 2 if len(panels) > 1 else 1
    rows = math.ceil(len(panels) / cols)
    fig = _figure(5.0 * cols, 3.2 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (title, series, log_scale) in zip(axes, panels):
        for name, label in series:
            ys = [_value(h, name) for h in history]
            if all(math.isnan(y) for y in ys):
                continue
            ax.plot(updates, ys, marker="o", markersize=3, label=label)
            if best is not None and not math.isnan(_value(best, name)):
                ax.plot([float(best.get("updates", 0))], [_value(best, name)], marker="*", markersize=12,
                        color="crimson", linestyle="none")
        if best is not None:
            ax.axvline(float(best.get("updates", 0)), color="crimson", linestyle="--", linewidth=1,
                       label=f"best (checkpoint {best.get('checkpoint')})")
        if log_scale:
            from matplotlib.ticker import FuncFormatter

            ax.set_yscale("log")
            plain = FuncFormatter(lambda y, _: f"{y:g}")  # 3, 10, 300 rather than 3x10^0
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(plain)
        ax.set_title(title)
        ax.set_xlabel("updates")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    out = Path(path)
    fig.savefig(out, format="png")
    return out


def attention_png(source_tokens: Sequence[str], target_tokens: Sequence[str], matrix: Sequence[Sequence[float]],
                  path: str | os.PathLike[str]) -> Path:
    """Heatmap of one sentence's attention: rows = target tokens, columns = source tokens (docs/ARCHITECTURE.md §4)."""
    rows, cols = len(matrix), len(matrix[0]) if matrix else 0
    if rows == 0 or cols == 0:
        raise ValueError("empty attention matrix")
    if rows != len(target_tokens) or cols != len(source_tokens) or any(len(r) != cols for r in matrix):
        raise ValueError(f"attention matrix is {rows}x{cols} but there are {len(target_tokens)} target and "
                         f"{len(source_tokens)} source tokens")
    fig = _figure(min(2.0 + 0.35 * cols, 20.0), min(1.5 + 0.3 * rows, 20.0))
    ax = fig.add_subplot()
    # vmax = the largest weight, not 1: a diffuse (untrained) attention still shows its structure; the
    # colour bar gives the scale.
    image = ax.imshow(matrix, cmap="viridis", aspect="auto", vmin=0.0, interpolation="nearest")
    ax.set_xticks(range(cols), list(source_tokens), rotation=90, fontsize="small")
    ax.set_yticks(range(rows), list(target_tokens), fontsize="small")
    ax.set_xlabel("source")
    ax.set_ylabel("target")
    fig.colorbar(image, ax=ax, fraction=0.05)
    out = Path(path)
    fig.savefig(out, format="png")
    return out


# --- the HTML page ---------------------------------------------------------------------------------------

def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


def _table(rows: Sequence[tuple[str, object]]) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(_fmt(v))}</td></tr>" for k, v in rows if v is not None)
    return f"<table>{body}</table>"


def _metric_rows(m: Mapping[str, Any]) -> list[tuple[str, object]]:
    bleu, chrf, chrfpp, ter, tok, ppl = (m.get(k) or {} for k in ("bleu", "chrf", "chrfpp", "ter", "tokenized_bleu",
                                                                     "perplexity"))
    sent = m.get("sentences") or {}
    return [
        ("test set", m.get("test_set")),
        ("BLEU (sacreBLEU)", bleu.get("score")),
        ("BLEU signature", bleu.get("signature")),
        ("BLEU details", bleu.get("string")),
        ("chrF", chrf.get("score")),
        ("chrF signature", chrf.get("signature")),
        ("chrF++", chrfpp.get("score")),
        ("TER", ter.get("score")),
        ("TER signature", ter.get("signature")),
        ("tokenized BLEU (model tokens)", tok.get("score")),
        ("test perplexity", ppl.get("test:perplexity")),
        ("target tokens scored", ppl.get("tokens")),
        ("sentences", sent.get("total")),
        ("empty source lines", sent.get("empty_source")),
        ("recompute", m.get("recompute")),
    ]


_SET_COLUMNS = (("BLEU", "bleu"), ("chrF", "chrf"), ("chrF++", "chrfpp"), ("TER", "ter"),
                ("perplexity", "perplexity"), ("tokenized BLEU", "tokenized_bleu"))


def _test_sets_table(m: Mapping[str, Any]) -> str:
    """One row per test set, and the mean: the table the gate's choice of set is made from."""
    sets = m.get("test_sets") or {}
    flat = m.get("metrics") or {}
    head = "<tr><th>test set</th><th>sentences</th>" + "".join(f"<th>{_e(t)}</th>" for t, _ in _SET_COLUMNS) + \
        "<th>evaluation</th></tr>"
    rows = []
    for name, s in sets.items():
        cells = "".join(f"<td>{_e(_fmt(flat.get(f'{name}:{key}')))}</td>" for _, key in _SET_COLUMNS)
        link = "this page" if s.get("folder") == "." else f'<a href="../{_e(s.get("folder"))}/report/index.html">' \
            f"{_e(s.get('folder'))}/</a>"
        rows.append(f"<tr><th>{_e(name)}</th><td>{_e(s.get('sentences'))}</td>{cells}<td>{link}</td></tr>")
    means = "".join(f"<td>{_e(_fmt(flat.get(f'mean:{key}')))}</td>" if f"mean:{key}" in flat else "<td></td>"
                    for _, key in _SET_COLUMNS)
    rows.append(f"<tr><th>mean</th><td></td>{means}<td>scores: the mean over the sets; perplexity: pooled</td></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _parent_table(m: Mapping[str, Any]) -> str:
    """This model beside the warm start's parent, on the same test set: what the retrain changed."""
    parent = m.get("parent") or {}
    mine, theirs = m.get("metrics") or {}, parent.get("metrics") or {}
    rows = []
    for name in sorted(set(mine) & set(theirs)):
        a, b = theirs[name], mine[name]
        change = f"{b - a:+.4g}" if isinstance(a, int | float) and isinstance(b, int | float) else ""
        rows.append(f"<tr><th>{_e(name)}</th><td>{_e(_fmt(a))}</td><td>{_e(_fmt(b))}</td><td>{_e(change)}</td></tr>")
    head = "<tr><th>metric</th><th>parent</th><th>this model</th><th>change</th></tr>"
    return (f"<p>Parent: {_e(parent.get('model'))} (warm start), scored on the same sentences with the same "
            f"settings.</p><table>{head}{''.join(rows)}</table>")


def _identity_rows(m: Mapping[str, Any]) -> list[tuple[str, object]]:
    model, data, dec = (m.get(k) or {} for k in ("model", "data", "decoding"))
    src, ref = data.get("source") or {}, data.get("reference") or {}
    return [
        ("model", model.get("uri")),
        ("params.pt sha256", model.get("params_sha256")),
        ("best checkpoint", model.get("best_checkpoint")),
        ("updates", model.get("num_updates")),
        ("source", f"{src.get('path')} ({src.get('lines')} lines, sha256 {src.get('sha256')})" if src else None),
        ("reference", f"{ref.get('path')} ({ref.get('lines')} lines, sha256 {ref.get('sha256')})" if ref else None),
        ("beam size", dec.get("beam_size")),
        ("batch size", dec.get("batch_size")),
        ("max output length", dec.get("max_output_length")),
        ("text format", dec.get("text_format")),
        ("device", dec.get("device")),
    ]


_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin-bottom:1.5em}th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;
vertical-align:top}th{background:#f4f4f4;font-weight:600}td{font-family:ui-monospace,monospace;word-break:break-all}
img{max-width:100%;border:1px solid #ddd}.example{margin-bottom:2em}"""


def write_report(directory: str | os.PathLike[str], metrics: Mapping[str, Any],
                 history: Sequence[Mapping[str, Any]], examples: Sequence[Mapping[str, Any]],
                 best_checkpoint: int | None = None) -> Path:
    """`directory`/report/index.html with its PNGs; returns the page's path.

    `examples`: dicts with line, source, reference, hypothesis, source_tokens, target_tokens, matrix."""
    out = Path(directory) / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    title = f"Evaluation of {metrics.get('model', {}).get('uri', 'a model')}"
    parts = [f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{_e(title)}</title>",
             f"<style>{_STYLE}</style></head><body><h1>{_e(title)}</h1>",
             *(["<h2>Test sets</h2>", _test_sets_table(metrics)] if metrics.get("test_sets") else []),
             "<h2>Scores</h2>", _table(_metric_rows(metrics)),
             *(["<h2>This model and its parent</h2>", _parent_table(metrics)] if metrics.get("parent") else []),
             "<h2>What was evaluated</h2>", _table(_identity_rows(metrics)),
             "<h2>Learning curves</h2>"]
    if history:
        learning_curves_png(history, out / CURVES_FILE, best_checkpoint)
        parts.append(f'<img src="{CURVES_FILE}" alt="learning curves">')
    else:
        parts.append("<p>The model directory has no training history (metrics.json).</p>")
    parts.append("<h2>Examples</h2>")
    if not examples:
        parts.append("<p>No example sentences.</p>")
    for n, ex in enumerate(examples, 1):
        parts.append(f'<div class="example"><h3>Line {_e(ex.get("line", n))}</h3>')
        parts.append(_table([("source", ex.get("source")), ("reference", ex.get("reference")),
                             ("hypothesis", ex.get("hypothesis"))]))
        if ex.get("matrix") and ex.get("target_tokens"):
            name = f"attention_{n}.png"
            attention_png(ex["source_tokens"], ex["target_tokens"], ex["matrix"], out / name)
            parts.append(f'<img src="{name}" alt="attention, line {_e(ex.get("line", n))}">')
        parts.append("</div>")
    parts.append("</body></html>\n")
    page = out / INDEX_FILE
    page.write_text("\n".join(parts), encoding="utf-8")
    return page
