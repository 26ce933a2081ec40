"""Benchmark near-duplicate removal: what phase 0 ships against three maintained MinHash
libraries at their fastest, in one run on one corpus, with exact Jaccard as ground truth.

    python benchmarks/bench_dedup.py            # writes benchmarks/results/dedup.json

The corpus: docstrings of every module, class and function in the Python standard library and
the installed packages (parsed with ast, never imported), in sorted file order, turned into
instruction-response records (a docstring's first paragraph is the instruction and the
following paragraphs, up to about 150 words, the response; a one-paragraph docstring gets
"Explain `module.name`." as its instruction). Records identical after normalisation are
dropped, as phase 0 does before near-duplicate removal. With --joined, more records are made
by joining three natural records drawn at random (to reach a large record count: the
docstrings run out near 110K). Then near-duplicates are planted: copies of randomly chosen
natural records whose responses are edited (word substitutions, deletions, insertions) until
the exact Jaccard of their word-trigram sets with the original is closest to a target level
between 0.5 and 0.95; the achieved value is recorded for each. The corpus is shuffled.

Each implementation runs in its own subprocess (so that peak memory is its own: the resident
memory of that process and every process it starts, sampled every 50 ms), on the same corpus
file, all at threshold 0.8 with 128 permutations split into the bands x rows that ours
chooses (16 x 8), word 3-gram shingles of the lowercased, whitespace-collapsed text:
- ours: cogumi.data.dedup.near_duplicates with phase 0's defaults (rensa's MinHash and LSH
  inside since this benchmark showed rensa faster than our hand-written numpy MinHash; the
  exact duplicates, verification, clusters and audit fields are ours; on 2 cores it starts
  one helper process for a share of the Python shingling and of the exact checks);
- datasketch: MinHash.bulk (update_batch under it) with xxhash as hashfunc, MinHashLSH with
  params=(16, 8) filled through insertion_session, one query per record; candidate pairs
  verified on exact Jaccard of their shingle sets, clusters by union-find;
- rensa: RMinHash.from_token_sets (its batch path, in Rust), RMinHashLSH with 16 bands,
  insert_many and query_all; verified and clustered as for datasketch;
- datatrove: its four MinHash steps (signature, buckets, cluster, filter) in
  LocalPipelineExecutor, reading the corpus from JSONL shards, one task per core (16 bucket
  tasks); 16 buckets of 8 hashes, 3-grams, a whitespace WordTokenizer and only lowercasing
  and whitespace normalisation, so its shingles are ours. It has no verification step: a
  pair that shares a bucket is a duplicate.
Timed: from the records in memory (datatrove: JSONL files on disk, which is its input) to the
set of removed records, with each removed record's kept record and (except datatrove, which
checks nothing) its exact Jaccard to it; the result file's timed_region says what each run
does. Not timed: loading the corpus file, writing datatrove's input shards, importing the
libraries, the peers' bands x rows (given to them; ours chooses its own inside its run).
Python's cyclic garbage collector is paused in every timed run (ours pauses it itself in
phase 0 too), so no implementation pays for another's object count.

Ground truth: exact Jaccard of the word-trigram sets (Python sets of word tuples, no hashing)
on every pair that any implementation declared, the planted pairs, and the pairs of a
permissive LSH (rensa signatures with an independent seed, 32 bands of 4 rows grouped here
with numpy, which proposes a pair at Jaccard 0.8 with probability 1 - 5e-8 and at 0.6 with
0.99; ours uses rensa too, but datasketch's independent MinHash adds its pairs to the
union). A pair is a true duplicate when its exact Jaccard is at least 0.8.
"""

from __future__ import annotations

import argparse
import ast
import gc
import hashlib
import importlib
import json
import multiprocessing
import os
import platform
import random
import re
import resource
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cogumi.data.dedup import DedupConfig, near_duplicates, normalise  # noqa: E402
from cogumi.provenance import provenance  # noqa: E402

DOMAINS = ("code", "math", "reasoning", "science", "conversation", "creative")
SEED_RECORDS = 640_637
THRESHOLD = 0.8
NUM_PERM = 128
NGRAM = 3
PLANT_LEVELS = (0.5, 0.6, 0.7, 0.75, 0.78, 0.82, 0.85, 0.9, 0.95)
RESPONSE_WORDS = 150
IMPLEMENTATIONS = ("ours", "datasketch", "rensa", "datatrove")
LIBRARIES = ("numpy", "datasketch", "rensa", "datatrove", "xxhash", "psutil")
LIBRARY_MODULE = {"ours": "rensa", "datasketch": "datasketch", "rensa": "rensa",
                  "datatrove": "datatrove.pipeline.dedup.minhash"}


# --------------------------------------------------------------------------- corpus

def _docstrings(path: str) -> list[tuple[str, str]]:
    """(qualified name, docstring) for the module, classes and functions of one file."""
    try:
        tree = ast.parse(Path(path).read_bytes())
    except (SyntaxError, ValueError, UnicodeDecodeError, RecursionError, MemoryError):
        return []
    found: list[tuple[str, str]] = []

    def visit(node, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                doc = ast.get_docstring(child)
                if doc:
                    found.append((name, doc))
                visit(child, name + ".")

    doc = ast.get_docstring(tree)
    if doc:
        found.append(("", doc))
    visit(tree, "")
    return found


def _file_records(path_and_module: tuple[str, str]) -> list[dict]:
    path, module = path_and_module
    records = []
    for qualname, doc in _docstrings(path):
        paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", doc)]
        paragraphs = [p for p in paragraphs if len(p.split()) >= 3]
        if not paragraphs:
            continue
        where = f"{module}.{qualname}" if qualname else module
        if len(paragraphs) == 1:
            records.append((f"Explain `{where}`.", paragraphs[0], where))
            continue
        at = 0
        while at < len(paragraphs) - 1:
            instruction, response, at = paragraphs[at], [], at + 1
            while at < len(paragraphs) and sum(len(p.split()) for p in response) < RESPONSE_WORDS:
                response.append(paragraphs[at])
                at += 1
            records.append((instruction, "\n\n".join(response), where))
    return [{"instruction": i, "response": r, "where": w} for i, r, w in records]


def _python_files() -> tuple[list[tuple[str, str]], list[str]]:
    roots = []
    for key in ("stdlib", "purelib", "platlib"):
        root = Path(sysconfig.get_paths()[key]).resolve()
        if root not in roots:
            roots.append(root)
    files: dict[str, tuple[str, str]] = {}
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            relative = path.relative_to(root)
            if root.name != "site-packages" and "site-packages" in relative.parts:
                continue  # the venv's packages are their own root
            module = ".".join(relative.with_suffix("").parts)
            files.setdefault(str(path), (str(path), module))
    return list(files.values()), [str(r) for r in roots]


def build_corpus(natural: int, planted: int, joined: int, seed: int
                 ) -> tuple[list[dict], dict, list[dict]]:
    started = time.perf_counter()
    files, roots = _python_files()
    records, seen, parsed = [], set(), 0
    ctx = multiprocessing.get_context("forkserver")
    with ctx.Pool(os.cpu_count()) as pool:
        for file_records in pool.imap(_file_records, files, chunksize=8):
            parsed += 1
            for record in file_records:
                key = (normalise(record["instruction"]), normalise(record["response"]))
                if key in seen or len(key[0].split()) + len(key[1].split()) < 8:
                    continue
                seen.add(key)
                records.append(record)
            if len(records) >= natural:
                pool.terminate()
                break
    records = records[:natural]
    rng = random.Random(seed)
    for index, record in enumerate(records):
        record["id"] = f"doc-{index:07d}"
        record["domain"] = rng.choice(DOMAINS)

    # Planted near-duplicates, each at a known exact Jaccard to its source.
    vocabulary = sorted({w for r in records[:20000] for w in r["response"].split()
                         if w.isalpha()})
    eligible = [r for r in records if len(r["response"].split()) >= 40]
    sources = rng.sample(eligible, planted)
    planted_rows, plants = [], []
    for index, source in enumerate(sources):
        target = PLANT_LEVELS[index % len(PLANT_LEVELS)]
        response, jaccard = _plant(source, target, vocabulary, rng)
        key = (normalise(source["instruction"]), normalise(response))
        if key in seen:
            continue
        seen.add(key)
        record = {"id": f"planted-{index:06d}", "instruction": source["instruction"],
                  "response": response, "domain": rng.choice(DOMAINS),
                  "where": source["where"]}
        planted_rows.append(record)
        plants.append({"id": record["id"], "source_id": source["id"], "target": target,
                       "jaccard": jaccard})
    # Joined records: three natural records drawn at random, as one (long, and almost never a
    # near-duplicate of another record: they add volume, the planted pairs add duplicates).
    joined_rows = []
    for k in range(joined):
        first, second, third = rng.sample(records, 3)
        joined_rows.append({
            "id": f"joined-{k:07d}", "domain": first["domain"],
            "instruction": first["instruction"],
            "response": "\n\n".join((first["response"], second["response"], third["response"])),
            "where": first["where"]})
    corpus = records + joined_rows + planted_rows
    digest = hashlib.sha256()
    for r in corpus:
        digest.update(f"{r['id']}\0{r['instruction']}\0{r['response']}\0".encode())
    words = np.array([len(r["instruction"].split()) + len(r["response"].split())
                      for r in corpus])
    description = {
        "description": "docstrings of the Python standard library and installed packages "
                       "(ast, sorted file order) as instruction-response records, exact "
                       "duplicates after normalisation dropped, plus records joining three "
                       "random natural records, plus planted near-duplicates",
        "records": len(corpus),
        "natural_records": len(records),
        "joined_records": len(joined_rows),
        "planted_records": len(planted_rows),
        "plant_levels": PLANT_LEVELS,
        "source_roots": roots,
        "files_parsed": parsed,
        "words_per_record": {"mean": round(float(words.mean()), 1),
                             "median": int(np.median(words)), "max": int(words.max())},
        "characters_total": sum(len(r["instruction"]) + len(r["response"]) + 1
                                for r in corpus),
        "sha256": digest.hexdigest(),
        "build_seconds": round(time.perf_counter() - started, 1),
    }
    return corpus, description, plants


def shingle_set(record: dict) -> frozenset:
    """Word trigrams of the normalised text, as Python tuples: the ground-truth shingles,
    independent of our hashing. Shorter texts are one shingle, as in dedup."""
    words = normalise(f"{record['instruction']} {record['response']}").split()
    if len(words) < NGRAM:
        return frozenset([tuple(words)])
    return frozenset(zip(*(words[k:] for k in range(NGRAM)), strict=False))


def jaccard(first: frozenset, second: frozenset) -> float:
    common = len(first & second)
    return common / (len(first) + len(second) - common)


def _plant(source: dict, target: float, vocabulary: list[str], rng: random.Random
           ) -> tuple[str, float]:
    """An edited copy of the source's response whose record-level word-trigram Jaccard with
    the source is as close to target as the edit script allows."""
    words = source["response"].split()
    script = []
    for _ in range(len(words)):
        op = rng.random()
        script.append(("sub" if op < 0.7 else "del" if op < 0.85 else "ins",
                       rng.random(), rng.choice(vocabulary)))
    original = shingle_set(source)

    def edited(k: int) -> list[str]:
        out = list(words)
        for op, where, word in script[:k]:
            at = min(int(where * len(out)), len(out) - 1)
            if op == "sub":
                out[at] = word
            elif op == "del" and len(out) > 1:
                del out[at]
            else:
                out.insert(at, word)
        return out

    def similarity(k: int) -> float:
        return jaccard(original, shingle_set({"instruction": source["instruction"],
                                              "response": " ".join(edited(k))}))

    lo, hi = 0, len(script)
    while hi - lo > 1:  # similarity falls (nearly monotonically) with the number of edits
        mid = (lo + hi) // 2
        if similarity(mid) >= target:
            lo = mid
        else:
            hi = mid
    k = min((lo, hi), key=lambda k: abs(similarity(k) - target))
    if k == 0:
        k = 1  # never an exact copy
    out = edited(k)
    # Cosmetic noise that normalisation must absorb: case and whitespace.
    if rng.random() < 0.5:
        out[0] = out[0].upper()
    return "  ".join(out) if rng.random() < 0.3 else " ".join(out), round(similarity(k), 4)


# --------------------------------------------------------------------------- measuring

class Monitor:
    """Peak resident memory of this process plus its descendants (pool workers, the
    forkserver) and the CPU seconds they used, sampled every 50 ms. CPU time does not depend
    on other work competing for the cores, so it is reported next to wall time; a worker's
    last 50 ms before it exits can be missed."""

    def __init__(self):
        self.peak = 0
        self._me = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._cpu_start: dict[int, float] = {}
        self._cpu_last: dict[int, float] = {}

    def _processes(self):
        return [self._me, *self._me.children(recursive=True)]

    @staticmethod
    def _cpu(process) -> float:
        times = process.cpu_times()
        return times.user + times.system

    def _sample(self) -> None:
        rss = 0
        for process in self._processes():
            try:
                rss += process.memory_info().rss
                self._cpu_last[process.pid] = self._cpu(process)
            except psutil.Error:
                continue
        self.peak = max(self.peak, rss)

    def _run(self):
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(0.05)

    @property
    def cpu_seconds(self) -> float:
        return sum(last - self._cpu_start.get(pid, 0.0)
                   for pid, last in self._cpu_last.items())

    @staticmethod
    def _busy_seconds() -> float:
        """CPU seconds spent by everything on the machine (not idle, not waiting on I/O)."""
        times = psutil.cpu_times()
        return sum(times) - times.idle - getattr(times, "iowait", 0.0)

    def others_share(self) -> float:
        """Share of the machine's cores used by other processes while this monitor ran."""
        wall = self._ended - self._started
        others = (self._busy_end - self._busy_start) - self.cpu_seconds
        return max(0.0, others / (wall * (os.cpu_count() or 1)))

    def __enter__(self):
        self._started, self._busy_start = time.perf_counter(), self._busy_seconds()
        for process in self._processes():
            try:
                self._cpu_start[process.pid] = self._cpu(process)
            except psutil.Error:
                continue
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()
        self._ended, self._busy_end = time.perf_counter(), self._busy_seconds()


# --------------------------------------------------------------------------- implementations

def record_text(record: dict) -> str:
    """The text every implementation shingles: instruction and response, as ours joins them."""
    instruction, response = record.get("instruction") or "", record.get("response") or ""
    return f"{instruction} {response}" if instruction and response else instruction or response


def word_shingles(record: dict) -> list[str]:
    """Word 3-grams of the normalised text as strings, ours' shingling for the libraries that
    take tokens (a text shorter than three words is one shingle, as in ours)."""
    words = normalise(record_text(record)).split()
    if len(words) < NGRAM:
        return [" ".join(words)]
    return [f"{a} {b} {c}" for a, b, c in zip(words, words[1:], words[2:], strict=False)]


def lsh_shape() -> tuple[int, int]:
    """The bands x rows that ours chooses for the shipped defaults; every peer gets the same."""
    stats = near_duplicates([{"id": "a", "instruction": "x", "response": "y"}], DedupConfig()).stats
    return stats["bands"], stats["rows"]


def verify_and_cluster(ids: list[str], shingles: list[list[str]], candidates) -> dict:
    """What a user of a MinHash library adds to reach our precision and our audit: exact
    Jaccard of the shingle sets of every candidate pair (index pairs), union-find over the
    verified pairs, one record kept per cluster (the smallest id), and each removed record's
    exact Jaccard to the one kept (phase 0 reports it for every removal)."""
    sets: dict[int, set] = {}

    def set_of(index: int) -> set:
        found = sets.get(index)
        if found is None:
            found = sets[index] = set(shingles[index])
        return found

    def exact(i: int, j: int) -> float:
        first, second = set_of(i), set_of(j)
        common = len(first & second)
        return common / (len(first) + len(second) - common)

    verified = {}
    for i, j in candidates:
        value = exact(i, j)
        if value >= THRESHOLD:
            verified[(i, j)] = value
    parent = list(range(len(ids)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j in verified:
        a, b = find(i), find(j)
        if a != b:
            # The smaller id becomes the root, so it is the one kept.
            if ids[a] > ids[b]:
                a, b = b, a
            parent[b] = a
    removed, removed_jaccard = {}, {}
    for x in range(len(ids)):
        root = find(x)
        if root != x:
            removed[ids[x]] = ids[root]
            pair = (min(x, root), max(x, root))
            removed_jaccard[ids[x]] = verified[pair] if pair in verified else exact(*pair)
    return {"pairs": [(ids[i], ids[j]) for i, j in verified], "removed": removed,
            "removed_jaccard": removed_jaccard, "candidate_pairs": len(candidates)}


def run_ours(records: list[dict], workdir: Path, shape: None) -> dict:
    config = DedupConfig()  # phase 0's defaults; workers=None is every core
    result = near_duplicates(records, config)  # chooses its bands x rows itself, timed
    return {"pairs": [(e["a"], e["b"]) for e in result.edges],
            "removed": {r["id"]: r["kept_id"] for r in result.removed},
            "removed_jaccard": {r["id"]: r["jaccard"] for r in result.removed},
            "candidate_pairs": result.stats["candidate_pairs"],
            "stats": result.stats}


def _datasketch_pairs(records: list[dict], bands: int, rows: int
                      ) -> tuple[list[str], list[list[str]], list]:
    import xxhash
    from datasketch import MinHash, MinHashLSH

    ids = [r["id"] for r in records]
    shingles = [word_shingles(r) for r in records]
    # bulk reuses one set of permutations for every MinHash and hashes with update_batch;
    # xxhash instead of the default SHA-1 is the speed-up datasketch's docs point to.
    minhashes = MinHash.bulk(shingles, num_perm=NUM_PERM, seed=1,
                             hashfunc=xxhash.xxh32_intdigest)
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM, params=(bands, rows))
    with lsh.insertion_session() as session:
        for index, minhash in enumerate(minhashes):
            session.insert(index, minhash, check_duplication=False)
    candidates = set()
    for index, minhash in enumerate(minhashes):
        for other in lsh.query(minhash):
            if other != index:
                candidates.add((min(index, other), max(index, other)))
    return ids, shingles, sorted(candidates)


def run_datasketch(records: list[dict], workdir: Path, shape: tuple[int, int]) -> dict:
    bands, rows = shape
    ids, shingles, candidates = _datasketch_pairs(records, bands, rows)
    return verify_and_cluster(ids, shingles, candidates)


def run_rensa(records: list[dict], workdir: Path, shape: tuple[int, int]) -> dict:
    from rensa import RMinHash, RMinHashLSH

    bands, _ = shape
    ids = [r["id"] for r in records]
    shingles = [word_shingles(r) for r in records]
    minhashes = RMinHash.from_token_sets(shingles, num_perm=NUM_PERM, seed=1)
    lsh = RMinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM, num_bands=bands)
    lsh.insert_many(minhashes)  # keys 0 .. n-1
    candidates = set()
    for index, hits in enumerate(lsh.query_all(minhashes)):
        for other in hits:
            if other != index:
                candidates.add((min(index, other), max(index, other)))
    return verify_and_cluster(ids, shingles, sorted(candidates))


def _whitespace_tokenizer():
    from datatrove.utils.word_tokenizers import WordTokenizer

    class WhitespaceWords(WordTokenizer):
        """Words are the runs between spaces, as in ours (datatrove's English tokenizer is
        NLTK's, which splits punctuation off)."""

        def word_tokenize(self, text: str) -> list[str]:
            return text.split()

        def sent_tokenize(self, text: str) -> list[str]:
            return [text]

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            return [(0, len(text))]

    return WhitespaceWords()


def datatrove_prepare(records: list[dict], workdir: Path, shards: int) -> list[list[str]]:
    """Not timed: the corpus as JSONL shards, datatrove's input; returns the ids per shard in
    file order (datatrove names a document by shard and position)."""
    folder = workdir / "input"
    folder.mkdir(parents=True)
    per_shard = -(-len(records) // shards)
    order = []
    for shard in range(shards):
        part = records[shard * per_shard:(shard + 1) * per_shard]
        with open(folder / f"{shard:05d}.jsonl", "w", encoding="utf-8") as f:
            for r in part:
                f.write(json.dumps({"id": r["id"], "text": record_text(r)}) + "\n")
        order.append([r["id"] for r in part])
    return order


def run_datatrove(records: list[dict], workdir: Path, shape: tuple[int, int],
                  order: list[list[str]]) -> dict:
    import struct

    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.text import TextNormConfig

    bands, rows = shape
    shards = len(order)
    cores = len(os.sched_getaffinity(0))
    config = MinhashConfig(
        n_grams=NGRAM, num_buckets=bands, hashes_per_bucket=rows, seed=1,
        norm_config=TextNormConfig(lowercase=True, norm_whitespace=True,
                                   remove_punctuation=False, norm_unicode_diacritics=False,
                                   norm_numbers=False, norm_weekdays=False,
                                   norm_monthnames=False))
    inputs, logs = str(workdir / "input"), workdir / "logs"
    steps = [
        ([JsonlReader(inputs), MinhashDedupSignature(output_folder=str(workdir / "signatures"),
                                                     config=config,
                                                     language=_whitespace_tokenizer())],
         shards, "signature"),
        ([MinhashDedupBuckets(input_folder=str(workdir / "signatures"),
                              output_folder=str(workdir / "buckets"), config=config)],
         bands, "buckets"),
        ([MinhashDedupCluster(input_folder=str(workdir / "buckets"),
                              output_folder=str(workdir / "remove_ids"), config=config)],
         1, "cluster"),
        ([JsonlReader(inputs),
          MinhashDedupFilter(input_folder=str(workdir / "remove_ids"),
                             exclusion_writer=JsonlWriter(str(workdir / "removed"),
                                                          compression=None))],
         shards, "filter"),
    ]
    timings = {}
    for pipeline, tasks, name in steps:
        started = time.perf_counter()
        LocalPipelineExecutor(pipeline, tasks=tasks, workers=min(tasks, cores),
                              logging_dir=str(logs / name)).run()
        timings[name] = round(time.perf_counter() - started, 2)
    # Read back what datatrove decided (part of the timed work: a user needs the ids).
    pairs = []
    for path in sorted((workdir / "buckets").glob("*.dups")):
        data = path.read_bytes()
        for f1, d1, f2, d2 in struct.iter_unpack("<4I", data):
            pairs.append((order[f1][d1], order[f2][d2]))
    removed_ids = []
    for path in sorted((workdir / "removed").glob("*.jsonl")):
        with open(path, encoding="utf-8") as f:
            removed_ids += [json.loads(line)["id"] for line in f]
    return {"pairs": pairs, "removed": {i: None for i in removed_ids},
            "candidate_pairs": len(pairs), "timings": timings}


# --------------------------------------------------------------------------- one implementation

def run_worker(name: str, corpus_path: Path, result_path: Path, workdir: Path) -> None:
    """Subprocess entry: load the corpus (not timed), run one implementation under a Monitor,
    write its decisions and measurements."""
    with open(corpus_path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    prepared = datatrove_prepare(records, workdir, len(os.sched_getaffinity(0))) \
        if name == "datatrove" else None
    # Not timed, the same for every implementation: importing the libraries. The peers are
    # given the bands x rows; ours chooses them inside its timed run (so nothing of it is
    # warmed here).
    importlib.import_module(LIBRARY_MODULE[name])
    shape = None if name == "ours" else lsh_shape()
    gc.collect()
    before = psutil.Process().memory_info().rss
    # Every timed run with Python's cyclic collector paused, as ours pauses it itself: none
    # of them makes reference cycles, and the collector's passes over the corpus would
    # otherwise be counted against whichever implementation keeps more objects alive.
    gc.disable()
    with Monitor() as monitor:
        started = time.perf_counter()
        if name == "datatrove":
            out = run_datatrove(records, workdir, shape, prepared)
        else:
            out = {"ours": run_ours, "datasketch": run_datasketch,
                   "rensa": run_rensa}[name](records, workdir, shape)
        seconds = time.perf_counter() - started
    gc.enable()
    out.update(
        records=len(records),
        seconds=round(seconds, 2),
        records_per_second=round(len(records) / seconds, 1),
        cpu_seconds=round(monitor.cpu_seconds, 2),
        other_processes_cpu_share=round(monitor.others_share(), 3),
        peak_rss_mb_all_processes=round(monitor.peak / 2**20, 1),
        rss_mb_before=round(before / 2**20, 1),
        peak_rss_mb_this_process=round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    )
    out["pairs"] = [list(p) for p in out["pairs"]]
    result_path.write_text(json.dumps(out))


def run_in_subprocess(name: str, corpus_path: Path, scratch: Path) -> dict:
    workdir = scratch / name
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    result_path = scratch / f"{name}.json"
    log_path = scratch / f"{name}.log"
    with open(log_path, "w") as log:
        done = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--worker", name,
             "--corpus", str(corpus_path), "--result", str(result_path),
             "--workdir", str(workdir)],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed (exit {done.returncode}); last lines of {log_path}:\n"
                           + "\n".join(log_path.read_text().splitlines()[-20:]))
    out = json.loads(result_path.read_text())
    shutil.rmtree(workdir, ignore_errors=True)
    return out


# --------------------------------------------------------------------------- ground truth

def permissive_pairs(corpus: list[dict], seed: int, bands: int = 32, rows: int = 4,
                     max_bucket: int = 512) -> tuple[set, int]:
    """Candidate pairs from 32 bands x 4 rows on rensa signatures with an independent seed
    (grouped here, so the candidates depend on no implementation's LSH). A bucket with more
    than max_bucket members links each member to its next max_bucket only (counted)."""
    from rensa import RMinHash

    ids = sorted(r["id"] for r in corpus)
    by_id = {r["id"]: r for r in corpus}
    rows_out = []
    for lo in range(0, len(ids), 20000):
        matrix = RMinHash.digest_matrix_from_token_sets(
            [word_shingles(by_id[i]) for i in ids[lo:lo + 20000]], num_perm=NUM_PERM, seed=seed)
        rows_out.append(np.asarray(matrix.to_rows(), dtype=np.uint32))
    signatures = np.concatenate(rows_out)
    pairs, large = set(), 0
    for band in range(bands):
        block = np.ascontiguousarray(signatures[:, band * rows:(band + 1) * rows])
        keys = block.view(np.dtype((np.void, block.dtype.itemsize * rows))).ravel()
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        starts = np.flatnonzero(np.concatenate(([True], sorted_keys[1:] != sorted_keys[:-1])))
        ends = np.concatenate((starts[1:], [len(keys)]))
        for start, end in zip(starts[ends - starts > 1].tolist(), ends[ends - starts > 1].tolist(),
                              strict=True):
            members = sorted(order[start:end].tolist())
            large += len(members) > max_bucket + 1
            for k, first in enumerate(members):
                for second in members[k + 1:k + 1 + max_bucket]:
                    pairs.add((ids[first], ids[second]))
    return pairs, large


def precision_recall(predicted: set, truth: set) -> dict:
    hits = len(predicted & truth)
    return {"predicted_pairs": len(predicted), "true_positives": hits,
            "precision": round(hits / len(predicted), 4) if predicted else None,
            "recall": round(hits / len(truth), 4) if truth else None}


def components(pairs) -> dict[str, str]:
    """Record id -> a representative of its connected component under pairs (union-find)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in sorted(pairs):
        parent[find(a)] = find(b)
    return {x: find(x) for x in parent}


def quality(declared: set, cluster_of: dict[str, str], removed: set, truth: set,
            planted_true: set, planted_false: set) -> dict:
    """Pair level: the pairs a method declared similar against the true pairs. Cluster
    level: a true pair is caught when its two records end in one cluster, so at most one of
    them survives (transitive merging catches pairs that a large LSH bucket never compared
    directly). Removal level: a removed record is justified when it has a true duplicate in
    its cluster."""
    def same(a: str, b: str) -> bool:
        return cluster_of.get(a, a) == cluster_of.get(b, b)

    caught = {pair for pair in truth if same(*pair)}
    justified = {record for pair in caught for record in pair}
    return {
        **precision_recall(declared, truth),
        "cluster_recall": round(len(caught) / len(truth), 4) if truth else None,
        "removed": len(removed),
        "removal_precision": round(len(removed & justified) / len(removed), 4)
        if removed else None,
        "planted_at_or_above_0.8_caught": round(
            sum(same(*pair) for pair in planted_true) / len(planted_true), 4)
        if planted_true else None,
        "planted_below_0.8_declared": round(len(declared & planted_false)
                                            / len(planted_false), 4)
        if planted_false else None,
    }


def machine(load_start: tuple[float, float, float]) -> dict:
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"cpu": model, "cores": len(os.sched_getaffinity(0)),
            "nproc": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
            "cpu_model": model, "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "load_average_1_5_15_at_start": [round(x, 2) for x in load_start],
            "python": platform.python_version(), "platform": platform.platform(),
            "libraries": versions}


def git_commit() -> dict:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=False).stdout.strip()
    # The result files are left out: this run is about to overwrite one of them.
    return {"commit": git("rev-parse", "HEAD"),
            "uncommitted_changes": bool(git("status", "--porcelain", "--untracked-files=no",
                                            "--", ".", ":!benchmarks/results"))}


# --------------------------------------------------------------------------- main

PEER_NOT_TIMED = ("Not in it, and done by ours: an exact-duplicate pass (the peer finds "
                  "exact copies as Jaccard-1 pairs), the id sort, representatives by domain, "
                  "MinHash estimates of candidates. Given, not timed: bands x rows")


def parameters(bands: int, rows: int, cores: int) -> dict[str, dict]:
    """What each implementation was run with, for the report."""
    from cogumi.data.dedup import config_dict

    same = "ours: word 3-grams of the lowercased, whitespace-collapsed text (shorter texts: one shingle)"
    return {
        "ours": {
            "api": "cogumi.data.dedup.near_duplicates(records, DedupConfig())",
            "config": config_dict(DedupConfig()), "bands": bands, "rows": rows,
            "minhash": "rensa RMinHash.from_token_sets + RMinHashLSH (insert_many, "
                       "query_all), signatures of exact-group representatives only",
            "verification": "exact Jaccard of Python sets of shingle strings (pairs whose "
                            "MinHash estimate is 5 sd below the threshold rejected first)",
            "processes": "this one and, for 20K records or more with 2 or more cores, one "
                         "helper process it starts (subprocess): the helper normalises, "
                         "shingles and sketches the later 40% of the characters and checks "
                         "half of the pairs; its memory and CPU are counted",
            "shingling": same,
            "timed_region": "near_duplicates(records): sort by id and check ids unique; "
                            "choose bands x rows; start the helper; normalise; exact-duplicate "
                            "groups (normalised instruction and response both equal); "
                            "signatures of each group's first record; LSH insert and query; "
                            "MinHash estimate of every candidate pair; exact Jaccard of the "
                            "pairs not 5 sd below the threshold; union-find over verified "
                            "pairs and exact groups; one representative per cluster by "
                            "domain balance, response length, id; a removal entry per removed "
                            "record (kind, kept id, cluster size, estimated and exact Jaccard "
                            "to the kept record) and an edge per verified pair (both "
                            "similarities)"},
        "datasketch": {
            "api": f"MinHash.bulk(shingles, num_perm={NUM_PERM}, seed=1, "
                   "hashfunc=xxhash.xxh32_intdigest) (update_batch per record); "
                   f"MinHashLSH(threshold={THRESHOLD}, num_perm={NUM_PERM}, "
                   f"params=({bands}, {rows})) filled in an insertion_session; "
                   "lsh.query per record",
            "scheme": "affine32 (datasketch 2 default)",
            "verification": "exact Jaccard of Python sets of shingle strings, every candidate",
            "clusters": "union-find, smallest id kept", "shingling": same,
            "timed_region": "shingles of every record (normalise, word 3-grams), MinHash.bulk, "
                            "LSH insert and a query per record; every candidate pair checked "
                            "on exact Jaccard; union-find, smallest id kept; each removed "
                            "record's kept id and exact Jaccard to it. " + PEER_NOT_TIMED},
        "rensa": {
            "api": f"RMinHash.from_token_sets(shingles, num_perm={NUM_PERM}, seed=1); "
                   f"RMinHashLSH(threshold={THRESHOLD}, num_perm={NUM_PERM}, "
                   f"num_bands={bands}); insert_many; query_all",
            "threads": "rensa's default (Rayon, every core)",
            "verification": "exact Jaccard of Python sets of shingle strings, every candidate",
            "clusters": "union-find, smallest id kept", "shingling": same,
            "timed_region": "shingles of every record (normalise, word 3-grams), "
                            "from_token_sets, insert_many, query_all; every candidate pair "
                            "checked on exact Jaccard; union-find, smallest id kept; each "
                            "removed record's kept id and exact Jaccard to it. "
                            + PEER_NOT_TIMED,
            "not_used": "the rho sketch (samples token positions: not a full-set MinHash) and "
                        "the duplicate-flag matrix APIs (they return flags, not pairs, so "
                        "nothing can be verified or audited)"},
        "datatrove": {
            "api": "LocalPipelineExecutor over [JsonlReader, MinhashDedupSignature], "
                   "[MinhashDedupBuckets], [MinhashDedupCluster], [JsonlReader, "
                   "MinhashDedupFilter(exclusion_writer=JsonlWriter)]",
            "config": f"MinhashConfig(n_grams={NGRAM}, num_buckets={bands}, "
                      f"hashes_per_bucket={rows}, seed=1, norm_config=TextNormConfig("
                      "lowercase and whitespace only), hash_config=HashConfig() (xxhash, "
                      "64-bit))",
            "tasks": {"signature": cores, "buckets": bands, "cluster": 1, "filter": cores},
            "workers": cores,
            "verification": "none: datatrove has no verification step; a pair sharing a "
                            "bucket is a duplicate",
            "declared_pairs": "the .dups pairs of the buckets step: consecutive records with "
                              "equal bucket signatures (a chain per bucket, not every pair), "
                              "so its pair recall is not comparable; cluster_recall is",
            "shingling": same + ", through a whitespace WordTokenizer and TextNormConfig with "
                         "only lowercase and norm_whitespace; differs from ours on texts "
                         "shorter than 3 words (datatrove: no shingles, never a duplicate), "
                         "of which this corpus has none (every record has at least 8 words)",
            "input": "JSONL shards written before timing (one per core), read by datatrove "
                     "inside the timed run",
            "timed_region": "the four steps (reading the shards, signatures, buckets, "
                            "clusters, filter writing the removed records), then reading back "
                            "the .dups pairs and the removed ids; bands x rows are given. It "
                            "checks no pair, so it does less than the others"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # 66K records by default: all four implementations, corpus and ground truth in under
    # 10 minutes on 2 shared cores (datatrove alone takes about 2 minutes of it).
    parser.add_argument("--natural", type=int, default=60_000,
                        help="records taken from docstrings")
    parser.add_argument("--joined", type=int, default=0,
                        help="records joining three random natural records")
    parser.add_argument("--planted", type=int, default=6_000,
                        help="near-duplicates planted at known Jaccard")
    parser.add_argument("--only", nargs="+", choices=IMPLEMENTATIONS, default=IMPLEMENTATIONS)
    parser.add_argument("--rounds", type=int, default=1,
                        help="times each implementation runs, interleaved; the median counts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/dedup.json")
    # Subprocess mode: one implementation.
    parser.add_argument("--worker", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args.worker, args.corpus, args.result, args.workdir)
        return

    started = time.perf_counter()
    load_start = os.getloadavg()
    command = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
    corpus, corpus_info, plants = build_corpus(args.natural, args.planted, args.joined,
                                               args.seed)
    print(f"corpus: {len(corpus)} records in {corpus_info['build_seconds']} s", flush=True)
    random.Random(args.seed).shuffle(corpus)  # no implementation may depend on input order
    bands, rows = lsh_shape()
    cores = len(os.sched_getaffinity(0))
    scratch = Path(tempfile.mkdtemp(prefix="bench_dedup_"))
    try:
        corpus_path = scratch / "corpus.jsonl"
        with open(corpus_path, "w", encoding="utf-8") as f:
            for r in corpus:
                f.write(json.dumps({k: r[k] for k in ("id", "instruction", "response",
                                                      "domain")}) + "\n")
        runs: dict[str, list[dict]] = {name: [] for name in args.only}
        for round_index in range(args.rounds):
            for name in args.only:
                out = run_in_subprocess(name, corpus_path, scratch)
                runs[name].append(out)
                print(f"round {round_index + 1} {name}: {out['seconds']} s, "
                      f"{out['records_per_second']} records/s, "
                      f"peak {out['peak_rss_mb_all_processes']} MB "
                      f"(load {os.getloadavg()[0]:.2f})", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    # Ground truth over every pair anyone declared, the planted pairs and a permissive LSH.
    truth_started = time.perf_counter()
    by_id = {r["id"]: r for r in corpus}
    declared = {name: {(min(a, b), max(a, b)) for a, b in results[0]["pairs"]}
                for name, results in runs.items()}
    permissive, permissive_large = permissive_pairs(corpus, seed=987_654)
    plant_pairs = {(min(p["id"], p["source_id"]), max(p["id"], p["source_id"]))
                   for p in plants}
    candidates = set(permissive) | plant_pairs
    for pairs in declared.values():
        candidates |= pairs
    shingles: dict[str, frozenset] = {}

    def shingles_of(record_id: str) -> frozenset:
        if record_id not in shingles:
            shingles[record_id] = shingle_set(by_id[record_id])
        return shingles[record_id]

    exact = {pair: jaccard(shingles_of(pair[0]), shingles_of(pair[1])) for pair in candidates}
    truth = {pair for pair, value in exact.items() if value >= THRESHOLD}
    truth_seconds = time.perf_counter() - truth_started
    print(f"ground truth: {len(candidates)} candidate pairs, {len(truth)} true, "
          f"{truth_seconds:.1f} s", flush=True)
    planted_true = {pair for pair in plant_pairs if exact[pair] >= THRESHOLD}
    planted_false = plant_pairs - planted_true

    params = parameters(bands, rows, cores)
    implementations, qualities = {}, {}
    for name, results in runs.items():
        first = results[0]
        removed = set(first["removed"])
        if name == "ours":
            cluster_of = {r: k for r, k in first["removed"].items()}
        else:
            cluster_of = components(declared[name])
        qualities[name] = quality(declared[name], cluster_of, removed, truth, planted_true,
                                  planted_false)
        seconds = [r["seconds"] for r in results]
        median = float(np.median(seconds))
        cpu = float(np.median([r["cpu_seconds"] for r in results]))
        implementations[name] = {
            "parameters": params[name],
            "records": first["records"],
            "seconds": round(median, 2),
            "seconds_each_round": seconds,
            "records_per_second": round(first["records"] / median, 1),
            "cpu_seconds": round(cpu, 2),
            "records_per_cpu_second": round(first["records"] / cpu, 1),
            "other_processes_cpu_share_each_round": [r["other_processes_cpu_share"]
                                                     for r in results],
            "peak_rss_mb_all_processes": max(r["peak_rss_mb_all_processes"] for r in results),
            "rss_mb_before": first["rss_mb_before"],
            "peak_rss_mb_this_process": max(r["peak_rss_mb_this_process"] for r in results),
            "candidate_pairs": first["candidate_pairs"],
            "quality": qualities[name],
            **({"stats": first["stats"]} if "stats" in first else {}),
            **({"timings": first["timings"]} if "timings" in first else {}),
        }

    by_level = {}
    for level in PLANT_LEVELS:
        rows_at = [p for p in plants if p["target"] == level]
        achieved = [exact[(min(p["id"], p["source_id"]), max(p["id"], p["source_id"]))]
                    for p in rows_at]
        by_level[str(level)] = {
            "pairs": len(rows_at),
            "achieved_jaccard_mean": round(float(np.mean(achieved)), 4) if achieved else None,
            "achieved_jaccard_range": [round(min(achieved), 4), round(max(achieved), 4)]
            if achieved else None,
            "at_or_above_threshold": sum(a >= THRESHOLD for a in achieved),
            "declared_by": {name: sum((min(p["id"], p["source_id"]),
                                       max(p["id"], p["source_id"])) in declared[name]
                                      for p in rows_at) for name in runs},
        }

    def qualifies(name: str) -> bool:
        q = qualities[name]
        return (q["precision"] or 0) >= 0.95 and (q["cluster_recall"] or 0) >= 0.95

    speed = {name: implementations[name]["records_per_second"] for name in runs}
    peers = [name for name in runs if name != "ours"]
    qualifying = [name for name in peers if qualifies(name)]
    fastest_peer = max(peers, key=speed.get) if peers else None
    fastest_qualifying = max(qualifying, key=speed.get) if qualifying else None
    report = {
        "command": command,
        "git": git_commit(),
        "machine": machine(load_start),
        # The keys every result file carries (cogumi.provenance.REQUIRED), from the one helper.
        **{k: v for k, v in provenance(LIBRARIES).items() if k in ("git_commit", "versions")},
        "load_average_start_end": [round(load_start[0], 2), round(os.getloadavg()[0], 2)],
        "corpus": corpus_info,
        "lsh": {"threshold": THRESHOLD, "num_perm": NUM_PERM, "bands": bands, "rows": rows,
                "shingles": f"word {NGRAM}-grams"},
        "rounds": args.rounds,
        "measurement": "each implementation in its own subprocess, one after another (round "
                       "robin when rounds > 1; seconds is the median round); what each timed "
                       "run contains is its parameters' timed_region; in every one Python's "
                       "cyclic garbage collector is paused and the libraries are imported "
                       "before the clock starts; peak RSS summed "
                       "over that subprocess and every process it started, sampled every "
                       "50 ms (rss_mb_before: that process with the corpus loaded, before "
                       "the timed run); other_processes_cpu_share: share of the machine's "
                       "cores busy with other work during the run (the machine is shared)",
        "implementations": implementations,
        "speed": {
            "records_per_second": speed,
            "ours_vs_each": {name: round(speed["ours"] / speed[name], 2)
                             for name in peers} if "ours" in speed else {},
            "fastest_peer": fastest_peer,
            "fastest_peer_at_precision_and_cluster_recall_0.95": fastest_qualifying,
        },
        "quality": {
            "ground_truth": "exact Jaccard of word-trigram sets (Python tuples) >= 0.8 over "
                            "the union of all implementations' declared pairs, the planted "
                            "pairs and a permissive LSH (rensa signatures, independent seed, "
                            "32 bands x 4 rows)",
            "metrics": "precision/recall: pairs each implementation declared similar against "
                       "the true pairs. cluster_recall: true pairs whose two records ended in "
                       "one cluster (for the libraries: connected components of the declared "
                       "pairs), i.e. at most one of the two survives. removal_precision: "
                       "removed records with a true duplicate in their cluster. The target "
                       "uses precision and cluster_recall.",
            "candidate_pairs_checked": len(candidates),
            "permissive_lsh_pairs": len(permissive),
            "permissive_lsh_large_buckets": permissive_large,
            "true_pairs": len(truth),
            "ground_truth_seconds": round(truth_seconds, 1),
            "planted_by_level": by_level,
        },
        "targets": {
            "rule": "ours must be at least as fast (records/s, this run) as the fastest peer "
                    "whose precision and cluster_recall are both >= 0.95, and itself reach "
                    "both",
            "ours_precision_and_cluster_recall_at_least_0.95": qualifies("ours")
            if "ours" in runs else None,
            "peers_at_precision_and_cluster_recall_0.95": qualifying,
            "ours_at_least_as_fast_as_fastest_qualifying_peer":
                speed["ours"] >= speed[fastest_qualifying]
                if "ours" in speed and fastest_qualifying else None,
        },
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"speed": report["speed"], "targets": report["targets"],
                      "quality": qualities}, indent=2))


if __name__ == "__main__":
    main()
