"""py3langid's ``classify`` for a whole block of texts at once: the same language and probability.

py3langid classifies one text at a time in Python: a DFA walk over the text's bytes (one table lookup
per byte, in the interpreter) and a small matrix product per text. On the clean step's blocks that was
about 60 % of the step's time. Here the model is the same, read from py3langid's own identifier (so
the two cannot drift apart), and the same arithmetic is done for every text of a block together:

1. each text is prepared as ``_encode`` does: lower-cased if it is all upper case, NFC, UTF-8;
2. the DFA is walked for all texts in lockstep, one vectorised step per byte position; texts are
   sorted by length so that step k touches only the texts still longer than k (no padding), and the
   few longest texts of a block finish in plain Python once too few are left for numpy to pay;
3. the features each text visited are counted in a sparse matrix (one row per text), and
   ``log1p(counts) @ nb_ptc + nb_pc`` is one sparse product for the block;
4. ``_decide``'s normalisation follows, row-wise: scores / sqrt(byte length), softmax, alias folding.

Scores are float32 as in py3langid; only the order of the float32 sums differs, so probabilities agree
to float32 rounding (~1e-6), and languages agree unless two are tied to that precision.
tests/unit/test_langid.py compares both on thousands of real lines of several languages.

The walk relies on py3langid 0.4's model layout (``tk_nextmove`` rows shared through ``tk_row``,
``tk_output`` one feature or -1 per state). On construction a few probe texts are classified both
ways; should a later py3langid change what ``classify`` computes, the identifier says so in the log
and falls back to calling ``classify`` per text: slower, never wrong.
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# Below this many texts still walking, a numpy step costs more than walking them in Python.
_PYTHON_TAIL = 48
# Texts scored together: a block's temporaries take ~4 KB a text, and larger chunks are no faster.
_CHUNK = 4096
_PROBES = ("The committee adopted the report on Tuesday after a long debate .",
           "Der Ausschuss hat den Bericht am Dienstag nach langer Debatte angenommen .",
           "Il est exploité depuis 43 ans par la famille Janinet et Fils .",
           "В 54 садибах розміщено 124 пам'ятки .", "THE HOTEL IS CLOSED ON MONDAYS", "", "!!", "zz")
_UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def _as_numpy(arr: Any) -> np.ndarray:
    """A read-only numpy view of py3langid's stdlib ``array`` (no copy) or a copy of a list."""
    if hasattr(arr, "typecode"):
        return np.frombuffer(arr, dtype=_UINT[arr.itemsize])
    return np.asarray(arr)


class BatchIdentifier:
    """Classifies blocks of texts as ``identifier.classify`` does, one text at a time.

    `identifier`: a py3langid ``LanguageIdentifier`` with ``norm_probs=True`` (the probabilities the clean
    step compares with its threshold); its current language set is used."""

    def __init__(self, identifier: Any) -> None:
        if not getattr(identifier, "_norm_probs", False):
            raise ValueError("BatchIdentifier needs py3langid's identifier with norm_probs=True")
        self._identifier = identifier
        self.classes: list[str] = list(identifier.nb_classes)
        self._alias_pairs = list(identifier._alias_pairs)
        try:
            self._nm = _as_numpy(identifier.tk_nextmove)  # a view: the table is ~40 MB
            self._rowbase = _as_numpy(identifier.tk_row).astype(np.int64) << 8
            out = np.asarray(identifier.tk_output, dtype=np.int32)
            # Python sequences for the tail walk (indexing numpy arrays one element at a time is slow).
            self._nm_list = identifier.tk_nextmove
            self._rowbase_list = identifier._rowbase
        except AttributeError as e:  # not py3langid 0.4's layout
            log.warning("py3langid's model layout is not the one expected (%s): classifying one text at a time", e)
            self._batched = False
            return
        # A state without a feature emits an extra one whose row of nb_ptc is zeros: the counts matrix is
        # then one entry per byte, its rows where the texts are, without a pass to drop the others.
        ptc = np.asarray(identifier.nb_ptc)
        self._none = len(ptc)
        self._out = np.where(out >= 0, out, self._none).astype(np.int32)
        self._out_list = self._out.tolist()
        self._ptc = np.zeros((len(ptc) + 1, ptc.shape[1]), dtype=np.float32)
        self._ptc[:-1] = ptc
        self._pc = np.asarray(identifier.nb_pc, dtype=np.float32)
        self._batched = True
        self._batched = self._agrees_with_py3langid(_PROBES)
        if self._batched:
            self._identifier = None  # its float16 copy of nb_ptc and its lists: ~30 MB a process

    def _agrees_with_py3langid(self, texts: Sequence[str]) -> bool:
        langs, probs = self.classify(texts)
        for text, lang, prob in zip(texts, langs, probs, strict=True):
            want, want_prob = self._identifier.classify(text)
            if lang != want or abs(prob - want_prob) > 1e-4:
                log.warning("batched language identification disagrees with py3langid's classify on %r (%s %.6f, "
                            "not %s %.6f): classifying one text at a time", text, lang, prob, want, want_prob)
                return False
        return True

    def classify(self, texts: Sequence[str]) -> tuple[list[str], np.ndarray]:
        """The language of each text and its probability (float32), as ``classify(text)`` returns them."""
        if not texts:
            return [], np.zeros(0, np.float32)
        if not self._batched:
            assert self._identifier is not None
            found = [self._identifier.classify(t) for t in texts]
            return [lang for lang, _ in found], np.array([p for _, p in found], dtype=np.float32)
        langs: list[str] = []
        probs = []
        for start in range(0, len(texts), _CHUNK):
            scores = self.probabilities(texts[start:start + _CHUNK])
            best = scores.argmax(axis=1)
            langs += [self.classes[i] for i in best.tolist()]
            probs.append(scores[np.arange(len(best)), best])
        return langs, np.concatenate(probs)

    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        """One row per text: ``_decide``'s normalised scores (aliases folded into their first column), all
        texts at once (``classify`` takes them in chunks)."""
        encoded = [unicodedata.normalize("NFC", t.lower() if t.isupper() else t).encode("utf-8", "surrogatepass")
                   for t in texts]
        lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        counts, visited = self._feature_counts(b"".join(encoded), lengths)
        np.log1p(counts.data, out=counts.data)
        scores = np.asarray(counts @ self._ptc, dtype=np.float32)
        scores += self._pc
        scores[~visited] = 0.0  # no feature visited: py3langid's zeros
        scores *= (1.0 / np.sqrt(np.maximum(lengths, 1))).astype(np.float32)[:, None]
        scores -= scores.max(axis=1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=1, keepdims=True)
        for i, j in self._alias_pairs:
            scores[:, i] += scores[:, j]
            scores[:, j] = 0.0
        return scores

    def _feature_counts(self, blob: bytes, lengths: np.ndarray) -> tuple[Any, np.ndarray]:
        """A CSR matrix (texts x features) of how often each text's walk emitted each feature, and
        whether it emitted any."""
        from scipy.sparse import coo_matrix

        n, total = len(lengths), int(lengths.sum())
        ends = np.cumsum(lengths)
        starts = ends - lengths
        buf = np.frombuffer(blob, dtype=np.uint8)
        feats = np.empty(total, dtype=np.int32)  # the feature emitted at each byte, text after text
        order = np.argsort(-lengths, kind="stable")
        by_len = lengths[order]
        # active[k]: how many texts are longer than k (they come first in `order`)
        steps = int(by_len[0]) if n else 0
        active = np.searchsorted(-by_len, -np.arange(1, steps + 1), side="right")
        pos = starts[order]
        state = np.zeros(n, dtype=np.int64)
        nm, rowbase, out = self._nm, self._rowbase, self._out
        k = 0
        while k < steps and active[k] >= _PYTHON_TAIL:
            m = int(active[k])
            p, s = pos[:m], state[:m]
            nxt = rowbase.take(s)
            nxt += buf.take(p)
            s[:] = nm.take(nxt)
            feats[p] = out.take(s)
            p += 1
            k += 1
        if k < steps:
            self._walk_tail(blob, feats, pos, state, order, ends, int(active[k]))
        # Counted through the transpose: COO -> CSR by feature is a counting sort that keeps the texts in
        # order within a feature, so duplicates are summed without sorting, and the transpose back to one
        # row per text (another counting sort) comes out sorted: ~1/3 faster than sorting each text's row.
        texts = np.repeat(np.arange(n, dtype=np.int32), lengths)
        by_feature = coo_matrix((np.ones(total, np.float32), (feats, texts)), shape=(len(self._ptc), n)).tocsr()
        matrix = by_feature.T.tocsr()
        # Texts whose walk emitted no feature get py3langid's zeros, not pc: count the empty emissions.
        empty = np.bincount(np.searchsorted(ends, np.flatnonzero(feats == self._none), side="right"), minlength=n)
        return matrix, empty < lengths

    def _walk_tail(self, blob: bytes, feats: np.ndarray, pos: np.ndarray, state: np.ndarray, order: np.ndarray,
                   ends: np.ndarray, m: int) -> None:
        """The rest of the walk for the `m` longest texts, in Python (py3langid's own loop)."""
        nm, rowbase, out = self._nm_list, self._rowbase_list, self._out_list
        for r in range(m):
            p, end, s = int(pos[r]), int(ends[order[r]]), int(state[r])
            emitted = []
            for byte in blob[p:end]:
                s = nm[rowbase[s] + byte]
                emitted.append(out[s])
            feats[p:end] = emitted


_BATCH: BatchIdentifier | None = None


def batch_identifier() -> BatchIdentifier:
    """The identifier with py3langid's bundled model, loaded once per process (about a second)."""
    global _BATCH
    if _BATCH is None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        _BATCH = BatchIdentifier(LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True))
    return _BATCH

