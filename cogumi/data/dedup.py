"""Exact and near-duplicate removal for phase 0: hashing, MinHash-LSH (rensa), union-find.

    result = near_duplicates(records, DedupConfig(threshold=0.8))
    result.keep_ids   # ids kept, one representative per duplicate cluster
    result.removed    # one dict per removed record, with the similarity to what was kept
    result.edges      # every verified duplicate pair, for audit
    result.stats      # bands, rows, candidate pairs, clusters, timings ...

The pipeline, in order:

1. Normalise. A record's text is its instruction and response, lowercased, whitespace
   collapsed to single spaces. Records are processed in id order, so the result does not
   depend on the order they were given in.
2. Exact duplicates first: records whose normalised instruction and normalised response are
   both equal (compared apart, so "a b" + "c" is not "a" + "b c": the key is the joined text
   and where the instruction ends in it). Each group of identical records
   is represented by its smallest id for the rest of the pipeline; only those go into LSH.
3. MinHash signatures by rensa (R-MinHash, in Rust): every shingle (word n-gram or
   character n-gram, as a string; a text shorter than n is one shingle, the whole text) of a
   batch of records goes to ``RMinHash.from_token_sets`` in one call. rensa replaced the
   hand-written numpy MinHash this module had: benchmarks/bench_dedup.py measures it against
   that, datasketch and datatrove in one run on one corpus.
4. LSH. ``bands x rows`` is chosen as datasketch's ``_optimal_param`` does, by minimising
   the weighted area of false positives below and false negatives above the threshold
   (computed here with numpy quadrature, no scipy). The default weights favour recall
   (false negative 0.95, false positive 0.05): every candidate is verified afterwards, so a
   false positive costs one comparison while a false negative is a duplicate left in the
   data. For threshold 0.8 and 128 permutations that gives 16 bands of 8 rows, which makes a
   pair at Jaccard 0.8 a candidate with probability 0.95 and one at 0.85 with 0.99. rensa's
   ``RMinHashLSH`` needs the signature length to be bands x rows exactly, so signatures have
   ``bands * rows`` slots (128 for the defaults; ``num_perm`` is the most that are used, as in
   datasketch). ``insert_many`` then ``query_all`` give every record's candidates.
5. Verification. ``verify="exact"`` (the default) keeps a candidate pair only when the exact
   Jaccard similarity of the two shingle sets is at least the threshold, so precision does
   not depend on MinHash noise (about +-0.035 at 0.8 with 128 permutations). Pairs whose
   MinHash estimate is more than 5 standard deviations below the threshold are rejected
   without the exact check; the shingle sets are rebuilt only for records in the remaining
   pairs. ``verify="estimated"`` uses the signature agreement alone. Both numbers are
   reported for every edge and removal.
6. Clusters: union-find over the verified pairs and the exact-duplicate groups, so
   near-duplicates are merged transitively (a removed record can be below the threshold to
   the one kept for its cluster when a chain of verified pairs links them; its
   ``jaccard`` says so).
7. One representative per cluster (see ``_choose_representatives``): the member whose
   domain has the fewest records kept so far, then the longest response, then the smallest
   id.

Speed. Shingling is Python code holding the GIL, so with ``workers`` of 2 or more (None:
every core) and at least 20K records, a helper process (``_Helper``, a subprocess) normalises,
shingles and sketches the later records (about 40% of the characters) while this process does
the rest, and later checks half of the candidate pairs; the result is the same as with one
process (a test checks). Python's cyclic garbage collector is paused during the call.
"""

from __future__ import annotations

import gc
import math
import os
import pickle
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from operator import itemgetter

import numpy as np

__all__ = ["DedupConfig", "DedupResult", "UnionFind", "near_duplicates", "normalise",
           "optimal_bands_rows", "shingles", "exact_jaccard"]


@dataclass(frozen=True)
class DedupConfig:
    threshold: float = 0.8
    """Jaccard similarity at or above which two records are near-duplicates."""
    num_perm: int = 128
    """Signature length; the LSH uses bands x rows of them (all 128 for the defaults)."""
    shingle: str = "word"
    """"word" (word n-grams) or "char" (character n-grams, spaces included)."""
    ngram: int | None = None
    """Shingle length; None means 3 for words and 5 for characters."""
    workers: int | None = None
    """Threads rensa may use (Rayon's RAYON_NUM_THREADS, which Rayon reads once per process,
    when rensa first starts its threads: a later call cannot change it); None leaves rensa's
    default, every core. Two or more (None on a machine with two or more cores) also lets a
    helper process take a share of the Python shingling on 20K records or more."""
    seed: int = 1
    verify: str = "exact"
    """"exact" (Jaccard of shingle sets) or "estimated" (MinHash agreement)."""
    false_positive_weight: float = 0.05
    false_negative_weight: float = 0.95
    max_bucket_pairs: int = 256
    """A record with more LSH candidates than this after it (in id order) is linked to its
    next ``max_bucket_pairs`` only, to keep the candidate count linear when many records
    share a band; the chain still puts them in one cluster. Counted as ``large_buckets``."""
    batch_records: int = 20000
    """Records shingled and sketched per rensa call: bounds the memory held by shingle
    strings."""

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
        if self.batch_records < 1:
            raise ValueError(f"batch_records must be at least 1, got {self.batch_records}")

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
    """records, threshold, num_perm, signature_slots, bands, rows, shingle, ngram, verify,
    seed, workers, processes (2 when a helper process shared the work), minhash (library and version), lsh_weights, candidate_probability_at
    (P(candidate) at several similarities), candidate_pairs, exact_checked_pairs,
    verified_pairs, exact_duplicates_removed, near_duplicates_removed, removed, clusters
    (with two or more members), largest_cluster, large_buckets, records_without_shingles,
    seconds and timings per stage."""


# --------------------------------------------------------------------------- normalisation

def normalise(text: str) -> str:
    """Lowercase and collapse every run of whitespace to one space."""
    return " ".join(text.lower().split())


def _record_text(instruction: str, response: str) -> tuple[str, int]:
    """(text to shingle, length of the normalised instruction) for one record. The pair is
    the exact-duplicate key: with the instruction's length, the text gives back both parts
    (an empty part adds no space), and it costs no hashing beyond Python's own."""
    inst, resp = normalise(instruction or ""), normalise(response or "")
    return (f"{inst} {resp}" if inst and resp else inst or resp), len(inst)


def _word_ngrams(words: list[str], n: int) -> list[str]:
    """Word n-grams joined by single spaces (fewer than n words: one, all of them)."""
    if len(words) <= n:
        return [" ".join(words)] if words else []
    if n == 3:  # the default; an f-string is the cheapest way to build them
        return [f"{a} {b} {c}" for a, b, c in zip(words, words[1:], words[2:], strict=False)]
    return list(map(" ".join, zip(*[words[k:] for k in range(n)], strict=False)))


def shingles(text: str, shingle: str = "word", n: int = 3) -> list[str]:
    """The shingles of an (already normalised) text, repeats kept: word n-grams joined by
    single spaces, or character n-grams. A text shorter than n words (or characters) is one
    shingle, the whole text; an empty text has none."""
    if not text:
        return []
    if shingle == "word":
        return _word_ngrams(text.split(), n)
    if shingle == "char":
        if len(text) <= n:
            return [text]
        return [text[k:k + n] for k in range(len(text) - n + 1)]
    raise ValueError(f"shingle must be 'word' or 'char', got {shingle!r}")


def exact_jaccard(first: set, second: set) -> float:
    """Jaccard of two shingle sets (two empty sets count as identical)."""
    if not first and not second:
        return 1.0
    common = len(first & second)
    return common / (len(first) + len(second) - common)


def _rensa(workers: int | None):
    """rensa, imported here so that a thread cap can reach Rayon before its pool starts."""
    if workers is not None and "rensa" not in sys.modules:
        os.environ.setdefault("RAYON_NUM_THREADS", str(max(1, workers)))
    import rensa

    return rensa


def _worker_count(requested: int | None) -> int:
    if requested is not None:
        return max(1, requested)
    if os.environ.get("RAYON_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["RAYON_NUM_THREADS"]))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


# --------------------------------------------------------------------------- LSH parameters

_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # renamed in numpy 2.0


def _collision_probability(s: np.ndarray, bands: int, rows: int) -> np.ndarray:
    return 1.0 - (1.0 - s ** rows) ** bands


@lru_cache(maxsize=32)
def optimal_bands_rows(threshold: float, num_perm: int, false_positive_weight: float = 0.5,
                       false_negative_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows) minimising fp_weight * FP area + fn_weight * FN area, as datasketch's
    ``_optimal_param``: FP area = integral over [0, t] of P(candidate | s), FN area = integral
    over [t, 1] of 1 - P(candidate | s). Integrals by the trapezoid rule on 1025 points
    (datasketch uses scipy's quad; the choices agree, which a test checks)."""
    below = np.linspace(0.0, threshold, 1025)
    above = np.linspace(threshold, 1.0, 1025)
    best, best_error = (0, 0), math.inf
    for rows in range(1, num_perm + 1):
        # Every band count for these rows at once, (1 - s^r)^b as exp(b * log1p(-s^r)): a
        # loop of pow over every shape on 4097 points took 0.2 s per process, inside phase
        # 0's dedup time; this takes about 0.03 s, and on thresholds 0.3 to 0.95 with 16 to
        # 256 permutations it chose the same shapes as that loop and datasketch.
        bands = np.arange(1, num_perm // rows + 1, dtype=np.float64)[:, None]
        with np.errstate(divide="ignore"):  # s = 1: log1p(-1) = -inf, exp(-inf) = 0
            miss_below = np.exp(bands * np.log1p(-below ** rows))
            miss_above = np.exp(bands * np.log1p(-above ** rows))
        fp = _trapezoid(1.0 - miss_below, below, axis=1)
        fn = _trapezoid(miss_above, above, axis=1)
        error = fp * false_positive_weight + fn * false_negative_weight
        at = int(np.argmin(error))
        # Ties keep the fewest bands, then the fewest rows, as datasketch's loop does.
        if error[at] < best_error or (error[at] == best_error and at + 1 < best[0]):
            best, best_error = (at + 1, rows), float(error[at])
    return best


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
        parent, size = self.parent, self.size
        out: dict[int, list[int]] = {}
        # Members of sets with more than one: every non-root, and the roots that have some.
        for x in [x for x in range(len(parent)) if parent[x] != x or size[x] > 1]:
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


# --------------------------------------------------------------------------- a second process

_PROCESS_MIN_RECORDS = 10_000
"""Fewest records per process before a helper process is started: starting one costs about
0.2 s of CPU, which shingling about 10K records takes."""

_HELPER_CODE = (
    "import pickle, sys\n"
    "sys.path[:0] = pickle.load(sys.stdin.buffer)\n"
    "out, sys.stdout = sys.stdout.buffer, sys.stderr  # stdout carries pickles only\n"
    "from cogumi.data.dedup import _serve\n"
    "_serve(sys.stdin.buffer, out)\n")


def _prepare_share(parts: list[tuple[str, str]], shingle: str, n: int, slots: int, seed: int,
                   batch: int) -> tuple[list[tuple[str, int]], list[int], list]:
    """For consecutive records given as (instruction, response): each one's exact-duplicate
    key (see _record_text), the positions of the first record with each key (in this share;
    a later share may still find the key in an earlier one), and their rensa signatures, a
    batch of records per call (bounds the shingle strings held)."""
    import rensa

    keys: list[tuple[str, int]] = []
    firsts: list[int] = []
    sketches: list = []
    first_with: dict[tuple[str, int], int] = {}
    for lo in range(0, len(parts), batch):
        tokens = []
        for k, (instruction, response) in enumerate(parts[lo:lo + batch], lo):
            # _record_text's key, from words split once for the key and the shingles both.
            instruction_words = instruction.lower().split()
            words = instruction_words + response.lower().split()
            key = (" ".join(words), len(" ".join(instruction_words)))
            keys.append(key)
            if first_with.setdefault(key, k) == k:
                firsts.append(k)
                tokens.append(_word_ngrams(words, n) if shingle == "word"
                              else shingles(key[0], shingle, n))
        sketches += rensa.RMinHash.from_token_sets(tokens, num_perm=slots, seed=seed)
    return keys, firsts, sketches


def _pair_jaccards(texts: dict[int, str], left: list[int], right: list[int], shingle: str,
                   n: int) -> list[float]:
    """Exact Jaccard of each pair's shingle sets, each set built once."""
    sets = {i: set(shingles(text, shingle, n)) for i, text in texts.items()}
    return [exact_jaccard(sets[i], sets[j]) for i, j in zip(left, right, strict=True)]


def _serve(requests, replies) -> None:
    """The helper process: answer pickled (task, args) requests until stdin closes."""
    tasks = {"prepare_share": _prepare_share, "pair_jaccards": _pair_jaccards}
    gc.disable()  # as in near_duplicates: nothing here can form a cycle
    while True:
        try:
            task, args = pickle.load(requests)
        except EOFError:
            return
        try:
            reply = (True, tasks[task](*args))
        except Exception as error:  # noqa: BLE001 - sent back, raised in the parent
            reply = (False, f"{type(error).__name__}: {error}")
        pickle.dump(reply, replies, protocol=pickle.HIGHEST_PROTOCOL)
        replies.flush()


class _Helper:
    """A second Python process that takes a share of the shingling (Python code that holds
    the GIL, so threads cannot split it): the parent sends a task, does its own share, then
    reads the answer. Started with subprocess rather than multiprocessing, so the caller's
    main module is never re-imported; rensa in it uses one thread."""

    def __init__(self):
        env = dict(os.environ, RAYON_NUM_THREADS="1")
        self._process = subprocess.Popen([sys.executable, "-c", _HELPER_CODE],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         env=env)
        self._writer: threading.Thread | None = None
        self._send(list(sys.path))

    def _send(self, payload: object) -> None:
        data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
        if self._writer is not None:
            self._writer.join()

        def write() -> None:
            try:
                self._process.stdin.write(data)
                self._process.stdin.flush()
            except (BrokenPipeError, OSError):
                pass  # the process died; result() says so

        # Written from a thread: the pipe takes 64 KB at a time and the helper may still be
        # starting, so the parent goes on with its own share meanwhile.
        self._writer = threading.Thread(target=write, daemon=True)
        self._writer.start()

    def submit(self, task: str, *args) -> None:
        self._send((task, args))

    def result(self):
        try:
            ok, value = pickle.load(self._process.stdout)
        except (EOFError, pickle.UnpicklingError) as error:
            try:
                code = self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                code = None
            raise RuntimeError(f"dedup helper process ended without an answer (exit code "
                               f"{code}): {error or 'no output'}") from None
        if not ok:
            raise RuntimeError(f"dedup helper process failed: {value}")
        return value

    def close(self) -> None:
        if self._writer is not None:
            self._writer.join(timeout=5)
        try:
            self._process.stdin.close()
        except OSError:
            pass
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process.stdout.close()


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
    # The cyclic garbage collector is paused for the call: it would walk every record dict
    # and shingle list again each time enough new lists pile up (about 0.4 s of 5 on 66K
    # records), and nothing made here can form a cycle.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _near_duplicates(records, config)
    finally:
        if collecting:
            gc.enable()


def _near_duplicates(records: Iterable[dict], config: DedupConfig) -> DedupResult:
    laps = _Laps()
    records = sorted(records, key=itemgetter("id"))
    n = len(records)
    for prev, cur in zip(records, records[1:], strict=False):
        if prev["id"] == cur["id"]:
            raise ValueError(f"duplicate record id {cur['id']!r}")
    laps.lap("sort")
    processes = 2 if (_worker_count(config.workers) > 1
                      and n >= 2 * _PROCESS_MIN_RECORDS) else 1
    # Started first: it imports numpy and rensa while this process finds exact duplicates.
    helper = _Helper() if processes > 1 else None
    try:
        return _prepare(records, config, laps, helper)
    finally:
        if helper is not None:
            helper.close()


def _prepare(records: list[dict], config: DedupConfig, laps: _Laps, helper: _Helper | None
             ) -> DedupResult:
    n = len(records)
    _rensa(config.workers)  # before rensa first runs: Rayon reads its thread cap once
    bands, rows = optimal_bands_rows(config.threshold, config.num_perm,
                                     config.false_positive_weight, config.false_negative_weight)
    stats = {
        "records": n, "threshold": config.threshold, "num_perm": config.num_perm,
        "signature_slots": bands * rows, "bands": bands, "rows": rows,
        "shingle": config.shingle, "ngram": config.n, "verify": config.verify,
        "seed": config.seed, "workers": _worker_count(config.workers),
        "processes": 1 if helper is None else 2,
        "minhash": None,  # filled while a helper works: reading the version takes 0.15 s
        "lsh_weights": {"false_positive": config.false_positive_weight,
                        "false_negative": config.false_negative_weight},
        "candidate_probability_at": {
            str(s): round(float(_collision_probability(np.float64(s), bands, rows)), 4)
            for s in (0.5, 0.7, config.threshold, 0.85, 0.9, 0.95)},
    }
    if n == 0:
        stats["minhash"] = _minhash_name()
        stats.update(exact_duplicates_removed=0, near_duplicates_removed=0, removed=0,
                     candidate_pairs=0, exact_checked_pairs=0, verified_pairs=0, clusters=0,
                     largest_cluster=0, large_buckets=0, records_without_shingles=0,
                     seconds=0.0, timings={})
        return DedupResult(set(), [], [], stats)
    return _deduplicate(records, config, stats, laps, helper)


@lru_cache(maxsize=1)
def _minhash_name() -> str:
    from importlib import metadata

    return f"rensa {metadata.version('rensa')} RMinHash + RMinHashLSH"


def _split_at(weights: list[int], share: float) -> int:
    """The index that leaves about ``share`` of the total weight after it."""
    total, running = sum(weights), 0
    for index, weight in enumerate(weights):
        if running >= total * (1 - share):
            return index
        running += weight
    return len(weights)


def _deduplicate(records: list[dict], config: DedupConfig, stats: dict, laps: _Laps,
                 helper: _Helper | None) -> DedupResult:
    n = len(records)
    bands, rows = stats["bands"], stats["rows"]
    slots = bands * rows

    # Exact-duplicate keys and signatures: with a helper, it takes the later records (about
    # 40% of the characters: it also starts up, and pickles its signatures back) while this
    # process does the first; each sketches the first record with each key in its share.
    parts = [(r.get("instruction") or "", r.get("response") or "") for r in records]
    share_args = (config.shingle, config.n, slots, config.seed, config.batch_records)
    cut = n if helper is None else _split_at([len(a) + len(b) for a, b in parts], 0.4)
    if cut < n:
        helper.submit("prepare_share", parts[cut:], *share_args)
    keys, firsts, sketches = _prepare_share(parts[:cut], *share_args)
    stats["minhash"] = _minhash_name()
    laps.lap("signatures")
    if cut < n:
        their_keys, their_firsts, their_sketches = helper.result()
        keys += their_keys
        firsts += [cut + k for k in their_firsts]
        sketches += their_sketches
        del their_keys, their_firsts, their_sketches
    del parts

    # Exact duplicates: every record points at its group's first (smallest id) member; only
    # those keep their signatures.
    first_with: dict[tuple[str, int], int] = {}
    canonical = np.fromiter((first_with.setdefault(key, index) for index, key in enumerate(keys)),
                            dtype=np.int64, count=n)
    del first_with
    texts = [key[0] for key in keys]
    del keys
    is_first = canonical == np.arange(n)
    unique = np.flatnonzero(is_first)
    if unique.size < len(sketches):  # a later share's first copy of an earlier share's key
        sketches = [sketch for sketch, keep in zip(sketches, is_first[firsts].tolist(),
                                                   strict=True) if keep]
    del firsts
    position = np.full(n, -1, dtype=np.int64)  # record index -> its row among `unique`
    position[unique] = np.arange(unique.size)
    laps.lap("exact")

    # LSH: candidates of each representative after it in id order, capped (see
    # max_bucket_pairs).
    import rensa

    lsh = rensa.RMinHashLSH(threshold=config.threshold, num_perm=slots, num_bands=bands)
    lsh.insert_many(sketches)  # keys are positions in `unique`
    left_list, right_list, large_buckets = [], [], 0
    for k, hits in enumerate(lsh.query_all(sketches)):
        if len(hits) < 2:  # only itself: most records
            continue
        later = sorted(j for j in hits if j > k)
        if len(later) > config.max_bucket_pairs:
            large_buckets += 1
            later = later[:config.max_bucket_pairs]
        left_list += [k] * len(later)
        right_list += later
    del lsh
    estimated = np.fromiter((sketches[i].jaccard(sketches[j])
                             for i, j in zip(left_list, right_list, strict=True)),
                            dtype=np.float64, count=len(left_list))
    left = unique[np.array(left_list, dtype=np.int64)]
    right = unique[np.array(right_list, dtype=np.int64)]
    del left_list, right_list
    laps.lap("lsh")

    # Verification.
    exact = np.full(left.size, np.nan)
    shingle_sets: dict[int, set] = {}
    if config.verify == "exact":
        # Only pairs whose estimate is within 5 standard deviations of the threshold get an
        # exact check: a pair truly at the threshold has an estimate below that with
        # probability under 1e-6, and most candidates from the recall-leaning bands are far
        # below it.
        margin = 5.0 * math.sqrt(config.threshold * (1 - config.threshold) / slots)
        plausible = np.flatnonzero(estimated >= config.threshold - margin)
        checked_left, checked_right = left[plausible].tolist(), right[plausible].tolist()
        # With a helper, it checks the later half of the pairs (they are in id order of
        # their first record) from the texts of their records; this process the rest.
        cut = len(checked_left) if helper is None else len(checked_left) // 2
        if cut < len(checked_left):
            theirs = set(checked_left[cut:]) | set(checked_right[cut:])
            helper.submit("pair_jaccards", {i: texts[i] for i in theirs},
                          checked_left[cut:], checked_right[cut:], config.shingle, config.n)
        for i in set(checked_left[:cut]) | set(checked_right[:cut]):
            shingle_sets[i] = set(shingles(texts[i], config.shingle, config.n))
        values = [exact_jaccard(shingle_sets[i], shingle_sets[j])
                  for i, j in zip(checked_left[:cut], checked_right[:cut], strict=True)]
        if cut < len(checked_left):
            values += helper.result()
        exact[plausible] = values
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
    # two are linked through other verified pairs): a verified pair's own value, else from
    # the shingle sets (built here when the helper checked their pairs).
    verified_exact = dict(zip(zip(left[verified].tolist(), right[verified].tolist(),
                                  strict=True), exact[verified].tolist(), strict=True))

    def shingle_set(i: int) -> set:
        if i not in shingle_sets:
            shingle_sets[i] = set(shingles(texts[i], config.shingle, config.n))
        return shingle_sets[i]

    near_entries = (entry for entry in removed if entry["kind"] == "near")
    for (member, keeper), entry in zip(near_pairs, near_entries, strict=True):
        entry["estimated_jaccard"] = round(
            sketches[position[member]].jaccard(sketches[position[keeper]]), 4)
        if config.verify == "exact":
            pair = (min(member, keeper), max(member, keeper))
            value = verified_exact.get(pair)
            if value is None:
                value = exact_jaccard(shingle_set(member), shingle_set(keeper))
            entry["jaccard"] = round(value, 4)
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
        candidate_pairs=int(left.size),
        verified_pairs=int(verified.sum()),
        clusters=len(groups),
        largest_cluster=max(sizes, default=0),
        large_buckets=large_buckets,
        records_without_shingles=sum(not t for t in texts),
        seconds=round(sum(laps.timings.values()), 4),
        timings=laps.timings,
    )
    return DedupResult(keep_ids, removed, edges, stats)


def config_dict(config: DedupConfig) -> dict:
    """The config as plain data, for reports."""
    return asdict(config)
