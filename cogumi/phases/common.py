"""What several phases share: measuring a model on the profile's evaluation tasks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cogumi.evaluation import GenerationSettings, TransformersBackend, evaluate, load_task
from cogumi.models import LoadedModel
from cogumi.runner import PhaseContext, PhaseInputError


@contextmanager
def generation_backend(ctx: PhaseContext, loaded: LoadedModel) -> Iterator[TransformersBackend]:
    """The profile's generation backend over a loaded model, with a progress bar."""
    with ctx.progress() as progress:
        yield TransformersBackend(loaded.model, loaded.tokenizer,
                                  batch_size=ctx.profile.eval.batch_size,
                                  add_bos=loaded.add_bos, progress=progress)


def eval_cache(ctx: PhaseContext) -> Path:
    """One evaluation cache per profile, shared by its phases: a result is reused only for
    the same weights, tokenizer, task bytes and generation settings (see evaluate())."""
    return ctx.runs_dir / ".eval-cache"


def eval_tasks(ctx: PhaseContext) -> list:
    """The profile's evaluation tasks ([eval] math, mmlu, code)."""
    cfg = ctx.profile.eval
    tasks = [load_task(kind, ctx.resolve(path))
             for kind, path in (("math", cfg.math), ("mmlu", cfg.mmlu), ("code", cfg.code))
             if path is not None]
    if not tasks:
        raise PhaseInputError(f"{ctx.profile.source_file}: [eval] names no task files")
    return tasks


def evaluate_model(ctx: PhaseContext, loaded: LoadedModel, out_dir: Path) -> dict:
    """Greedy evaluation on the profile's tasks; per-item records are written to out_dir."""
    cfg = ctx.profile.eval
    tasks = eval_tasks(ctx)
    if cfg.limit is not None:
        note = f"reduced evaluation sample: at most {cfg.limit} items per task (eval.limit)"
        if note not in ctx.notes:
            ctx.notes.append(note)
    settings = GenerationSettings(max_new_tokens=cfg.max_new_tokens, temperature=0.0,
                                  seed=ctx.seed, samples=1, stop=tuple(ctx.profile.model.stop))
    with generation_backend(ctx, loaded) as backend:
        report = evaluate(backend, tasks, settings, limit=cfg.limit, cache_dir=eval_cache(ctx))
    report.write(out_dir)
    return dict(report.metrics)
