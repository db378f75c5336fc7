"""Model archives (``model.tar.gz``, what SageMaker makes of ``/opt/ml/model``) opened safely, and file hashes.

Both sides open them: batch transform and evaluation fetch a trained model, and the training
container gets a parent model for a warm start in its ``model`` channel. An archive comes from an S3
prefix others may write to, so every member is checked before anything is written.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from model.constants import PARAMS_FILE

MODEL_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def sha256_file(path: str | os.PathLike[str]) -> str:
    """In 1 MiB blocks, so that a multi-GB archive or model is hashed without being read into memory. The
    one file hash of the product (downloads, uploads, model identities), here because the container
    needs it too."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def safe_members(tar: tarfile.TarFile, archive: str, target: Path) -> list[tarfile.TarInfo]:
    """Every member, checked before anything is written: no absolute or escaping paths, no links that
    point outside, no devices. (tarfile's 'data' filter checks again while extracting.)"""
    root = target.resolve()
    members = tar.getmembers()
    for m in members:
        dest = (root / m.name).resolve()
        if os.path.isabs(m.name) or (dest != root and root not in dest.parents):
            raise ValueError(f"{archive}: member {m.name!r} would be written outside {target}: refused")
        if m.issym() or m.islnk():
            link = (dest.parent / m.linkname).resolve() if m.issym() else (root / m.linkname).resolve()
            if os.path.isabs(m.linkname) or (link != root and root not in link.parents):
                raise ValueError(f"{archive}: member {m.name!r} links outside {target} ({m.linkname!r}): refused")
        elif not (m.isfile() or m.isdir()):
            raise ValueError(f"{archive}: member {m.name!r} is not a regular file or folder: refused")
    return members


def extract_model_archive(archive: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Extract a model.tar.gz into `target` (all or nothing); returns the folder holding params.pt."""
    archive, target = os.fspath(archive), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".extract.", dir=target))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                members = safe_members(tar, archive, stage)
                tar.extractall(stage, members=members, filter="data")
        except tarfile.TarError as e:
            raise ValueError(f"{archive}: not a readable tar archive: {e}") from None
        found = [p.parent for p in stage.rglob(PARAMS_FILE)]
        if len(found) != 1:
            raise ValueError(f"{archive}: expected one model (one params.pt), found {len(found)}")
        for child in stage.iterdir():
            os.replace(child, target / child.name)
        return target / found[0].relative_to(stage)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
