"""Named test sets: what the ``test_sets`` param may name, and fetching each as raw source and reference.

A run can be scored on several test sets (newstest2014, 2016, 2017, …), each kept apart in the
evaluation (pipeline_tasks/evaluate.py's ``evaluate_sets``). A set is one of:

- ``"test"``: the corpus's own test split (what a run without ``test_sets`` is scored on);
- a catalog name, ``newstest2014`` … ``newstest2017``: the official WMT sets as sacreBLEU knows them —
  its registry (``sacrebleu.dataset.DATASETS``) gives the tarball's URL and md5 and where the language
  pair's SGML source and reference are inside it, and sacreBLEU's own SGML reader turns them into
  lines, so the text is exactly what ``sacrebleu -t wmt17 -l en-de`` scores against. The tarball goes
  through the download step's cache, retries and extraction limits; ``{"name": …, "catalog": …,
  "url": …}`` fetches it from a mirror instead;
- ``{"name": …, "source": URI, "reference": URI}``: raw text files (a path, ``file://``, ``s3://`` or
  http(s) URL), line-aligned.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline_tasks import storage
from pipeline_tasks.evaluate import PRIMARY, check_set_name
from pipeline_tasks.textio import TextStats, iter_lines

log = logging.getLogger(__name__)

# Our names for sacreBLEU's test sets (its names are per year and campaign).
CATALOG: dict[str, str] = {
    "newstest2014": "wmt14",        # the filtered set (2,737 en-de lines), as the WMT14 task scored it
    "newstest2014-full": "wmt14/full",
    "newstest2015": "wmt15",
    "newstest2016": "wmt16",
    "newstest2017": "wmt17",
}
SOURCE_FILE, REFERENCE_FILE = "source.txt", "reference.txt"


class TestSetError(ValueError):
    """A test set that cannot be used; the message names it."""

    __test__ = False  # not a pytest class


@dataclass(frozen=True)
class TestSetSpec:
    """One entry of ``test_sets``, checked."""

    __test__ = False  # not a pytest class

    name: str
    catalog: str | None = None      # a CATALOG name
    url: str | None = None          # a mirror of the catalog set's tarball
    source: str | None = None       # raw source file (URI)
    reference: str | None = None    # raw reference file (URI)

    @property
    def corpus_split(self) -> bool:
        return self.name == PRIMARY and self.catalog is None and self.source is None


def parse_test_sets(value: Sequence[Any] | None, source_lang: str, target_lang: str) -> list[TestSetSpec]:
    """The ``test_sets`` param, checked before any download (plan): names unique and usable as metric names,
    catalog sets known for the language pair, files given in pairs. Empty: the corpus's test split."""
    if value is None or len(value) == 0:
        return [TestSetSpec(PRIMARY)]
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise TestSetError(f"test_sets must be a list of names or objects, got {value!r}")
    specs = []
    for i, item in enumerate(value):
        where = f"test_sets[{i}]"
        if isinstance(item, str):
            item = {"name": item} if item == PRIMARY else {"name": item, "catalog": item}
        if not isinstance(item, Mapping):
            raise TestSetError(f"{where}: a catalog name ({', '.join(CATALOG)}), \"test\" or an object, got {item!r}")
        unknown = sorted(set(item) - {"name", "catalog", "url", "source", "reference"})
        if unknown:
            raise TestSetError(f"{where}: unknown key(s) {', '.join(unknown)}; known: name, catalog, url, source, "
                               "reference")
        name = item.get("name") or item.get("catalog")
        try:
            check_set_name(name)
        except ValueError as e:
            raise TestSetError(f"{where}: {e}") from None
        spec = TestSetSpec(name, item.get("catalog"), item.get("url"), item.get("source"), item.get("reference"))
        if spec.catalog is not None:
            if spec.source or spec.reference:
                raise TestSetError(f"{where} ({name}): a catalog set or files, not both")
            if spec.catalog not in CATALOG:
                raise TestSetError(f"{where}: unknown test set {spec.catalog!r}; the catalog has "
                                   f"{', '.join(CATALOG)} (or give source and reference files)")
            members(spec.catalog, source_lang, target_lang)  # raises for a language pair it does not have
        elif spec.source or spec.reference:
            if not (spec.source and spec.reference):
                raise TestSetError(f"{where} ({name}): source and reference go together")
            if spec.url:
                raise TestSetError(f"{where} ({name}): url is a catalog set's mirror; give source and reference")
        elif name != PRIMARY:
            raise TestSetError(f"{where} ({name}): not in the catalog ({', '.join(CATALOG)}); give source and "
                               "reference files, or \"test\" for the corpus's test split")
        specs.append(spec)
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise TestSetError(f"test_sets: the name(s) {', '.join(dupes)} appear more than once")
    if PRIMARY in names[1:]:
        raise TestSetError(f"test_sets: \"{PRIMARY}\" (the corpus's test split) must come first: its scores are "
                           f"the {PRIMARY}:* metrics")
    return specs


def _dataset(catalog: str) -> Any:
    from sacrebleu.dataset import DATASETS

    return DATASETS[CATALOG[catalog]]


def members(catalog: str, source_lang: str, target_lang: str) -> tuple[str, str]:
    """(source, reference) paths inside the catalog set's tarball for the language pair."""
    pair = f"{source_lang}-{target_lang}"
    files = _dataset(catalog).langpairs.get(pair)
    if not files:
        have = sorted(k for k in _dataset(catalog).langpairs if "-" in k)
        raise TestSetError(f"test set {catalog} has no {pair} (it has {', '.join(have)})")
    return files[0], files[1]


def catalog_source(catalog: str) -> tuple[str, str]:
    """(tarball URL, md5) as sacreBLEU publishes them."""
    ds = _dataset(catalog)
    return ds.data[0], ds.md5[0]


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_test_set(spec: TestSetSpec, dest: Path, cache_dir: str, source_lang: str, target_lang: str
                   ) -> tuple[Path, Path]:
    """``dest/source.txt`` and ``dest/reference.txt`` of a catalog set or of given files (not the corpus
    split, which the subset step carries)."""
    from pipeline_tasks.download import DownloadConfig, extract_into, fetch_cached, file_name, is_url

    dest.mkdir(parents=True, exist_ok=True)
    src_out, ref_out = dest / SOURCE_FILE, dest / REFERENCE_FILE
    if spec.catalog is not None:
        url, md5 = catalog_source(spec.catalog)
        url = spec.url or url
        tarball = fetch_cached(url, DownloadConfig(cache_dir=cache_dir))
        got = _md5(tarball)
        if got != md5:
            raise TestSetError(f"test set {spec.name}: {url} has md5 {got}, sacreBLEU's registry says {md5}")
        src_member, ref_member = members(spec.catalog, source_lang, target_lang)
        with tempfile.TemporaryDirectory(prefix="test-set-") as tmp:
            extract_into(tarball, Path(tmp), file_name(url))
            ds = _dataset(spec.catalog)
            for member, out in ((src_member, src_out), (ref_member, ref_out)):
                path = Path(tmp) / member
                if not path.is_file():
                    raise TestSetError(f"test set {spec.name}: {url} has no {member}")
                ds._convert_format(str(path), str(out))  # sacreBLEU's SGML reading, as its own scoring does
        log.info("test set %s: %s (md5 %s), %s and %s", spec.name, url, md5, src_member, ref_member)
    else:
        for uri, out in ((spec.source, src_out), (spec.reference, ref_out)):
            assert uri is not None
            if is_url(uri):
                out.write_bytes(fetch_cached(uri, DownloadConfig(cache_dir=cache_dir)).read_bytes())
            else:
                storage.get_file(uri, out)
        log.info("test set %s: %s and %s", spec.name, spec.source, spec.reference)
    n_src, n_ref = (sum(1 for _ in iter_lines(p, TextStats(str(p)))) for p in (src_out, ref_out))
    if n_src != n_ref or n_src == 0:
        raise TestSetError(f"test set {spec.name}: {n_src} source and {n_ref} reference lines")
    return src_out, ref_out
