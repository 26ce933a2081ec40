"""Exact and near-duplicate removal for phase 0: hashing, MinHash, LSH, union-find.

    result = near_duplicates(records, DedupConfig(threshold=0.8))
    result.keep_ids   # ids kept, one representative per duplicate cluster
    result.removed    # one dict per removed record, with the similarity to what was kept
    result.edges      # every verified duplicate pair, for audit
    result.stats      # bands, rows, candidate pairs, clusters, timings ...

The pipeline, in order:

1. Normalise. A record's text is its instruction and response, lowercased, whitespace
   collapsed to single spaces. Records are processed in id order, so the result does not
   depend on the order they were given in.
2. Exact duplicates first: a 128-bit BLAKE2b digest of the normalised instruction and
   response (kept apart, so "a b" + "c" is not "a" + "b c"). Each group of identical records
   is represented by its smallest id for the rest of the pipeline; only those go into LSH.
3. MinHash signatures, vectorised. Every shingle (word n-gram or character n-gram; a text
   shorter than n is one shingle, the whole text) gets a 64-bit hash from a polynomial
   rolling hash computed for a whole batch of records at once with numpy prefix sums, so no
   Python code runs per shingle. The ``num_perm`` hash
   functions are multiply-add-shift, ``h_i(x) = ((a_i*x + b_i) mod 2**64) >> 32`` over the
   low 32 bits of the shingle hash: a strongly universal family (Dietzfelbinger 1996)
   evaluated for all permutations and all shingles of a batch in one numpy outer product,
   then reduced per record with ``np.minimum.reduceat``. Batches go to a process pool, one
   worker per core, which also computes the LSH band keys.
4. LSH. ``bands x rows`` is chosen as datasketch's ``_optimal_param`` does, by minimising
   the weighted area of false positives below and false negatives above the threshold
   (computed here with numpy quadrature, no scipy). The default weights favour recall
   (false negative 0.95, false positive 0.05): every candidate is verified afterwards, so a
   false positive costs one comparison while a false negative is a duplicate left in the
   data. For threshold 0.8 and 128 permutations that gives 16 bands of 8 rows, which makes a
   pair at Jaccard 0.8 a candidate with probability 0.95 and one at 0.85 with 0.99. Each
   band's rows are hashed to 64 bits and records are grouped by sorting.
5. Verification. ``verify="exact"`` (the default) keeps a candidate pair only when the exact
   Jaccard similarity of the two shingle-hash sets is at least the threshold, so precision
   does not depend on MinHash noise (about +-0.035 at 0.8 with 128 permutations). Pairs
   whose MinHash estimate is more than 5 standard deviations below the threshold are
   rejected without the exact check; the shingle sets are rebuilt only for records in the
   remaining pairs. ``verify="estimated"`` uses the signature agreement alone. Both numbers
   are reported for every edge and removal.
6. Clusters: union-find over the verified pairs and the exact-duplicate groups, so
   near-duplicates are merged transitively (a removed record can be below the threshold to
   the one kept for its cluster when a chain of verified pairs links them; its
   ``jaccard`` says so).
7. One representative per cluster (see ``_choose_representatives``): the member whose
   domain has the fewest records kept so far, then the longest response, then the smallest
   id.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache

import numpy as np

from cogumi.data.workers import pool_context

__all__ = ["DedupConfig", "DedupResult", "UnionFind", "near_duplicates", "normalise",
           "optimal_bands_rows", "shingle_hashes", "minhash_signatures", "exact_jaccard",
           "permutation_params"]


@dataclass(frozen=True)
class DedupConfig:
    threshold: float = 0.8
    """Jaccard similarity at or above which two records are near-duplicates."""
    num_perm: int = 128
    shingle: str = "word"
    """"word" (word n-grams) or "char" (character n-grams, spaces included)."""
    ngram: int | None = None
    """Shingle length; None means 3 for words and 5 for characters."""
    workers: int | None = None
    """Processes for signatures and shingle sets; None means every core this process may
    use."""
    seed: int = 1
    verify: str = "exact"
    """"exact" (Jaccard of shingle-hash sets) or "estimated" (MinHash agreement)."""
    false_positive_weight: float = 0.05
    false_negative_weight: float = 0.95
    max_bucket_pairs: int = 256
    """An LSH bucket with more members than this is linked as a chain of neighbours in id
    order (each with its next ``max_bucket_pairs`` members) instead of all pairs, to keep the
    candidate count linear when many records share a band; reported as ``large_buckets``."""
    batch_records: int = 2000
    """Records per task sent to a worker."""
    parallel_min_records: int = 20000
    """Below this many records everything runs in this process: starting workers costs
    more than it saves."""

    def __post_init__(self):
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.shingle not in ("word", "char"):
            raise ValueError(f"shingle must be 'word' or 'char', got {self.shingle!r}")
        if self.verify not in ("exact", "estimated"):
            raise ValueError(f"verify must be 'exact' or 'estimated', got {self.verify!r}")
        if self.ngram is not None and self.ngram < 1:
            raise ValueError(f"ngram must be at least 1, got {self.ngram}")
        if self.num_perm < 2:
            raise ValueError(f"num_perm must be at least 2, got {self.num_perm}")

    @property
    def n(self) -> int:
        if self.ngram is not None:
            return self.ngram
        return 3 if self.shingle == "word" else 5


@dataclass
class DedupResult:
    keep_ids: set[str]
    removed: list[dict]
    """One dict per removed record: id, kept_id (its cluster's representative), kind
    ("exact" or "near"), estimated_jaccard (MinHash agreement with kept_id), jaccard (exact
    Jaccard of shingle sets with kept_id, None under verify="estimated"), cluster_size."""
    edges: list[dict] = field(default_factory=list)
    """Every verified near-duplicate pair (between exact-group representatives): a, b,
    estimated_jaccard, jaccard. Pairs inside an exact-duplicate group are not listed."""
    stats: dict = field(default_factory=dict)
    """records, threshold, num_perm, bands, rows, shingle, ngram, verify, seed, workers,
    lsh_weights, candidate_probability_at (P(candidate) at several similarities),
    candidate_pairs, exact_checked_pairs, verified_pairs, exact_duplicates_removed,
    near_duplicates_removed, removed, clusters (with two or more members), largest_cluster,
    large_buckets, records_without_shingles, seconds and timings per stage."""


# --------------------------------------------------------------------------- normalisation

def normalise(text: str) -> str:
    """Lowercase and collapse every run of whitespace to one space."""
    return " ".join(text.lower().split())


def _record_text(instruction: str, response: str) -> tuple[str, bytes]:
    """(text to shingle, exact-duplicate digest) for one record."""
    inst, resp = normalise(instruction or ""), normalise(response or "")
    digest = hashlib.blake2b(f"{inst}\0{resp}".encode("utf-8", "surrogatepass"),
                             digest_size=16).digest()
    text = f"{inst} {resp}" if inst and resp else inst or resp
    return text, digest


# --------------------------------------------------------------------------- shingle hashing

_U64 = np.uint64
_POLY_BASE = 0x100000001B3  # odd, so it is invertible modulo 2**64
_POLY_BASE_INV = pow(_POLY_BASE, -1, 1 << 64)
_LENGTH_MIX = _U64(0x9E3779B97F4A7C15)


def _fmix64(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser, in place: spreads every input bit over every output
    bit, so the low 32 bits used by MinHash are as good as the high ones."""
    x ^= x >> _U64(33)
    x *= _U64(0xFF51AFD7ED558CCD)
    x ^= x >> _U64(33)
    x *= _U64(0xC4CEB9FE1A85EC53)
    x ^= x >> _U64(33)
    return x


@lru_cache(maxsize=4)
def _powers(length: int) -> tuple[np.ndarray, np.ndarray]:
    """BASE**k and BASE**-k modulo 2**64 for k < length (uint64 arithmetic wraps)."""
    fwd = np.full(length, _POLY_BASE, dtype=np.uint64)
    fwd[0] = 1
    inv = np.full(length, _POLY_BASE_INV, dtype=np.uint64)
    inv[0] = 1
    with np.errstate(over="ignore"):
        return np.cumprod(fwd, dtype=np.uint64), np.cumprod(inv, dtype=np.uint64)


def _pow_table(length: int) -> tuple[np.ndarray, np.ndarray]:
    # Round up so consecutive batches of similar size reuse one cached table.
    size = 1 << max(16, math.ceil(math.log2(length + 1)))
    return _powers(size)


def shingle_hashes(texts: Sequence[str], shingle: str = "word", n: int = 3
                   ) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of every shingle of every (already normalised) text, in one pass.

    Returns (hashes, offsets): the shingles of text i are hashes[offsets[i]:offsets[i+1]].
    A text shorter than n words (or characters) is one shingle: the whole text. An empty
    text has no shingles. Repeated shingles are kept (MinHash ignores them).

    How: the texts are joined with single spaces into one array of code points, and a
    polynomial prefix hash H over it gives any span's hash as (H[e] - H[s]) * BASE**-s in
    uint64 arithmetic, so every word or character n-gram of the batch is hashed with a few
    vectorised operations. Spans are hashed together with their length, then mixed.
    """
    lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    nonempty = lengths > 0
    joined = " ".join(t for t in texts if t)
    if not joined:
        return np.zeros(0, dtype=np.uint64), np.zeros(len(texts) + 1, dtype=np.int64)
    codes = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    size = codes.size
    fwd, inv = _pow_table(size)
    with np.errstate(over="ignore"):
        prefix = np.zeros(size + 1, dtype=np.uint64)
        # +1 so that a zero code point still contributes to the hash.
        np.cumsum((codes.astype(np.uint64) + _U64(1)) * fwd[:size], out=prefix[1:])

    ne_lengths = lengths[nonempty]
    starts = np.zeros(ne_lengths.size, dtype=np.int64)  # of each non-empty text in `codes`
    np.cumsum(ne_lengths[:-1] + 1, out=starts[1:])
    if shingle == "word":
        # Normalised texts have single spaces and no leading/trailing space, and texts are
        # joined with one space, so the words are exactly the runs between spaces.
        spaces = np.flatnonzero(codes == 32)
        word_start = np.concatenate(([0], spaces + 1))
        word_end = np.concatenate((spaces, [size]))
        words = np.fromiter((t.count(" ") + 1 for t in texts if t), dtype=np.int64,
                            count=ne_lengths.size)
        first_word = np.zeros(words.size, dtype=np.int64)
        np.cumsum(words[:-1], out=first_word[1:])
        counts = np.maximum(words - n + 1, 1)
        local = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        first = np.repeat(first_word, counts) + local
        last = np.minimum(first + (n - 1), np.repeat(first_word + words - 1, counts))
        span_start, span_end = word_start[first], word_end[last]
    elif shingle == "char":
        counts = np.maximum(ne_lengths - n + 1, 1)
        local = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        span_start = np.repeat(starts, counts) + local
        span_end = np.minimum(span_start + n, np.repeat(starts + ne_lengths, counts))
    else:
        raise ValueError(f"shingle must be 'word' or 'char', got {shingle!r}")

    with np.errstate(over="ignore"):
        hashes = (prefix[span_end] - prefix[span_start]) * inv[span_start]
        hashes += (span_end - span_start).astype(np.uint64) * _LENGTH_MIX
    _fmix64(hashes)
    all_counts = np.zeros(len(texts), dtype=np.int64)
    all_counts[nonempty] = counts
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(all_counts, out=offsets[1:])
    return hashes, offsets


# --------------------------------------------------------------------------- MinHash

_EMPTY = np.uint32(0xFFFFFFFF)
_CHUNK_ELEMENTS = 1 << 20  # shingles x permutations per numpy step: 8 MiB of uint64


def permutation_params(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random 64-bit (a, b) for the multiply-add-shift hash family, fixed by the seed."""
    rng = np.random.Generator(np.random.PCG64(seed))
    a = rng.integers(0, 1 << 64, size=num_perm, dtype=np.uint64, endpoint=False)
    b = rng.integers(0, 1 << 64, size=num_perm, dtype=np.uint64, endpoint=False)
    return a | _U64(1), b


def minhash_signatures(hashes: np.ndarray, offsets: np.ndarray, a: np.ndarray,
                       b: np.ndarray) -> np.ndarray:
    """(records, num_perm) uint32 signatures from shingle hashes grouped by offsets.

    For every permutation i and shingle x: v = (a_i * x32 + b_i) mod 2**64, and the signature
    is the top 32 bits of the minimum v (taking the top bits commutes with the minimum, so it
    is done once per record rather than once per shingle). A record without shingles gets
    all-ones. Work is done in chunks of whole records of about _CHUNK_ELEMENTS values, so the
    temporaries stay bounded (8 MiB) however large the batch; smaller chunks measured slower
    because of the per-call overhead of reduceat.
    """
    records = offsets.size - 1
    num_perm = a.size
    out = np.full((records, num_perm), _EMPTY, dtype=np.uint32)
    if records == 0:
        return out
    x = hashes & _U64(0xFFFFFFFF)
    has_shingles = np.diff(offsets) > 0
    per_chunk = max(1, _CHUNK_ELEMENTS // num_perm)  # shingles per chunk
    start = 0
    while start < records:
        # Extend the chunk record by record until it holds about per_chunk shingles.
        stop = int(np.searchsorted(offsets, offsets[start] + per_chunk, side="right")) - 1
        stop = min(max(stop, start + 1), records)
        lo, hi = int(offsets[start]), int(offsets[stop])
        if hi > lo:
            # Permutations along axis 0, shingles along axis 1: reduceat along the
            # contiguous axis is about ten times faster than along the other one.
            with np.errstate(over="ignore"):
                values = np.multiply.outer(a, x[lo:hi])
                values += b[:, None]
            rows = np.flatnonzero(has_shingles[start:stop])
            mins = np.minimum.reduceat(values, offsets[start:stop][rows] - lo, axis=1)
            out[start + rows] = (mins >> _U64(32)).astype(np.uint32).T
        start = stop
    return out


def _signature_task(args) -> tuple[list[bytes], np.ndarray, np.ndarray, np.ndarray]:
    """Worker: (instruction, response) pairs -> digests, signatures, LSH band keys and
    shingle counts. Band keys depend on one record only, so they are computed here, in
    parallel, rather than in the parent."""
    pairs, shingle, n, num_perm, seed, bands, rows = args
    texts, digests = [], []
    for instruction, response in pairs:
        text, digest = _record_text(instruction, response)
        texts.append(text)
        digests.append(digest)
    hashes, offsets = shingle_hashes(texts, shingle, n)
    a, b = permutation_params(num_perm, seed)
    signatures = minhash_signatures(hashes, offsets, a, b)
    return digests, signatures, _band_keys(signatures, bands, rows, seed), np.diff(offsets)


def _shingle_set_task(args) -> tuple[np.ndarray, np.ndarray]:
    """Worker: (instruction, response) pairs -> each record's sorted unique shingle hashes,
    concatenated, with offsets (one array back instead of thousands of small ones, which
    would cost more to pickle than to compute)."""
    pairs, shingle, n = args
    texts = [_record_text(i, r)[0] for i, r in pairs]
    hashes, offsets = shingle_hashes(texts, shingle, n)
    unique = [np.unique(hashes[offsets[k]:offsets[k + 1]]) for k in range(len(texts))]
    sizes = np.fromiter((u.size for u in unique), dtype=np.int64, count=len(unique))
    out_offsets = np.zeros(len(unique) + 1, dtype=np.int64)
    np.cumsum(sizes, out=out_offsets[1:])
    flat = np.concatenate(unique) if unique else np.zeros(0, dtype=np.uint64)
    return flat, out_offsets


def _worker_count(requested: int | None) -> int:
    if requested is not None:
        return max(1, requested)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class _Executor:
    """Maps tasks in order over a process pool, started on first use and kept for the whole
    call; in this process when one worker is asked for or a step has a single task."""

    def __init__(self, workers: int):
        self.workers = workers
        self._pool = None

    def map(self, function, tasks: list, parallel: bool = True) -> list:
        if not parallel or self.workers <= 1 or len(tasks) <= 1:
            return [function(task) for task in tasks]
        if self._pool is None:
            self._pool = pool_context(preload=[__name__]).Pool(self.workers)
        return self._pool.map(function, tasks, chunksize=1)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if self._pool is not None:
            if exc_type is None:
                self._pool.close()
            else:  # an error or an interrupt: do not wait for outstanding work
                self._pool.terminate()
            self._pool.join()


# --------------------------------------------------------------------------- LSH parameters

_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # renamed in numpy 2.0


def _collision_probability(s: np.ndarray, bands: int, rows: int) -> np.ndarray:
    return 1.0 - (1.0 - s ** rows) ** bands


@lru_cache(maxsize=32)
def optimal_bands_rows(threshold: float, num_perm: int, false_positive_weight: float = 0.5,
                       false_negative_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows) minimising fp_weight * FP area + fn_weight * FN area, as datasketch's
    ``_optimal_param``: FP area = integral over [0, t] of P(candidate | s), FN area = integral
    over [t, 1] of 1 - P(candidate | s). Integrals by the trapezoid rule on 4097 points
    (datasketch uses scipy's quad; the choices agree, which a test checks)."""
    below = np.linspace(0.0, threshold, 4097)
    above = np.linspace(threshold, 1.0, 4097)
    best, best_error = (0, 0), math.inf
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            fp = _trapezoid(_collision_probability(below, bands, rows), below)
            fn = _trapezoid(1.0 - _collision_probability(above, bands, rows), above)
            error = fp * false_positive_weight + fn * false_negative_weight
            if error < best_error:
                best, best_error = (bands, rows), error
    return best


# --------------------------------------------------------------------------- LSH buckets

def _band_keys(signatures: np.ndarray, bands: int, rows: int, seed: int) -> np.ndarray:
    """(bands, records) uint64: one hash per band of each signature. Two records share a key
    in a band when their rows agree (or, with probability ~2**-64, by collision, which
    verification removes)."""
    rng = np.random.Generator(np.random.PCG64(seed + 0x5EED))
    multipliers = rng.integers(1, 1 << 64, size=rows, dtype=np.uint64) | _U64(1)
    keys = np.empty((bands, signatures.shape[0]), dtype=np.uint64)
    columns = np.ascontiguousarray(signatures[:, :bands * rows].T)  # one row per permutation
    with np.errstate(over="ignore"):
        for band in range(bands):
            key = np.full(signatures.shape[0], band, dtype=np.uint64)
            for row in range(rows):
                key ^= columns[band * rows + row]
                key *= multipliers[row]
                key ^= key >> _U64(29)
            keys[band] = _fmix64(key)
    return keys


def _bucket_pairs(keys: np.ndarray, max_bucket_pairs: int) -> tuple[np.ndarray, int]:
    """Candidate pairs (i < j, encoded i * n + j, sorted, unique) from records that share a
    key in any band, and the number of buckets that were too large for all pairs."""
    n = keys.shape[1]
    found, large = [], 0
    for band_keys in keys:
        order = np.argsort(band_keys, kind="stable")  # stable: members stay in index order
        sorted_keys = band_keys[order]
        same_as_next = sorted_keys[1:] == sorted_keys[:-1]
        if not same_as_next.any():
            continue
        # Positions (in sorted order) of members of buckets with two or more records.
        boundaries = np.flatnonzero(np.diff(np.concatenate(([False], same_as_next, [False])
                                                            ).astype(np.int8)))
        run_starts, run_ends = boundaries[0::2], boundaries[1::2] + 1
        sizes = run_ends - run_starts
        large += int((sizes > max_bucket_pairs + 1).sum())
        in_run = np.zeros(sorted_keys.size, dtype=bool)
        in_run[:-1] |= same_as_next
        in_run[1:] |= same_as_next
        members = np.flatnonzero(in_run)  # runs in order, so run_end_of lines up with them
        run_end_of = np.repeat(run_ends, sizes)
        for gap in range(1, min(int(sizes.max()), max_bucket_pairs + 1)):
            ok = members + gap < run_end_of
            left, right = order[members[ok]], order[members[ok] + gap]
            found.append(np.minimum(left, right).astype(np.int64) * n
                         + np.maximum(left, right))
    if not found:
        return np.zeros(0, dtype=np.int64), large
    return np.unique(np.concatenate(found)), large


def _signature_agreement(signatures: np.ndarray, left: np.ndarray, right: np.ndarray
                         ) -> np.ndarray:
    """Estimated Jaccard (share of equal MinHash values) for each pair, in chunks."""
    out = np.empty(left.size, dtype=np.float64)
    step = 1 << 16
    for lo in range(0, left.size, step):
        hi = lo + step
        out[lo:hi] = (signatures[left[lo:hi]] == signatures[right[lo:hi]]).mean(axis=1)
    return out


def exact_jaccard(first: np.ndarray, second: np.ndarray) -> float:
    """Jaccard of two sorted arrays of unique values (an empty pair counts as identical)."""
    if first.size == 0 and second.size == 0:
        return 1.0
    if first.size > second.size:
        first, second = second, first
    if first.size == 0:
        return 0.0
    at = np.searchsorted(second, first)
    at[at == second.size] = 0
    common = int(np.count_nonzero(second[at] == first))
    return common / (first.size + second.size - common)


def _shingle_sets(indices: np.ndarray, texts_of: list[tuple[str, str]], step: int,
                  config: DedupConfig, executor: _Executor) -> dict[int, np.ndarray]:
    """Record index -> sorted unique shingle hashes, rebuilt (in parallel when there are
    many) for the records that take part in candidate pairs."""
    tasks = [([texts_of[i] for i in indices[k:k + step].tolist()], config.shingle, config.n)
             for k in range(0, indices.size, step)]
    parallel = indices.size >= config.parallel_min_records
    sets = [flat[offsets[k]:offsets[k + 1]]
            for flat, offsets in executor.map(_shingle_set_task, tasks, parallel)
            for k in range(offsets.size - 1)]
    return dict(zip(indices.tolist(), sets, strict=True))


# --------------------------------------------------------------------------- union-find

class UnionFind:
    """Disjoint sets over 0..n-1 with path halving and union by size."""

    def __init__(self, n: int):
        self.parent = list(range(n))
        self.size = [1] * n

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, x: int, y: int) -> int:
        x, y = self.find(x), self.find(y)
        if x == y:
            return x
        if self.size[x] < self.size[y]:
            x, y = y, x
        self.parent[y] = x
        self.size[x] += self.size[y]
        return x

    def groups(self) -> dict[int, list[int]]:
        """Root -> members (ascending), for every set with more than one member."""
        out: dict[int, list[int]] = {}
        for x in range(len(self.parent)):
            if self.size[self.find(x)] > 1:
                out.setdefault(self.find(x), []).append(x)
        return out


# --------------------------------------------------------------------------- the pipeline

class _Laps:
    """Wall time per pipeline stage, for stats."""

    def __init__(self):
        self.timings: dict[str, float] = {}
        self._clock = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round(now - self._clock, 4)
        self._clock = now


def _choose_representatives(records: list[dict], groups: list[list[int]]) -> list[int]:
    """The member kept for each cluster (clusters in order of their smallest id).

    Rule: the member whose domain has the fewest records kept so far, then the longest
    response, then the smallest id. "Kept so far" starts from the records in no cluster
    (all kept) and grows by one keeper per cluster, clusters taken in id order.

    Why: a cluster that spans domains (the same question tagged math in one source and
    reasoning in another) gives its one surviving copy to the domain that is currently
    smallest, so removals fall on the larger domains and a small domain is never eroded by
    near-duplicate removal; among domains of equal size the choice alternates instead of
    always favouring one, which a fixed ranking of domains would do. Within one domain the
    choice cannot change the domain mix; the longest response keeps the fullest answer. The
    id tie-break makes the choice deterministic and independent of input order.
    """
    in_cluster = {i for members in groups for i in members}
    kept: Counter = Counter(r.get("domain") for i, r in enumerate(records)
                            if i not in in_cluster)
    keepers = []
    for members in groups:
        keeper = min(members, key=lambda i: (kept[records[i].get("domain")],
                                             -len(records[i].get("response") or ""),
                                             records[i]["id"]))
        kept[records[keeper].get("domain")] += 1
        keepers.append(keeper)
    return keepers


def near_duplicates(records: Iterable[dict], config: DedupConfig | None = None
                    ) -> DedupResult:
    """Remove exact and near-duplicate records; see the module docstring for the method.

    records: dicts with at least id, instruction and response (domain is used to choose
    representatives). Ids must be unique.
    """
    config = config or DedupConfig()
    laps = _Laps()
    records = sorted(records, key=lambda r: r["id"])
    n = len(records)
    for prev, cur in zip(records, records[1:], strict=False):
        if prev["id"] == cur["id"]:
            raise ValueError(f"duplicate record id {cur['id']!r}")
    laps.lap("sort")
    workers = _worker_count(config.workers) if n >= config.parallel_min_records else 1
    bands, rows = optimal_bands_rows(config.threshold, config.num_perm,
                                     config.false_positive_weight, config.false_negative_weight)
    stats = {
        "records": n, "threshold": config.threshold, "num_perm": config.num_perm,
        "bands": bands, "rows": rows, "shingle": config.shingle, "ngram": config.n,
        "verify": config.verify, "seed": config.seed, "workers": workers,
        "lsh_weights": {"false_positive": config.false_positive_weight,
                        "false_negative": config.false_negative_weight},
        "candidate_probability_at": {
            str(s): round(float(_collision_probability(np.float64(s), bands, rows)), 4)
            for s in (0.5, 0.7, config.threshold, 0.85, 0.9, 0.95)},
    }
    if n == 0:
        stats.update(exact_duplicates_removed=0, near_duplicates_removed=0, removed=0,
                     candidate_pairs=0, exact_checked_pairs=0, verified_pairs=0, clusters=0, largest_cluster=0,
                     large_buckets=0, records_without_shingles=0, seconds=0.0, timings={})
        return DedupResult(set(), [], [], stats)

    with _Executor(workers) as executor:
        return _deduplicate(records, config, executor, stats, laps)


def _deduplicate(records: list[dict], config: DedupConfig, executor: _Executor, stats: dict,
                 laps: _Laps) -> DedupResult:
    n, workers = len(records), executor.workers
    bands, rows = stats["bands"], stats["rows"]
    # Signatures and exact digests, in parallel batches of records.
    pairs = [(r.get("instruction") or "", r.get("response") or "") for r in records]
    step = max(1, min(config.batch_records, math.ceil(n / workers)))
    tasks = [(pairs[lo:lo + step], config.shingle, config.n, config.num_perm, config.seed,
              bands, rows) for lo in range(0, n, step)]
    signatures = np.empty((n, config.num_perm), dtype=np.uint32)
    digests: list[bytes] = []
    shingle_counts = np.empty(n, dtype=np.int64)
    lo = 0
    keys = np.empty((bands, n), dtype=np.uint64)
    for batch_digests, batch_signatures, batch_keys, batch_counts in executor.map(
            _signature_task, tasks):
        hi = lo + len(batch_digests)
        digests.extend(batch_digests)
        signatures[lo:hi] = batch_signatures
        keys[:, lo:hi] = batch_keys
        shingle_counts[lo:hi] = batch_counts
        lo = hi
    laps.lap("signatures")

    # Exact duplicates: every record points at its group's first (smallest id) member.
    first_with: dict[bytes, int] = {}
    canonical = np.empty(n, dtype=np.int64)
    for index, digest in enumerate(digests):
        canonical[index] = first_with.setdefault(digest, index)
    del digests, first_with
    unique = np.flatnonzero(canonical == np.arange(n))
    laps.lap("exact")

    # LSH over the representatives of exact groups only.
    encoded, large_buckets = _bucket_pairs(keys[:, unique], config.max_bucket_pairs)
    del keys
    m = unique.size
    left, right = unique[encoded // m], unique[encoded % m]
    estimated = _signature_agreement(signatures, left, right)
    laps.lap("lsh")

    # Verification.
    exact = np.full(left.size, np.nan)
    shingle_sets: dict[int, np.ndarray] = {}
    if config.verify == "exact":
        # Only pairs whose estimate is within 5 standard deviations of the threshold get an
        # exact check: a pair truly at the threshold has an estimate below that with
        # probability under 1e-6, and most candidates from the recall-leaning bands are far
        # below it.
        margin = 5.0 * math.sqrt(config.threshold * (1 - config.threshold) / config.num_perm)
        plausible = np.flatnonzero(estimated >= config.threshold - margin)
        shingle_sets = _shingle_sets(np.unique(np.concatenate((left[plausible],
                                                              right[plausible]))),
                                     pairs, step, config, executor)
        exact[plausible] = np.fromiter(
            (exact_jaccard(shingle_sets[i], shingle_sets[j])
             for i, j in zip(left[plausible].tolist(), right[plausible].tolist(), strict=True)),
            dtype=np.float64, count=plausible.size)
        verified = exact >= config.threshold  # NaN (not checked) compares False
        stats["exact_checked_pairs"] = int(plausible.size)
    else:
        verified = estimated >= config.threshold
        stats["exact_checked_pairs"] = 0
    laps.lap("verify")

    # Clusters.
    union_find = UnionFind(n)
    for index in np.flatnonzero(canonical != np.arange(n)).tolist():
        union_find.union(index, int(canonical[index]))
    for i, j in zip(left[verified].tolist(), right[verified].tolist(), strict=True):
        union_find.union(i, j)
    groups = union_find.groups()

    clusters = sorted(groups.values())  # members ascending, so this is smallest-id order
    removed: list[dict] = []
    near_pairs: list[tuple[int, int]] = []  # (member, keeper) canonicals of near removals
    for members, keeper in zip(clusters, _choose_representatives(records, clusters),
                               strict=True):
        kept_canonical = int(canonical[keeper])
        for member in members:
            if member == keeper:
                continue
            member_canonical = int(canonical[member])
            entry = {"id": records[member]["id"], "kept_id": records[keeper]["id"],
                     "kind": "exact", "estimated_jaccard": 1.0, "jaccard": 1.0,
                     "cluster_size": len(members)}
            if member_canonical != kept_canonical:
                near_pairs.append((member_canonical, kept_canonical))
                entry.update(kind="near", estimated_jaccard=None, jaccard=None)
            removed.append(entry)
    # Similarity of each near removal to what was kept (below the threshold only when the
    # two are linked through other verified pairs).
    member_of = np.array([m for m, _ in near_pairs], dtype=np.int64)
    keeper_of = np.array([k for _, k in near_pairs], dtype=np.int64)
    near_estimated = _signature_agreement(signatures, member_of, keeper_of)
    # Every near removal and its keeper are in a verified pair, so their sets are built.
    near_exact = ([exact_jaccard(shingle_sets[m], shingle_sets[k]) for m, k in near_pairs]
                  if config.verify == "exact" else None)
    near_entries = (entry for entry in removed if entry["kind"] == "near")
    for k, entry in enumerate(near_entries):
        entry["estimated_jaccard"] = round(float(near_estimated[k]), 4)
        if near_exact is not None:
            entry["jaccard"] = round(float(near_exact[k]), 4)
    removed.sort(key=lambda r: r["id"])
    removed_ids = {r["id"] for r in removed}
    keep_ids = {r["id"] for r in records if r["id"] not in removed_ids}
    edges = [{"a": records[i]["id"], "b": records[j]["id"], "estimated_jaccard": round(e, 4),
              "jaccard": None if math.isnan(x) else round(x, 4)}
             for i, j, e, x in zip(left[verified].tolist(), right[verified].tolist(),
                                   estimated[verified].tolist(), exact[verified].tolist(),
                                   strict=True)]
    laps.lap("clusters")

    sizes = [len(g) for g in groups.values()]
    stats.update(
        exact_duplicates_removed=sum(r["kind"] == "exact" for r in removed),
        near_duplicates_removed=sum(r["kind"] == "near" for r in removed),
        removed=len(removed),
        candidate_pairs=int(encoded.size),
        verified_pairs=int(verified.sum()),
        clusters=len(groups),
        largest_cluster=max(sizes, default=0),
        large_buckets=large_buckets,
        records_without_shingles=int((shingle_counts == 0).sum()),
        seconds=round(sum(laps.timings.values()), 4),
        timings=laps.timings,
    )
    return DedupResult(keep_ids, removed, edges, stats)


def config_dict(config: DedupConfig) -> dict:
    """The config as plain data, for reports."""
    return asdict(config)
