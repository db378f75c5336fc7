"""Output length along training, ours and Sockeye 3.1.34: at each update count, the model each engine
would ship then, its validation perplexity and the length of its beam-5 and greedy translations.

    .venv/bin/python -m benchmarks.bench_length_curve [--install-peer] [--updates 150,200,...,500]
        [--word-vocab-size 8000 | --word-vocab-size 0] [--data-from KEPT_BENCH_PEER_WORK_DIR] [--ours-only]
        [--our-hyperparameter NAME=VALUE ...] [--work-dir DIR] [--json OUT.json]
    # Sockeye's initialisation on our side:
    .venv/bin/python -m benchmarks.bench_length_curve --ours-only \\
        --our-hyperparameter xavier_factor_type=avg --our-hyperparameter weight_init_scale=3.0

Why: one trained model per engine says little about output length early in training. In the word
setting (a shared 8k vocabulary of words; a fifth of the training targets' tokens are ``<unk>``), both
engines' early models write mostly ``<unk>`` runs, and how long those run changes from one checkpoint
to the next. A length goal "at the peer's perplexity" can only be judged on curves: this benchmark
trains each engine once, by update counts (so the machine's load does not change what is measured),
and evaluates the model it would ship at each count.

- **Ours**: one job, restarted with ``max_num_batches`` raised to each count in turn (a job that
  finished on a budget trains on when the budget is raised, with the same weights, optimiser and data
  order as one long job). The model folder holds the best checkpoint so far, as a job of that budget
  would ship.
- **Sockeye**: one ``sockeye-train`` run to the last count with every checkpoint's parameters kept
  (``--keep-last-params -1``); at each count the best checkpoint so far by its own validation metric,
  as its ``params.best`` would be.
- Both: the same data, configuration and validation as ``bench_peer`` (its module docstring), a
  checkpoint every ``--checkpoint-interval`` updates (the counts must be multiples of it), 3,000-pair
  plain-NLL perplexity (our scorer / ``sockeye-score``), and the first ``--translate-sentences`` test
  sentences translated with beam 5 and greedily under each engine's length limit (the same rule).

Printed per count and engine: perplexity; length ratio (output/reference tokens) over all sentences,
over those below the 60-token cap, and the median sentence's ratio; the share at the cap; the share of
``<unk>`` in the output (the references' out-of-vocabulary share is printed for comparison). Then, for
each of our points, Sockeye's point nearest in perplexity and the ratio of their length ratios, and
each engine's spread of length ratios over the perplexity range both covered.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import bench_peer as bp

LENGTH_KEYS = ("len_ratio_word", "len_ratio_below_max", "median_sentence_ratio", "at_max_share", "unk_share",
               "ref_unk_share", "corr_src")


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, argparse.Namespace]:
    """This benchmark's arguments and the bench_peer namespace its shared steps read."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--updates", default="150,200,250,300,350,400,450,500",
                    help="update counts to evaluate at, ascending, multiples of --checkpoint-interval")
    ap.add_argument("--checkpoint-interval", type=int, default=50, help="updates between checkpoints, both sides")
    ap.add_argument("--word-vocab-size", type=int, default=8000,
                    help="the word setting's joint vocabulary size (0: bench_peer's BPE subwords)")
    ap.add_argument("--data-from", type=Path, metavar="DIR",
                    help="use the prepared data/ of a kept bench_peer work folder of the same setting")
    ap.add_argument("--translate-sentences", type=int, default=500, help="the first N test sentences")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for every process")
    ap.add_argument("--our-hyperparameter", action="append", default=[], metavar="NAME=VALUE",
                    help="one of our hyperparameters set otherwise (repeatable), as bench_peer's flag")
    ap.add_argument("--ours-only", action="store_true", help="our curve only (no Sockeye needed)")
    ap.add_argument("--install-peer", action="store_true", help="create the Sockeye virtualenv if it is missing")
    ap.add_argument("--peer-venv", type=Path, default=bp.DEFAULT_PEER_VENV, help="the Sockeye virtualenv")
    ap.add_argument("--work-dir", type=Path, help="where everything is written (default: a temporary folder)")
    ap.add_argument("--keep-work", action="store_true", help="keep the temporary work folder")
    ap.add_argument("--json", type=Path, help="write all results as JSON here (also after every point, partial)")
    a = ap.parse_args(argv)
    try:
        a.update_counts = [int(x) for x in a.updates.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--updates {a.updates!r}: expected comma-separated integers")
    counts = a.update_counts
    if a.checkpoint_interval < 1:
        ap.error("--checkpoint-interval must be >= 1")
    if not counts or counts != sorted(set(counts)) or any(n <= 0 or n % a.checkpoint_interval for n in counts):
        ap.error(f"--updates {a.updates}: ascending distinct positive multiples of --checkpoint-interval "
                 f"({a.checkpoint_interval})")
    if a.data_from is not None:
        a.data_from = a.data_from.expanduser().resolve()
        if not (a.data_from / "data").is_dir():
            ap.error(f"--data-from {a.data_from}: no data/ folder (the --work-dir of a bench_peer run)")
    shared = ["--word-vocab-size", str(a.word_vocab_size), "--repeats", "1", "--translate-repeats", "1",
              "--translate-sentences", str(a.translate_sentences), "--threads", str(a.threads),
              "--checkpoint-interval", str(a.checkpoint_interval), "--peer-venv", str(a.peer_venv),
              "--train-seconds", str(10**6)]  # no time budget: update counts end every run
    shared += [x for item in a.our_hyperparameter for x in ("--our-hyperparameter", item)]
    shared += ["--ours-only"] * a.ours_only + ["--install-peer"] * a.install_peer
    shared += ["--work-dir", str(a.work_dir)] if a.work_dir else []
    shared += ["--keep-work"] * a.keep_work
    return a, bp.parse_args(shared)


def evaluate(model: Path, prep: bp.Prepared, out: Path, b: argparse.Namespace, peer: Path | None) -> dict[str, Any]:
    """Perplexity and both searches' length statistics of one model (ours when `peer` is None)."""
    row = (bp.score_peer(str(model), prep, peer, out, b) if peer else bp.score_ours(str(model), prep, out, b))
    for mode, beam in (("beam5", 5), ("greedy", 1)):
        run_dir = out / mode
        run_dir.mkdir(parents=True, exist_ok=True)
        t = (bp.translate_peer(str(model), prep, peer, run_dir, beam, b) if peer
             else bp.translate_ours(str(model), prep, run_dir, beam, b))
        stats = bp.length_stats(Path(t["hyp"]), prep)
        row[mode] = {k: stats[k] for k in LENGTH_KEYS}
    return row


def our_curve(prep: bp.Prepared, work: Path, a: argparse.Namespace, b: argparse.Namespace,
              points: list[dict[str, Any]], save: Callable[[], None]) -> None:
    """One job of ours, its update budget raised step by step; each step's shipped model evaluated (the
    points are appended to `points` and saved as they come)."""
    run_dir = work / "ours"
    root = run_dir / "ml"
    hp: dict[str, str] = {}
    for n in a.update_counts:
        print(f"[{time.strftime('%H:%M:%S')}] ours: training to {n} updates ...", flush=True)
        if not hp:
            for ch in ("train", "validation", "vocab"):
                shutil.copytree(prep.channels / ch, root / "input" / "data" / ch)
            (root / "input" / "config").mkdir(parents=True)
            hp = bp.our_hyperparameters(b, "max_training_seconds")
        hp["max_num_batches"] = str(n)
        (root / "input" / "config" / "hyperparameters.json").write_text(json.dumps(hp, indent=1))
        bp.run_our_training(root, run_dir / f"train-to-{n}.log", hp, b, "max_training_seconds")
        metrics = json.loads((root / "model" / "metrics.json").read_text())
        best = next(h for h in metrics["history"] if h["checkpoint"] == metrics["best_checkpoint"])
        if points and points[-1]["model_updates"] == best["updates"]:
            print(f"    no better checkpoint since update {best['updates']}: same model", flush=True)
            points.append({**points[-1], "updates": n})
        else:
            points.append({"updates": n, "model_updates": best["updates"],
                           **evaluate(root / "model", prep, work / "eval" / f"ours-{n}", b, None)})
        print("    " + point_line(points[-1]), flush=True)
        save()


def peer_checkpoints(model: Path) -> list[tuple[int, float]]:
    """(checkpoint, validation metric) per checkpoint from Sockeye's ``metrics`` file (perplexity-val: what
    it picks params.best by with --optimized-metric perplexity)."""
    rows = []
    for line in (model / "metrics").read_text().splitlines():
        fields = line.split("\t")
        values = dict(f.split("=", 1) for f in fields[1:] if "=" in f)
        if "perplexity-val" in values:
            rows.append((int(fields[0]), float(values["perplexity-val"])))
    return rows


def peer_model_at(model: Path, checkpoint: int, out: Path) -> Path:
    """A Sockeye model folder whose params.best is checkpoint `checkpoint`'s parameters (links to the run's
    files): sockeye-score has no --checkpoint flag, and one folder serves scoring and translation alike."""
    out.mkdir(parents=True, exist_ok=True)
    for f in model.iterdir():
        if f.name.startswith(("params.", "optimizer", "lr_scheduler", "training_state")) or (out / f.name).exists():
            continue
        os.symlink(f, out / f.name)
    params = model / f"params.{checkpoint:05d}"
    if not params.is_file():
        raise bp.StepFailed(f"{params}: missing (was --keep-last-params -1 passed to sockeye-train?)")
    (out / "params.best").unlink(missing_ok=True)
    os.symlink(params, out / "params.best")
    return out


def peer_curve(prep: bp.Prepared, peer: Path, work: Path, a: argparse.Namespace, b: argparse.Namespace,
               points: list[dict[str, Any]], save: Callable[[], None]) -> None:
    """One Sockeye run to the last count, every checkpoint kept; at each count the best one so far."""
    run_dir = work / "peer"
    run_dir.mkdir(parents=True)
    last = a.update_counts[-1]
    print(f"[{time.strftime('%H:%M:%S')}] Sockeye: training to {last} updates ...", flush=True)
    r = bp.train_peer(prep, peer, run_dir, b, ["--max-updates", str(last), "--keep-last-params", "-1"])
    model = Path(r["model"])
    checkpoints = peer_checkpoints(model)
    for n in a.update_counts:
        upto = [(c, m) for c, m in checkpoints if c * a.checkpoint_interval <= n]
        if not upto:
            raise bp.StepFailed(f"{model / 'metrics'}: no checkpoint up to update {n}")
        best = min(upto, key=lambda cm: (cm[1], -cm[0]))[0]
        if points and points[-1]["model_updates"] == best * a.checkpoint_interval:
            points.append({**points[-1], "updates": n})
        else:
            folder = peer_model_at(model, best, work / "eval" / f"peer-{n}" / "model")
            points.append({"updates": n, "model_updates": best * a.checkpoint_interval,
                           **evaluate(folder, prep, folder.parent, b, peer)})
        print("    Sockeye " + point_line(points[-1]), flush=True)
        save()


def point_line(p: dict[str, Any]) -> str:
    g, s = p["greedy"], p["beam5"]
    return (f"{p['updates']} updates (model of {p['model_updates']}): ppl {p['val_ppl']:.2f}; length beam 5 "
            f"{s['len_ratio_word']:.3f} (median {s['median_sentence_ratio']:.3f}, {s['at_max_share']:.1%} at cap), "
            f"greedy {g['len_ratio_word']:.3f} (median {g['median_sentence_ratio']:.3f}, {g['at_max_share']:.1%} "
            f"at cap); <unk> {s['unk_share']:.0%}/{g['unk_share']:.0%}")


def distinct(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One point per evaluated model: a count whose best checkpoint did not change repeats the last one."""
    seen: set[int] = set()
    return [p for p in points if not (p["model_updates"] in seen or seen.add(p["model_updates"]))]


def _f(v: float | None, fmt: str = ".3f") -> str:
    return "-" if v is None else format(v, fmt)


def report(results: dict[str, Any]) -> None:
    """The curves side by side, then the nearest-perplexity pairs and each side's spread, as ratios."""
    sides = [s for s in ("ours", "peer") if s in results]
    names = {"ours": "ours", "peer": bp.PEER_NAME}
    ref_unk = results[sides[0]][0]["beam5"]["ref_unk_share"]
    print(f"\n## Output length along training ({results['units']}; the references hold {ref_unk:.0%} out-of-"
          f"vocabulary tokens)\n")
    print("| engine | updates (model) | perplexity | beam 5: all / below cap / median | at cap | greedy: all / "
          "below cap / median | at cap | <unk> beam/greedy |")
    print("| --- | --: | --: | --: | --: | --: | --: | --: |")
    for side in sides:
        for p in distinct(results[side]):
            s, g = p["beam5"], p["greedy"]
            print(f"| {names[side]} | {p['updates']} ({p['model_updates']}) | {p['val_ppl']:.2f} | "
                  f"{_f(s['len_ratio_word'])} / {_f(s['len_ratio_below_max'])} / {_f(s['median_sentence_ratio'])} | "
                  f"{s['at_max_share']:.1%} | {_f(g['len_ratio_word'])} / {_f(g['len_ratio_below_max'])} / "
                  f"{_f(g['median_sentence_ratio'])} | {g['at_max_share']:.1%} | "
                  f"{s['unk_share']:.0%}/{g['unk_share']:.0%} |")
    if "peer" not in results:
        return
    ours, peer = distinct(results["ours"]), distinct(results["peer"])
    print("\nOur points against Sockeye's point nearest in perplexity (length ratio ours / Sockeye's):")
    for p in ours:
        q = min(peer, key=lambda x: abs(x["val_ppl"] - p["val_ppl"]))
        print(f"  ours {p['model_updates']} updates, ppl {p['val_ppl']:.2f} vs Sockeye {q['model_updates']} updates, "
              f"ppl {q['val_ppl']:.2f}: beam 5 {p['beam5']['len_ratio_word'] / q['beam5']['len_ratio_word']:.2f}x, "
              f"greedy {p['greedy']['len_ratio_word'] / q['greedy']['len_ratio_word']:.2f}x")
    lo = max(min(p["val_ppl"] for p in ours), min(p["val_ppl"] for p in peer))
    hi = min(max(p["val_ppl"] for p in ours), max(p["val_ppl"] for p in peer))
    print(f"\nSpread of the length ratio over the perplexity range both curves cover ({lo:.1f}-{hi:.1f}):")
    for side, points in (("ours", ours), ("peer", peer)):
        inside = [p for p in points if lo <= p["val_ppl"] <= hi]
        for mode in ("beam5", "greedy"):
            vals = [p[mode]["len_ratio_word"] for p in inside]
            if vals:
                print(f"  {names[side]:>15} {mode:>6}: {min(vals):.3f}-{max(vals):.3f}, mean "
                      f"{sum(vals) / len(vals):.3f}, over {len(vals)} model(s); within 10% of the reference at "
                      f"{sum(abs(v - 1) <= 0.1 for v in vals)}")


def main(argv: list[str] | None = None) -> int:
    a, b = parse_args(argv)
    try:
        bp.our_overrides(b)
        peer = None if b.ours_only else bp.ensure_peer(b)
    except bp.StepFailed as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 1
    work, remove = bp.work_folder(b)
    results: dict[str, Any] = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
                               "cpu": bp.cpu_name()}

    def save() -> None:
        if a.json:
            a.json.write_text(json.dumps({**results, "partial": True}, indent=2, default=str) + "\n")

    try:
        print(f"bench_length_curve: ours vs {bp.PEER_NAME if peer else '(ours only)'} on {bp.cpu_name()}, "
              f"{a.threads} threads, updates {a.update_counts}, work folder {work}", flush=True)
        if a.data_from:
            prep = bp.reuse_data(a.data_from / "data", work / "data", b, peer, "--data-from")
        else:
            prep = bp.prepare_data(work / "data", b, peer)
        results["units"] = prep.stats["units"]
        our_curve(prep, work, a, b, results.setdefault("ours", []), save)
        if peer:
            peer_curve(prep, peer, work, a, b, results.setdefault("peer", []), save)
    except bp.StepFailed as e:
        print(f"\nerror: {e}\n(everything is kept in {work})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted (work folder kept: {work})", file=sys.stderr)
        return 130
    report(results)
    return bp.finish(results, a.json, work, remove)


if __name__ == "__main__":
    sys.exit(main())
