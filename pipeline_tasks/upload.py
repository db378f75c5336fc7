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
from pathlib import Path

from model.archive import sha256_file
from model.constants import CHANNELS
from pipeline_tasks import storage

log = logging.getLogger(__name__)


def upload_channels(channels_dir: str | os.PathLike[str], destination: str, delete_extra: bool = False) -> dict:
    """Upload DIR/{train,validation,vocab}/* under `destination`; returns channel -> URI and counts."""
    src = Path(channels_dir)
    missing = [ch for ch in CHANNELS if not (src / ch).is_dir() or not any((src / ch).iterdir())]
    if missing:
        raise FileNotFoundError(f"{src}: channel folder(s) missing or empty: {', '.join(missing)}")
    result: dict = {"channels": {}, "uploaded": 0, "skipped": 0, "extra": [], "deleted": []}
    for ch in CHANNELS:
        dest = storage.join(destination, ch)
        local_files = sorted(p for p in (src / ch).rglob("*") if p.is_file())
        names = {str(p.relative_to(src / ch)) for p in local_files}
        for p in local_files:
            if storage.put_file(p, storage.join(dest, *p.relative_to(src / ch).parts)):
                result["uploaded"] += 1
            else:
                result["skipped"] += 1
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


def channel_digests(channels_dir: str | os.PathLike[str]) -> dict[str, str]:
    """channel -> sha256 over its files' names and sha256s: the identity of the data a model was trained on."""
    root = Path(channels_dir)
    out = {}
    for channel in sorted(p for p in root.iterdir() if p.is_dir()):
        h = hashlib.sha256()
        for f in sorted(p for p in channel.rglob("*") if p.is_file()):
            h.update(f"{f.relative_to(channel).as_posix()}\0{sha256_file(f)}\n".encode())
        out[channel.name] = h.hexdigest()
    return out
