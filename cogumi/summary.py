"""`cogumi report --summary`: every figure the README quotes, generated from result files.

README.md keeps its prose; each measured figure sits inside a generated block,

    <!-- cogumi:summary:NAME -->...<!-- /cogumi:summary:NAME -->

on one line (inside a sentence) or around whole lines (a table), and `--summary` rewrites
what is between the markers from `benchmarks/results/*.json`. `--check` only compares and
names each block that drifted; tests/test_summary.py runs the same comparison, so a figure
edited by hand, or a result file rerun without regenerating the README, fails the suite.

Pipeline figures come from `runs/<profile>/`, which is not committed. `--summary` first
copies what the README can quote from each shipped profile's runs (per phase: metrics, the
gates of its latest gate run, wall time, commit, machine, and its small JSON outputs) into
the committed snapshot `benchmarks/results/pipeline_<profile>.json`; the blocks are rendered
from the snapshots only, so a fresh clone checks the same text.

A NAME is `kind` or `kind:arg:...` (`gates:tiny:1A`); `KINDS` lists them.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cogumi import provenance
from cogumi.gates import gate_mark, gates_passed, repo_root

RESULTS = Path("benchmarks/results")
SNAPSHOT = "pipeline_{profile}.json"
SNAPSHOT_FILE_LIMIT = 8_000
"""A phase's JSON outputs up to this size go into the snapshot (sizes, retention, the lm-eval
cross-check); larger ones (per-tensor listings, training logs) stay in runs/."""

_MARKER = re.compile(r"<!-- (/?)cogumi:summary:([^ ]*) -->")


class SummaryError(ValueError):
    """A block or result file the summary cannot use; one line naming file, line or key."""


# --------------------------------------------------------------------------- result files

class Results:
    """The committed result files, read once each; every lookup names file and key."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._cache: dict[str, dict] = {}

    def load(self, name: str) -> dict:
        if name not in self._cache:
            path = self.folder / name
            try:
                self._cache[name] = json.loads(path.read_text())
            except FileNotFoundError:
                raise SummaryError(f"{self._label(name)}: missing") from None
            except json.JSONDecodeError as exc:
                raise SummaryError(f"{self._label(name)}:{exc.lineno}: not valid JSON "
                                   f"({exc.msg})") from None
        return self._cache[name]

    def get(self, name: str, *keys):
        value = self.load(name)
        for i, key in enumerate(keys):
            try:
                value = value[key]
            except (KeyError, IndexError, TypeError):
                path = ".".join(str(k) for k in keys[: i + 1])
                raise SummaryError(f"{self._label(name)}: no key {path!r}") from None
        return value

    def _label(self, name: str) -> str:
        try:
            return str((self.folder / name).relative_to(repo_root()))
        except ValueError:
            return str(self.folder / name)


# --------------------------------------------------------------------------- blocks

@dataclass
class Block:
    name: str
    line: int
    start: int
    """Offset just after the opening marker."""
    end: int
    """Offset of the closing marker."""


def parse_blocks(text: str, where: str = "README.md") -> list[Block]:
    """Every generated block, in order; unknown names, unclosed, nested and stray closing
    markers are errors naming the line."""
    blocks: list[Block] = []
    open_: tuple[str, int, int] | None = None
    for m in _MARKER.finditer(text):
        closing, name = m.group(1) == "/", m.group(2)
        line = text.count("\n", 0, m.start()) + 1
        if not closing:
            if open_ is not None:
                raise SummaryError(f"{where}:{line}: block {name!r} opens inside block "
                                   f"{open_[0]!r} (opened at line {open_[1]}, not closed)")
            _renderer(name, f"{where}:{line}")
            open_ = (name, line, m.end())
            continue
        if open_ is None:
            raise SummaryError(f"{where}:{line}: closing marker of block {name!r} without "
                               f"an opening one")
        if name != open_[0]:
            raise SummaryError(f"{where}:{line}: closing marker of block {name!r}, but "
                               f"block {open_[0]!r} (line {open_[1]}) is the one open")
        blocks.append(Block(name, open_[1], open_[2], m.start()))
        open_ = None
    if open_ is not None:
        raise SummaryError(f"{where}:{open_[1]}: block {open_[0]!r} is never closed "
                           f"(no <!-- /cogumi:summary:{open_[0]} -->)")
    return blocks


def render(text: str, results: Results, where: str = "README.md") -> tuple[str, list[Block]]:
    """`text` with every block regenerated, and the blocks whose content changed."""
    out, pos, changed = [], 0, []
    for block in parse_blocks(text, where):
        fn, args = _renderer(block.name, f"{where}:{block.line}")
        body = fn(results, *args).strip("\n")
        if text[block.start:block.start + 1] == "\n":  # a block of whole lines
            body = f"\n{body}\n"
        elif "\n" in body:
            raise SummaryError(f"{where}:{block.line}: block {block.name!r} renders several "
                               f"lines; put its markers on lines of their own")
        if text[block.start:block.end] != body:
            changed.append(block)
        out += [text[pos:block.start], body]
        pos = block.end
    out.append(text[pos:])
    return "".join(out), changed


def _renderer(name: str, where: str) -> tuple[Callable[..., str], list[str]]:
    kind, *args = name.split(":")
    if kind not in KINDS:
        raise SummaryError(f"{where}: unknown block {name!r}; known kinds: "
                           f"{', '.join(sorted(KINDS))}")
    fn, params = KINDS[kind]
    if len(args) != len(params):
        form = ":".join([kind, *params])
        raise SummaryError(f"{where}: block {name!r} needs the form {form}")
    return fn, args


# --------------------------------------------------------------------------- formatting

def _x(ratio: float, digits: int = 1) -> str:
    return f"{ratio:.{digits}f}×"


def _g(value, digits: int = 3) -> str:
    """A metric as the reports show it: up to `digits` decimals, trailing zeros kept off."""
    if value is None:
        return "missing"
    if isinstance(value, float) and not math.isfinite(value):
        return "undefined"
    if isinstance(value, float):
        text = f"{value:.{digits}f}".rstrip("0").rstrip(".")
        return text or "0"
    return str(value)


def _machine(results: Results, name: str, prefix: tuple = ()) -> str:
    m = results.get(name, *prefix, "machine")
    if m.get("device"):
        return m["device"]
    cores = m.get("cores")
    return f"{cores}-core CPU" if isinstance(cores, int) else "CPU (cores unrecorded)"


# --------------------------------------------------------------------------- benchmarks

def _train_section(results: Results) -> tuple[str, str]:
    """The section of train_backends.json that `cogumi plan` prices phase 1A with."""
    from cogumi.profile import load_profile
    step = load_profile("llama-3.1-8b").plan["1A"]
    measured = step.throughput or step.gpu_memory_gib  # either names the section
    if measured is None or Path(measured.file).name != "train_backends.json":
        raise SummaryError("cogumi/profiles/llama-3.1-8b.toml: plan.1A names no "
                           "train_backends.json measurement")
    return Path(measured.file).name, measured.key[1]


def _rows(r: Results) -> list[tuple[str, str, str, str]]:
    rows = []
    vs = r.get("dedup.json", "speed", "ours_vs_each")
    impl = r.get("dedup.json", "implementations")
    records = r.get("dedup.json", "corpus", "records")
    rows.append(("`dedup.json`", f"phase 0's dedup vs rensa, datasketch and datatrove at their "
                 f"fastest, one run, {records:,} records", _machine(r, "dedup.json"),
                 ", ".join(f"{_g(vs[p], 2)}× {p}" for p in ("rensa", "datasketch", "datatrove"))
                 + "; precision " + ", ".join(
                     f"{p} {impl[p]['quality']['precision']:.3f}"
                     for p in ("ours", "rensa", "datasketch", "datatrove"))))

    runs = r.get("eval_generation.json", "runs")
    parts = [f"{_x(v['speedup'])} ({k.split('=')[1]} thread{'s' * (k != 'threads=1')})"
             for k, v in runs.items()]
    rows.append(("`eval_generation.json`", "batched vs one-at-a-time generation, tiny model",
                 _machine(r, "eval_generation.json"),
                 ", ".join(parts) + f"; target {_x(r.get('eval_generation.json', 'target_speedup'), 0)}"))

    rows.append(("`eval_sandbox.json`",
                 f"sandbox vs in-process, {r.get('eval_sandbox.json', 'items')} HumanEval items",
                 _machine(r, "eval_sandbox.json"),
                 f"+{r.get('eval_sandbox.json', 'overhead_per_item_ms', 'median'):.0f} ms per item "
                 f"(median; trusted judge, bubblewrap)"))

    gen = ("models", "gemma-270m", "1B_data_generation")
    diag = r.get("eval_gpu.json", *gen, "diagnostic")
    greedy = r.get("eval_gpu.json", *gen, "greedy")
    rows.append(("`eval_gpu.json`", "batched vs single: Gemma 3 270M eval and 1B data "
                 "generation", _machine(r, "eval_gpu.json"),
                 f"1B sampled (diagnostic): {_x(diag['speedup'])}; greedy: "
                 f"{_x(greedy['speedup'])}"))
    old = r.get("eval_gpu_h200_cpu_sampling.json", *gen, "diagnostic")
    rows.append(("`eval_gpu_h200_cpu_sampling.json`",
                 "the same before sampling moved onto the GPU",
                 _machine(r, "eval_gpu_h200_cpu_sampling.json"),
                 f"sampled: {_x(old['speedup'])}, {old['batched_tok_per_s']:.1f} tok/s batched "
                 f"(after the move, `eval_gpu.json`: {diag['batched_tok_per_s']:.0f} tok/s)"))

    name, key = _train_section(r)
    sec = r.get(name, "models", key)
    summary = r.get(name, "models", key, "summary")
    fastest = summary["fastest"]
    proj = summary["seed_1A_projection"][fastest]["full_2048_usd"]
    devices = sorted({s["machine"]["device"] for s in r.get(name, "models").values()})
    rows.append((f"`{name}`", "peft LoRA, peft + bitsandbytes QLoRA and unsloth on "
                 "Llama-shaped 8B and 1B models", " / ".join(devices),
                 f"{fastest} {_x(summary['fastest_vs_qlora_bnb'], 2)} QLoRA-bnb on "
                 f"{sec['machine']['device']} ({key.split(' @ ')[0]}, rank "
                 f"{sec['backends'][fastest]['lora_r']}, {sec['seq_len']} tokens); seed 1A "
                 f"projection ${proj:.0f} vs the seed's ${summary['seed']['seed_cost_usd']:.0f}"))

    seed = r.load("seed_code_path_h200.json")
    proj = seed["projection"]
    rows.append(("`seed_code_path_h200.json`", f"llama-3.1-8b's code path (0, 1A unsloth and "
                 f"qlora-bnb, 1B, 2A, 2B) at {' and '.join(map(str, seed['layers_measured']))} "
                 f"of the 8B's layers, projected to 32", _machine(r, "seed_code_path_h200.json"),
                 "; ".join(f"{k} {v['hours']:.3g} h ${_g(v['usd'], 2)} (seed ${v['seed_usd']})"
                           if v["hours"] is not None else f"{k} not projected"
                           for k, v in proj.items())))

    ddp_runs = r.get("train_ddp.json", "runs")
    ddp_parts = [f"{run['processes']} process{'es' * (run['processes'] > 1)}: "
                 f"{run['tokens_per_s']:,.0f} tokens/s, peak "
                 f"{max(run['peak_memory_allocated_gib_per_rank']):.1f} GiB per GPU"
                 for run in ddp_runs.values()]
    scaling = r.load("train_ddp.json").get("scaling", {})
    ddp_parts += [f"{key.split(',')[0]}: {_x(v['tokens_per_s_ratio'], 2)} tokens/s, "
                  f"efficiency {v['efficiency']:.2f}" for key, v in scaling.items()]
    if not scaling:
        ddp_parts.append("several GPUs: not measured yet (needs a machine with 2 GPUs)")
    first = next(iter(ddp_runs.values()))
    rows.append(("`train_ddp.json`", f"1A's training through torchrun (`hardware.processes`), "
                 f"Llama 3.1 8B layer shapes, {first['layers']} layers, {first['backend']} "
                 f"bf16, {first['batch']} x {first['grad_accum']} sequences of "
                 f"{first['seq_len']} tokens per step and process",
                 " / ".join(sorted({run["machine"]["device"] for run in ddp_runs.values()})),
                 "; ".join(ddp_parts)))

    tiny = r.get("gguf_inference_tiny.json", "ratios_shipped_gguf_over_transformers")
    gemma_name = "gguf_inference_gemma-270m.json"
    g = r.get(gemma_name, "ratios_shipped_gguf_over_transformers")
    ship = r.get(gemma_name, "shipped_type")
    gruns = r.get(gemma_name, "runs")
    shipped = gruns[f"llama.cpp {ship} n_batch=512"]["generation_tokens_per_s"]
    hf = gruns["transformers (uncompressed, float32)"]["generation_tokens_per_s"]
    hf_prompt = gruns["transformers (uncompressed, float32)"]["prompt_tokens_per_s"]
    one = gruns[f"llama.cpp {ship} n_batch=1"]["prompt_tokens_per_s"]
    load = (r.get(gemma_name, "machine", "load_average_1_5_15_at_start")[0],
            r.get(gemma_name, "machine", "load_average_1_5_15_at_end_of_speed_runs")[0])
    rows.append(("`gguf_inference_{tiny,gemma-270m}.json`", "shipped GGUF in llama.cpp vs the "
                 "uncompressed model in transformers", _machine(r, gemma_name),
                 f"tiny: {_x(tiny['generation_tokens_per_s'], 0)} generation tokens/s; gemma "
                 f"(load average {load[0]:.1f} → {load[1]:.1f}): {ship} {shipped:.1f} vs "
                 f"{hf:.1f} tok/s = {_x(g['generation_tokens_per_s'])}, peak RSS "
                 f"{_x(g['peak_rss'], 2)}; prompt {_x(g['prompt_tokens_per_s'], 2)} batched, "
                 f"{_x(one / hf_prompt, 2)} one token per decode call"))

    table = {row["type"]: row for row in r.get("gguf_kquants_gemma-270m.json", "table")}
    kq = [t for t in ("Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0") if t in table]
    k_only = [t for t in kq if "_K" in t]
    share = min(table[t]["intended_share"] for t in k_only)
    rows.append(("`gguf_kquants_{tiny,gemma-270m}.json`", f"{' / '.join(kq)}: size, tokens/s, "
                 "retention", _machine(r, "gguf_kquants_gemma-270m.json"),
                 f"gemma: {' / '.join(format(table[t]['mb'], '.0f') for t in kq)} MB; K-quant types "
                 f"hold {share:.0%} of the {' / '.join(k_only)} weights (the rest fall back: "
                 f"rows not a multiple of 256 wide)"))

    name = "student_teacher_qwen.json"
    pair = r.get(name, "results")
    budget = r.get(name, "settings", "max_new_tokens")
    parts = []
    for task in ("gsm8k", "humaneval", "gpqa", "bfcl"):
        got = [pair.get(m, {}).get(task) for m in ("student", "teacher")]
        if not any(got):
            parts.append(f"{task} not measured")
            continue
        line = task + " " + " / ".join(_score_with_cuts(g, budget) if g else "not measured"
                                       for g in got)
        published = [g["published"]["value"] if g else None for g in got]
        if any(v is not None for v in published):
            line += ", published " + " / ".join("-" if v is None else f"{v:.2f}"
                                                for v in published)
        parts.append(line)
    rows.append((f"`{name}`", "Qwen2.5-Coder 0.5B (student, in-process) / 1.5B Instruct "
                 "(teacher, served over HTTP) on the real benchmarks through llama.cpp, greedy, "
                 f"{r.get(name, 'sample')}", _machine(r, name), "; ".join(parts)))
    return rows


def _score_with_cuts(g: dict, budget: int) -> str:
    """A benchmark score with its n, and how many answers the token budget cut off: those are
    wrong by construction, not by the model's knowledge."""
    cut = g.get("truncated_at_max_new_tokens")
    return f"{g['score']:.2f} (n={g['n']}" + (f", {cut} cut at {budget} tokens" if cut else "") + ")"


def benchmarks_table(r: Results) -> str:
    lines = ["| result | what | machine | headline (ratio in the same run) |",
             "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in _rows(r)]
    return "\n".join(lines)


def dedup_speed(r: Results) -> str:
    impl = r.get("dedup.json", "implementations")
    records = r.get("dedup.json", "corpus", "records")
    cores = r.get("dedup.json", "machine", "cores")
    speeds = ", ".join(f"{p} {impl[p]['records_per_second']:,.0f}"
                       for p in ("ours", "rensa", "datasketch", "datatrove"))
    met = r.get("dedup.json", "targets", "ours_at_least_as_fast_as_fastest_qualifying_peer")
    # The medians alone would hide how close two implementations are: each round's seconds
    # for ours and the fastest qualifying peer go beside them.
    peers = r.get("dedup.json", "targets", "peers_at_precision_and_cluster_recall_0.95")
    fastest = max(peers, key=lambda p: impl[p]["records_per_second"], default=None)
    rounds = "; ".join(f"{p} {', '.join(f'{s:g}' for s in impl[p]['seconds_each_round'])}"
                       for p in ("ours", fastest) if p)
    return (f"records/s on {records:,} records, {cores} cores: {speeds} (median of "
            f"{r.get('dedup.json', 'rounds')} rounds; seconds per round: {rounds}); the target "
            f"(phase 0 at least as fast as the fastest peer at precision and cluster recall "
            f">= 0.95) is {'met' if met else 'not met'}")


def f32_gelu(r: Results, name: str) -> str:
    """bench_f32_gelu.py's finding: the F32 GGUF's distance from transformers, as it is and
    with llama.cpp's 16-bit GELU table emulated."""
    file = f"f32_gelu_{name}.json"
    a = r.get(file, "transformers_as_is")
    b = r.get(file, "transformers_with_ggml_gelu_table")
    return (f"the maximum KL falls from {a['max_kl']:.2g} to {b['max_kl']:.2g} and the mean "
            f"from {a['mean_kl']:.2g} to {b['mean_kl']:.2g} over {a['positions']} positions")


# --------------------------------------------------------------------------- pipeline

def _phase(r: Results, profile: str, phase: str) -> dict:
    name = SNAPSHOT.format(profile=profile)
    phases = r.get(name, "phases")
    if phase not in phases:
        raise SummaryError(f"{r._label(name)}: no phase {phase!r} (snapshotted: "
                           f"{', '.join(phases) or 'none'}); run it, then `cogumi report "
                           f"--summary`")
    return phases[phase]


def _metric(r: Results, profile: str, phase: str, key: str):
    metrics = _phase(r, profile, phase)["metrics"]
    if key not in metrics:
        raise SummaryError(f"{r._label(SNAPSHOT.format(profile=profile))}: phase {phase} has "
                           f"no metric {key!r}")
    return metrics[key]


def gates_table(r: Results, profile: str, phase: str) -> str:
    """The gates as `cogumi run` prints them (signoff.render_report's table)."""
    from cogumi.signoff import _fmt
    lines = ["| metric | value | threshold | source | result |", "|---|---|---|---|---|"]
    for g in _phase(r, profile, phase)["gates"]:
        mark = gate_mark(g)
        lines.append(f"| {g['metric']} | {_fmt(g['value'])} | {g['op']} {g['threshold']:g} | "
                     f"{g['source']} | {mark} |")
    return "\n".join(lines)


def _verdict(p: dict) -> str:
    if p.get("built_on_failed_inputs"):
        return "built on failed " + ", ".join(p["built_on_failed_inputs"])
    return "signed off" if p["passed"] else "gates failed"


def pipeline_phases(r: Results, profile: str) -> str:
    """One row per snapshotted phase: verdict, gates, wall time, commit."""
    name = SNAPSHOT.format(profile=profile)
    lines = ["| phase | verdict | gates passed | wall time | code |", "|---|---|---|---|---|"]
    for pid, p in r.get(name, "phases").items():
        commit = str(p["git_commit"])
        wall = p["wall_time_s"]
        lines.append(f"| {pid} | {_verdict(p)} | {gates_passed(p['gates'], brackets=True)} | "
                     f"{wall:.{1 if wall < 10 else 0}f} s | "
                     f"{commit[:10]}{'+dirty' * commit.endswith('+dirty')} |")
    return "\n".join(lines)


def phase0_accounting(r: Results, profile: str) -> str:
    from cogumi.data.quality import REMOVAL_RULES
    m = _phase(r, profile, "0")["metrics"]
    removed = [f"{rule.replace('_', ' ').replace('non english', 'non-English')} "
               f"{int(m[f'removed.{rule}'])}" for rule in REMOVAL_RULES if m.get(f"removed.{rule}")]
    text = (f"records in {int(m['records.in'])} = kept {int(m['records.kept'])} + removed "
            f"{int(m['records.removed'])} ({', '.join(removed)}) + quarantined "
            f"{int(m['records.quarantined'])}; English share {m['english.share']:.3f}")
    if "dedup.planted_precision" in m:
        text += (f"; dedup against the planted duplicates: precision "
                 f"{m['dedup.planted_precision']:.3f}, recall {m['dedup.planted_recall']:.3f}")
    return text + f" ({_phase(r, profile, '0')['wall_time_s']:.1f} s)"


def phase1a_before_after(r: Results, profile: str) -> str:
    kept = _metric(r, profile, "0", "records.kept")
    return (f"on phase 0's {int(kept)} curated records; math accuracy "
            f"{_g(_metric(r, profile, '1A', 'before.math.accuracy'))} before fine-tuning, "
            f"{_g(_metric(r, profile, '1A', 'math.accuracy'))} after")


def phase1b_figures(r: Results, profile: str) -> str:
    m = _phase(r, profile, "1B")["metrics"]
    return (f"consistency {_g(m['before.consistency'])} → {_g(m['consistency'])} of the prompts "
            f"whose sampled answers all agree (paired change, 95% interval "
            f"[{m['consistency.gain_lower']:+.3f}, {m['consistency.gain_upper']:+.3f}]); "
            f"greedy MATH {_g(m['before.math.accuracy'])} → {_g(m['math.accuracy'])} (95% "
            f"interval of the change [{m['vs_input.math.accuracy.delta_lower']:+.3f}, "
            f"{m['vs_input.math.accuracy.delta_upper']:+.3f}]); lm-eval on the same "
            f"checkpoint and files: {int(m['lm_eval.item_disagreements'])} item disagreements, "
            f"{int(m['lm_eval.math_extraction_differences'])} MATH extraction differences; "
            f"{int(m['distill.kept'])} verified generations kept, {int(m['distill.dropped'])} "
            f"dropped with their reasons")


def phase1c_figures(r: Results, profile: str) -> str:
    m = _phase(r, profile, "1C")["metrics"]
    k = int(m["failure_clusters"])
    falling = sum(m[f"cluster.{c}.failure_drop_lower"] > 0 for c in range(k))
    return (f"{int(m['failure_pool.fit_failures'])} failures of the 1B model on the pool's fit "
            f"side in {k} clusters (silhouette {m['clusters.silhouette']:.3f}); the teacher's "
            f"answers kept {int(m['teacher_examples'])} of {int(m['teacher.requests'])}; on the "
            f"held-out side the failure rate fell significantly in {falling} of the {k} clusters "
            f"(smallest lower bound {m['clusters.min_failure_drop_lower']:+.3f}); greedy MATH "
            f"{_g(m['math.accuracy'] - m['vs_input.math.accuracy.delta'])} (1B) → "
            f"{_g(m['math.accuracy'])} (95% interval of the "
            f"change [{m['vs_input.math.accuracy.delta_lower']:+.3f}, "
            f"{m['vs_input.math.accuracy.delta_upper']:+.3f}]); the student's suite score over "
            f"the teacher's on the same items {m['teacher_relative']:.3f}")


def phase2_chain(r: Results, profile: str) -> str:
    # 1B -> 1C -> 2A: 1C is in the chain where the profile runs it (it declares [distill]).
    steps = [s for s in ("1B", "1C", "2A", "2E", "2B")
             if s in r.get(SNAPSHOT.format(profile=profile), "phases")]
    walls = ", ".join(f"{s} {_phase(r, profile, s)['wall_time_s']:.0f} s" for s in steps
                      if s.startswith("2"))
    chains = "; ".join(
        f"{label} " + " → ".join(f"{_metric(r, profile, s, key):.3f} ({s})" for s in steps)
        for label, key in (("MATH", "math.accuracy"), ("MMLU", "mmlu.accuracy"),
                           ("code", "code.pass@1")))
    text = f"{walls}; sparsity {_metric(r, profile, '2A', 'sparsity'):.3f}; {chains}"
    if "2B" in steps:
        text += (f", {_metric(r, profile, '2A', 'size_mb'):.1f} MB → "
                 f"{_metric(r, profile, '2B', 'size_mb'):.1f} MB, "
                 f"{_metric(r, profile, '2B', 'bits_per_parameter'):.1f} bits per parameter")
    return text


KINDS: dict[str, tuple[Callable[..., str], tuple[str, ...]]] = {
    "benchmarks": (benchmarks_table, ()),
    "dedup-speed": (dedup_speed, ()),
    "f32-gelu": (f32_gelu, ("NAME",)),
    "pipeline": (pipeline_phases, ("PROFILE",)),
    "gates": (gates_table, ("PROFILE", "PHASE")),
    "phase0": (phase0_accounting, ("PROFILE",)),
    "phase1a": (phase1a_before_after, ("PROFILE",)),
    "phase1b": (phase1b_figures, ("PROFILE",)),
    "phase1c": (phase1c_figures, ("PROFILE",)),
    "phase2": (phase2_chain, ("PROFILE",)),
}


# --------------------------------------------------------------------------- snapshots

def snapshot(profile_name: str, runs_dir: Path) -> dict | None:
    """What the README may quote from runs/<profile>/: each phase whose latest gate run
    judged the artifact now on disk. None when no phase qualifies."""
    from cogumi import artifacts, ledger
    from cogumi.profile import load_profile
    from cogumi.registry import implemented_phases
    from cogumi.runner import config_digest

    profile = load_profile(profile_name)
    phases, skipped = {}, []
    for phase in implemented_phases():
        folder = runs_dir / phase.id
        if not (folder / artifacts.MANIFEST).exists():
            continue
        manifest = artifacts.read_manifest(folder)
        entry = ledger.latest(runs_dir, phase.id)
        if entry is None or entry.get("manifest_sha256") != ledger.manifest_digest(folder):
            skipped.append(f"{phase.id}: its artifact has no gate run")
            continue
        check = ledger.check_signoff(runs_dir, phase.id, config_digest(profile, phase.id))
        if check.state in (ledger.State.STALE, ledger.State.TAMPERED):
            # Not what the shipped profile would build now: never quoted as its result.
            skipped.append(f"{phase.id}: {check.reason}")
            continue
        files = {}
        for out in phase.outputs:
            path = folder / out
            if out.endswith(".json") and path.is_file() \
                    and path.stat().st_size <= SNAPSHOT_FILE_LIMIT:
                files[out] = json.loads(path.read_text())
        phases[phase.id] = {
            "state": check.state.value,
            "passed": entry["passed"],
            "built_on_failed_inputs": entry.get("built_on_failed_inputs", []),
            "gated_at": entry.get("at"),
            "gates": [{k: g.get(k) for k in ("metric", "op", "threshold", "source", "value",
                                             "passed", "waived", "claim")} for g in entry["gates"]],
            "wall_time_s": manifest.get("wall_time_s"),
            "peak_rss_mb": manifest.get("peak_rss_mb"),
            "estimated_cost_usd": manifest.get("estimated_cost_usd"),
            "hardware": manifest.get("hardware"),
            "git_commit": manifest.get("git_commit", provenance.UNRECORDED),
            "machine": manifest.get("machine", provenance.UNRECORDED),
            "versions": manifest.get("versions", provenance.UNRECORDED),
            "metrics": json.loads((folder / artifacts.METRICS).read_text()),
            "files": files,
        }
    if not phases:
        return None
    commits = sorted({str(p["git_commit"]) for p in phases.values()})

    def shared(key: str):
        # One value when every phase ran alike (the usual case: one machine, one venv).
        values = {pid: p[key] for pid, p in phases.items()}
        first = next(iter(values.values()))
        return first if all(v == first for v in values.values()) else {"per_phase": values}
    return {
        "benchmark": f"pipeline run of profile {profile_name}, copied from runs/{profile_name}/",
        "command": "python -m cogumi report --summary",
        "git_commit": commits[0] if len(commits) == 1 else commits,
        "machine": shared("machine"),
        "versions": shared("versions"),
        "profile": profile_name,
        "profile_sha256": profile.sha256,
        "skipped": skipped,
        "phases": phases,
    }


def write_snapshots(runs_base: Path, results_dir: Path) -> list[Path]:
    """Snapshot every shipped profile that has runs; returns the files written."""
    from cogumi.profile import profile_names
    written = []
    for name in profile_names():
        folder = runs_base / name
        if not folder.is_dir():
            continue
        data = snapshot(name, folder)
        if data is None:
            continue
        path = results_dir / SNAPSHOT.format(profile=name)
        path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
        written.append(path)
    return written


def summarise(readme: Path, results_dir: Path, runs_base: Path | None,
              check: bool) -> tuple[list[Path], list[Block]]:
    """--summary: snapshot runs (unless checking), then regenerate or compare README."""
    written = [] if check or runs_base is None else write_snapshots(runs_base, results_dir)
    text = readme.read_text()
    new, changed = render(text, Results(results_dir), readme.name)
    if not check and changed:
        readme.write_text(new)
    return written, changed
