"""The `upload` step: the three channels to `s3://bucket/prefix/{train,validation,vocab}/`, or to a
local root with the same layout.

Objects whose size and sha256 already match are skipped, so a retried task uploads nothing twice.
Objects under a channel prefix that the local channel does not have would be fed to the training
job too (SageMaker reads the whole prefix): they are reported, and deleted with `delete_extra`.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from model.archive import sha256_file
from model.constants import CHANNELS
from pipeline_tasks import storage

log = logging.getLogger(__name__)


def upload_channels(channels_dir: str | os.PathLike[str], destination: str, delete_extra: bool = False) -> dict:
    """Upload DIR/{train,validation,vocab}/* under `destination`; returns channel -> URI, channel -> sha256
    (:func:`channel_digest`) and counts."""
    src = Path(channels_dir)
    missing = [ch for ch in CHANNELS if not (src / ch).is_dir() or not any((src / ch).iterdir())]
    if missing:
        raise FileNotFoundError(f"{src}: channel folder(s) missing or empty: {', '.join(missing)}")
    result: dict = {"channels": {}, "sha256": {}, "uploaded": 0, "skipped": 0, "extra": [], "deleted": []}
    for ch in CHANNELS:
        dest = storage.join(destination, ch)
        local_files = sorted(p for p in (src / ch).rglob("*") if p.is_file())
        names = {str(p.relative_to(src / ch)) for p in local_files}
        digests = {}
        for p in local_files:
            digest = digests[p.relative_to(src / ch).as_posix()] = sha256_file(p)  # hashed once, here
            if storage.put_file(p, storage.join(dest, *p.relative_to(src / ch).parts), digest):
                result["uploaded"] += 1
            else:
                result["skipped"] += 1
        result["sha256"][ch] = channel_digest(digests)
        extra = sorted(set(storage.list_files(dest)) - names)
        for name in extra:
            uri = storage.join(dest, name)
            if delete_extra:
                storage.delete(uri)
                result["deleted"].append(uri)
            else:
                log.warning("%s is not part of this upload but lies in the %s channel: the training job "
                            "would read it too (use --delete-extra to remove it)", uri, ch)
                result["extra"].append(uri)
        result["channels"][ch] = dest.rstrip("/") + "/"
    log.info("upload: %d file(s) uploaded, %d already there, to %s", result["uploaded"], result["skipped"], destination)
    return result


def channel_digest(files: Mapping[str, str]) -> str:
    """sha256 over a channel's file names and their sha256s: the identity of the data a model was trained on."""
    h = hashlib.sha256()
    for name, digest in sorted(files.items()):
        h.update(f"{name}\0{digest}\n".encode())
    return h.hexdigest()
