"""Moving a local job's files between storage (a path, ``file://`` or ``s3://``) and its job root, as
SageMaker does around a job (docs/ARCHITECTURE.md §5): every channel's ``S3Uri`` prefix fetched into
each host's ``input/data/<channel>/`` (all of it, or the host's share under ShardedByS3Key),
``CheckpointConfig.S3Uri`` synced into ``checkpoints/`` before, during and after training, ``model/``
tarred to ``model.tar.gz`` and put under the output path. The transform job lists its input objects
with the same :func:`list_objects`.

A storage failure is a :class:`JobFailed` whose message is the FailureReason SageMaker would give
(``ClientError: …``): the job fails, the task does not crash.
"""

from __future__ import annotations

import logging
import os
import shutil
import tarfile
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from model.constants import MODEL_ARCHIVE
from model.distributed import FULLY_REPLICATED, SHARDED_BY_S3_KEY, shard_objects
from pipeline_tasks import storage

Logger = logging.Logger | logging.LoggerAdapter

CHECKPOINT_SYNC_S = float(os.environ.get("SEQ2SEQ_CHECKPOINT_SYNC_S", "30"))  # while training


class JobFailed(Exception):
    """A step of the job failed; the message is the FailureReason."""


def storage_errors() -> tuple[type[BaseException], ...]:
    """What a storage call raises when the transfer failed (botocore is imported only once a job runs)."""
    from botocore.exceptions import BotoCoreError, ClientError

    return (OSError, ValueError, BotoCoreError, ClientError)


# --- fetching ----------------------------------------------------------------------------------------------

def _inside(base: Path, rel: str) -> Path:
    """base/rel, refusing object names that would land outside base (S3 keys may hold '..')."""
    dest = (base / rel).resolve()
    if base.resolve() not in dest.parents:
        raise ValueError(f"object name {rel!r} would be written outside {base}")
    return dest


def list_objects(uri: str) -> list[tuple[str, str]]:
    """(URI, name relative to the prefix) of every object under `uri`, or the one object `uri` names."""
    files = storage.list_files(uri)
    objects = [(storage.join(uri, *rel.split("/")), rel) for rel in sorted(files) if rel and not rel.endswith("/")]
    if objects:
        return objects
    loc = storage.parse(uri)
    single = storage.head(loc) is not None if isinstance(loc, storage.S3Location) else loc.is_file()
    if single:
        name = loc.key.rstrip("/").rsplit("/", 1)[-1] if isinstance(loc, storage.S3Location) else loc.name
        return [(uri, name)]
    return []


def fetch_all(objects: list[tuple[str, str]], dest: Path) -> int:
    """Fetch (URI, relative name) `objects` under `dest`, several at once (a channel is many shards); the bytes."""
    dest.mkdir(parents=True, exist_ok=True)
    targets = [(uri, _inside(dest, rel)) for uri, rel in objects]
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(targets)))) as pool:
        list(pool.map(lambda t: storage.get_file(*t), targets))
    return sum(p.stat().st_size for _, p in targets)


def _replicate(files: list[Path], src: Path, dest: Path) -> None:
    """The same files under another host's root: hard links where the file system allows (the hosts only
    read their input data), else copies."""
    for path in files:
        target = dest / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)


def stage_channels(config: Mapping[str, Any], roots: list[Path], logger: Logger) -> None:
    """Every channel's objects into each host's ``input/data/<channel>/`` before ``train`` starts (File mode):
    all of them on every host (FullyReplicated), or host i of N the objects i, i+N, … in key order
    (ShardedByS3Key, so each instance gets about 1/N of them). A channel with no objects fails the job, as
    it does on SageMaker; a host left without a shard gets an empty folder, which the container names."""
    for ch in config["InputDataConfig"]:
        name, source = ch["ChannelName"], ch["DataSource"]["S3DataSource"]
        uri = source["S3Uri"]
        sharded = source.get("S3DataDistributionType", FULLY_REPLICATED) == SHARDED_BY_S3_KEY and len(roots) > 1
        try:
            objects = list_objects(uri)
            if not objects:
                raise JobFailed(f'ClientError: channel {name!r}: no objects found under S3 URL "{uri}" given in '
                                "input data source; check that the prefix exists and holds the channel's files")
            if sharded:
                by_name = dict((rel, (u, rel)) for u, rel in objects)
                for i, root in enumerate(roots):
                    mine = [by_name[rel] for rel in shard_objects(list(by_name), i, len(roots))]
                    dest = root / "input" / "data" / name
                    size = fetch_all(mine, dest) if mine else 0
                    dest.mkdir(parents=True, exist_ok=True)
                    if not mine:
                        logger.warning("channel %s: no object left for host %d of %d (ShardedByS3Key over %d "
                                       "objects)", name, i + 1, len(roots), len(objects))
                    logger.info("channel %s: %d of %d object(s), %d bytes from %s on host %d (ShardedByS3Key)", name,
                                len(mine), len(objects), size, uri, i + 1)
                continue
            first = roots[0] / "input" / "data" / name
            size = fetch_all(objects, first)
            for root in roots[1:]:
                _replicate([p for p in sorted(first.rglob("*")) if p.is_file()], first, root / "input" / "data" / name)
        except storage_errors() as e:
            raise JobFailed(f'ClientError: channel {name!r}: cannot fetch "{uri}": {type(e).__name__}: {e}') from e
        logger.info("channel %s: %d object(s), %d bytes from %s%s", name, len(objects), size, uri,
                    f" on each of {len(roots)} hosts" if len(roots) > 1 else "")


# --- checkpoints -------------------------------------------------------------------------------------------

def download_checkpoints(uri: str, local: Path, logger: Logger) -> None:
    """CheckpointConfig.S3Uri into ``checkpoints/``, so that a new try resumes; nothing there is a fresh start."""
    try:
        objects = list_objects(uri)
        if objects:
            size = fetch_all(objects, local)
            logger.info("checkpoints: %d object(s), %d bytes from %s (the job resumes from them)", len(objects),
                        size, uri)
    except storage_errors() as e:
        raise JobFailed(f'ClientError: cannot fetch checkpoints from "{uri}": {type(e).__name__}: {e}') from e


def sync_checkpoints(uri: str, local: Path, logger: Logger) -> None:
    """/opt/ml/checkpoints to CheckpointConfig.S3Uri, as SageMaker copies them; unchanged objects are
    skipped, and the temporary files of a checkpoint being written are not checkpoints."""
    files = [p for p in sorted(local.rglob("*")) if p.is_file() and not _is_partial(p)] if local.is_dir() else []
    written = sum(storage.put_file(p, storage.join(uri, *p.relative_to(local).parts)) for p in files)
    if written:
        logger.info("checkpoints: %d file(s) synced to %s (%d changed)", len(files), uri, written)


def _is_partial(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(".tmp")  # model/atomic.py's staged files


class CheckpointSync:
    """Syncs the checkpoints every `interval_s` while the job trains, as SageMaker does during
    training: a task killed outright (no time to sync at the end) still leaves a recent checkpoint
    for the next try."""

    def __init__(self, uri: str, local: Path, logger: Logger, interval_s: float | None = None) -> None:
        self.uri, self.local, self.logger = uri, local, logger
        self.interval_s = CHECKPOINT_SYNC_S if interval_s is None else interval_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="checkpoint-sync", daemon=True)

    def _run(self) -> None:
        while not self._done.wait(self.interval_s):
            try:
                sync_checkpoints(self.uri, self.local, self.logger)
            except Exception as e:  # the final sync reports a lasting problem; this one only retries
                self.logger.warning("checkpoint sync to %s failed (retrying): %s: %s", self.uri,
                                    type(e).__name__, e)

    def __enter__(self) -> CheckpointSync:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=60)


# --- the model ---------------------------------------------------------------------------------------------

def tar_model(model_dir: Path, archive: Path) -> None:
    """The model directory's files at the archive's root, as SageMaker packs /opt/ml/model."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz", dereference=True) as tar:
        for path in sorted(model_dir.rglob("*")):
            tar.add(path, arcname=path.relative_to(model_dir).as_posix(), recursive=False)


def upload_model(root: Path, model_uri: str) -> int:
    """Tar /opt/ml/model and put it at `model_uri` (atomic locally, verified on S3); the archive's size."""
    archive = root / ".upload" / MODEL_ARCHIVE
    tar_model(root / "model", archive)
    try:
        storage.put_file(archive, model_uri)
    except storage_errors() as e:
        raise JobFailed(f'ClientError: cannot upload the model to "{model_uri}": {type(e).__name__}: {e}') from e
    return archive.stat().st_size
