"""Where a pipeline run keeps its artifacts (docs/ARCHITECTURE.md §6), and moving folders to and from those URIs.

A run writes under ``<root>/<dag_id>/<run_id>/{raw,subset,parent,tok,recordio,channels,model,eval,transform}``;
``<root>`` is a path or ``s3://bucket/prefix``. Every task reads its inputs from URIs and writes its
outputs to URIs, never to another task's local disk, so the same DAG runs on the Local, Celery or
Kubernetes executors. The promoted model's pointer lives beside the runs, at
``<root>/<dag_id>/promoted.json``.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipeline_tasks import storage

log = logging.getLogger(__name__)

STAGES = ("raw", "test_sets", "subset", "clean", "parent", "tok", "recordio", "channels", "model", "eval", "transform")
POINTER_FILE = "promoted.json"
COMPLETE_MARKER = "_COMPLETE"


def safe_segment(text: str) -> str:
    """A run id such as ``manual__2026-11-21T20:30:00.123+00:00`` as one path/key segment: characters
    S3 consoles and shells handle without quoting."""
    cleaned = re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("._")
    if not cleaned:
        raise ValueError(f"{text!r} gives an empty path segment")
    return cleaned


TUNING_STORE = "tuning-jobs"


@dataclass(frozen=True)
class RunLayout:
    """The URIs of one run's artifacts."""

    root: str
    dag_id: str
    run_id: str

    @property
    def base(self) -> str:
        return storage.join(self.root, safe_segment(self.dag_id), safe_segment(self.run_id))

    def uri(self, stage: str, *names: str) -> str:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}: one of {', '.join(STAGES)}")
        return storage.join(self.base, stage, *names)

    @property
    def pointer(self) -> str:
        return storage.join(self.root, safe_segment(self.dag_id), POINTER_FILE)

    @property
    def tuning_store(self) -> str:
        """Where the DAG's local tuning jobs keep their results: beside the pointer, shared by its runs, so a
        tuning job can warm-start from an earlier run's."""
        return storage.join(self.root, safe_segment(self.dag_id), TUNING_STORE)

    def as_dict(self) -> dict[str, str]:
        return {"base": self.base, "pointer": self.pointer, **{s: self.uri(s) for s in STAGES}}


def put_tree(local_dir: str | os.PathLike[str], uri: str) -> list[str]:
    """Publish every file under `local_dir` at `uri` (same relative paths), then a ``_COMPLETE``
    marker last: a reader that finds the marker knows the folder is whole, one that does not (a task
    killed half-way) treats it as absent and the retry writes it again. Files already at `uri` that the
    new folder does not have are deleted (after the marker, before the new files): get_tree fetches
    everything under `uri`, so a stale file would otherwise become part of the new output."""
    local = Path(local_dir)
    names = sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file())
    storage.delete(storage.join(uri, COMPLETE_MARKER))
    stale = sorted(set(storage.list_files(uri)) - set(names) - {COMPLETE_MARKER})
    for name in stale:
        storage.delete(storage.join(uri, *name.split("/")))
    if stale:
        log.info("removed %d file(s) of an earlier output from %s (first: %s)", len(stale), uri, stale[0])
    for name in names:
        storage.put_file(local / name, storage.join(uri, *name.split("/")))
    with tempfile.NamedTemporaryFile("w", suffix=".marker", delete=False) as f:
        f.write("\n".join(names) + "\n")
    try:
        storage.put_file(f.name, storage.join(uri, COMPLETE_MARKER))
    finally:
        os.unlink(f.name)
    log.info("published %d file(s) to %s", len(names), uri)
    return names


def is_complete(uri: str) -> bool:
    """True when `uri` holds a folder published whole by :func:`put_tree`."""
    loc = storage.parse(storage.join(uri, COMPLETE_MARKER))
    if isinstance(loc, storage.S3Location):
        return storage.head(loc) is not None
    return loc.is_file()


def get_tree(uri: str, local_dir: str | os.PathLike[str]) -> Path:
    """Fetch a folder published by :func:`put_tree` (refusing an incomplete one) into `local_dir`."""
    if not is_complete(uri):
        raise FileNotFoundError(f"{uri}: not a complete artifact (no {COMPLETE_MARKER}): the task that writes it "
                                f"did not finish")
    local = Path(local_dir)
    local.mkdir(parents=True, exist_ok=True)
    for name in storage.list_files(uri):
        if name != COMPLETE_MARKER:
            storage.get_file(storage.join(uri, *name.split("/")), local / name)
    return local
