"""Supervised fine-tuning with LoRA: chat template applied, prompt tokens masked.

One entry point, `train_lora`, for the backends the profile can name. This module holds the
training loop (the transformers Trainer, which gives us checkpoints a killed run resumes
from); how each backend loads the model, attaches LoRA and picks its optimizer lives in
`cogumi.training.backends`. A backend that cannot run here fails with one line naming
`training.backend`, never a silent fallback.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cogumi.profile import TrainingConfig
from cogumi.training import backends

IGNORE_INDEX = -100  # label value the loss skips: prompt tokens and padding


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]


@dataclass
class EncodedData:
    examples: list[Example]
    excluded: Counter = field(default_factory=Counter)
    """Reason → count for records that could not become training examples."""


def messages_for(record: dict) -> list[dict]:
    msgs = [{"role": "system", "content": record["system"]}] if record.get("system") else []
    return msgs + [{"role": "user", "content": record["instruction"]}]


def encode_records(records: list[dict], tokenizer, add_bos: bool, max_seq_len: int) -> EncodedData:
    """Render each record with the chat template and mask everything but the answer."""
    out = EncodedData([])
    bos = tokenizer.bos_token_id
    for record in records:
        if not record.get("response", "").strip():
            out.excluded["empty response"] += 1
            continue
        prompt = tokenizer.apply_chat_template(messages_for(record), tokenize=False,
                                               add_generation_prompt=True)
        full = tokenizer.apply_chat_template(
            messages_for(record) + [{"role": "assistant", "content": record["response"]}],
            tokenize=False)
        if not full.startswith(prompt):
            out.excluded["chat template does not extend the prompt"] += 1
            continue
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
        if add_bos and bos is not None and (not prompt_ids or prompt_ids[0] != bos):
            prompt_ids = [bos] + prompt_ids
        ids = prompt_ids + answer_ids
        if len(ids) > max_seq_len:
            out.excluded[f"longer than max_seq_len {max_seq_len}"] += 1
            continue
        out.examples.append(Example(ids, [IGNORE_INDEX] * len(prompt_ids) + answer_ids))
    return out


def split_heldout(records: list[dict], fraction: float) -> tuple[list[dict], list[dict]]:
    """Deterministic split by id hash, so the same record is always on the same side."""
    def bucket(r: dict) -> float:
        return int(hashlib.sha256(r["id"].encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    train = [r for r in records if bucket(r) >= fraction]
    heldout = [r for r in records if bucket(r) < fraction]
    return train, heldout


class _ListDataset:
    def __init__(self, examples: list[Example]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        e = self.examples[i]
        return {"input_ids": e.input_ids, "labels": e.labels}


def _collate(pad_id: int):
    import torch

    def collate(batch: list[dict]) -> dict:
        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[i, :n] = torch.tensor(b["input_ids"])
            labels[i, :n] = torch.tensor(b["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}
    return collate


def mean_loss(model, examples: list[Example], pad_id: int, batch_size: int = 16) -> float:
    """Token-weighted mean cross-entropy over the answer tokens of `examples`."""
    import torch
    if not examples:
        return float("nan")
    collate = _collate(pad_id)
    total, tokens = 0.0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = collate([{"input_ids": e.input_ids, "labels": e.labels}
                             for e in examples[start:start + batch_size]])
            batch = {k: v.to(model.device) for k, v in batch.items()}
            logits = model(input_ids=batch["input_ids"],
                           attention_mask=batch["attention_mask"]).logits[:, :-1]
            target = batch["labels"][:, 1:]
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.size(-1)).float(), target.reshape(-1),
                ignore_index=IGNORE_INDEX, reduction="sum")
            total += loss.item()
            tokens += int((target != IGNORE_INDEX).sum())
    return total / max(tokens, 1)


def plot_loss_curve(log_history: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    steps = [h["step"] for h in log_history if "loss" in h]
    losses = [h["loss"] for h in log_history if "loss" in h]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, losses, marker=".", linewidth=1)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (answer tokens)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def distillation_loss(student_logits, teacher_logits, labels):
    """Mean KL(teacher || student) over the answer tokens (labels != IGNORE_INDEX): the
    student learns the teacher's whole next-token distribution at every answer position,
    not only the one token the record wrote. Both are shifted as for the LM loss."""
    import torch

    s = student_logits[:, :-1].float()
    t = teacher_logits[:, :-1].float()
    keep = labels[:, 1:] != IGNORE_INDEX
    if not keep.any():
        return s.sum() * 0.0
    log_s = torch.log_softmax(s[keep], dim=-1)
    log_t = torch.log_softmax(t[keep], dim=-1)
    return torch.sum(log_t.exp() * (log_t - log_s), dim=-1).mean()


def train_lora(model, tokenizer, train: list[Example], cfg: TrainingConfig, seed: int,
               checkpoint_dir: Path, device: str, teacher=None, callbacks=()):
    """Wrap `model` with LoRA adapters and train them; returns (peft_model, log_history,
    resumed).

    `model` comes from `backends.load_for_training` (for peft-lora, `load_base_model` gives the
    same), since the 4-bit backends quantise while loading. Checkpoints go to
    `checkpoint_dir`; a run killed mid-way resumes from the newest one. With `teacher` (a
    frozen model on the same tokenizer) the loss is `distillation_loss` against it instead
    of the records' tokens. `callbacks`: TrainerCallbacks added to the Trainer (the
    launched workers' step clock).
    """
    backends.check_available(cfg.backend, device)
    peft_model = backends.wrap_lora(model, cfg, seed)
    # wrap_lora has set up gradient checkpointing the backend's own way (unsloth's offloading
    # variant, QLoRA's non-reentrant one); fit must not switch it to the plain one.
    fit_cfg = cfg.model_copy(update={"gradient_checkpointing": False})
    log_history, resumed = fit(peft_model, tokenizer, train, fit_cfg, seed, checkpoint_dir,
                               device, teacher=teacher, callbacks=callbacks)
    return peft_model, log_history, resumed


def fit(peft_model, tokenizer, train: list[Example], cfg: TrainingConfig, seed: int,
        checkpoint_dir: Path, device: str, epochs: float | None = None,
        learning_rate: float | None = None, teacher=None,
        callbacks=()) -> tuple[list[dict], bool]:
    """Train an already LoRA-wrapped model with the transformers Trainer.

    `epochs` and `learning_rate` override the profile's 1A values (phase 1B trains the same
    adapter further, with the seed's own 1B schedule). `teacher`, `callbacks`: see
    `train_lora`. In a worker of cogumi.training.launch (torchrun's WORLD_SIZE > 1) the
    Trainer runs DDP, and `cfg.batch_size` is per process.
    Returns (log_history, resumed).
    """
    from transformers import Trainer, TrainingArguments
    from transformers.trainer_callback import ProgressCallback

    class _BarOnlyProgress(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            pass

    if cfg.gradient_checkpointing:
        peft_model.gradient_checkpointing_enable()
        peft_model.enable_input_require_grads()
    epochs = cfg.epochs if epochs is None else epochs
    world_size = launched_world_size()
    steps_per_epoch = math.ceil(len(train) / (cfg.batch_size * cfg.grad_accum * world_size))
    total_steps = max(1, math.ceil(steps_per_epoch * epochs))
    args = TrainingArguments(
        output_dir=str(checkpoint_dir),
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate if learning_rate is None else learning_rate,
        num_train_epochs=epochs,
        warmup_steps=int(cfg.warmup_ratio * total_steps),
        lr_scheduler_type="cosine",
        logging_steps=1,
        save_strategy="steps",
        save_steps=max(1, total_steps // 4),
        save_total_limit=2,
        seed=seed,
        data_seed=seed,
        report_to=[],
        use_cpu=device == "cpu",
        dataloader_num_workers=0,
        remove_unused_columns=False,
        # length-grouped batches waste less compute on padding
        train_sampling_strategy="group_by_length",
        **backends.trainer_arguments(cfg, device),  # the backend's optimizer, bf16 on GPUs
        **_ddp_arguments(device, world_size),
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    trainer_class = Trainer if teacher is None else _distilling_trainer(Trainer, teacher)
    trainer = trainer_class(model=peft_model, args=args, train_dataset=_ListDataset(train),
                            data_collator=_collate(pad_id))
    # Keep the progress bar, drop the per-step dict it prints: the loss curve PNG and
    # train_log.json hold every logged step.
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(_BarOnlyProgress)
    for callback in callbacks:
        trainer.add_callback(callback)
    resume = any(checkpoint_dir.glob("checkpoint-*"))
    trainer.train(resume_from_checkpoint=True if resume else None)
    return trainer.state.log_history, resume


def fit_keeping_zeros(model, tokenizer, train: list[Example], cfg: TrainingConfig, seed: int,
                      checkpoint_dir: Path, device: str, masks: dict, epochs: float,
                      learning_rate: float, teacher=None) -> tuple[list[dict], bool]:
    """Train every weight of `model` (no adapter) while the pruning mask holds: after each
    optimizer step the masked positions are set back to zero (`masks`: llmc.zero_masks).
    Re-applying the mask holds whatever the optimizer does (its moments, weight decay, a
    resumed checkpoint), where masking gradients would rely on each of them leaving a zero
    alone. Returns fit's (log_history, resumed)."""
    from transformers import TrainerCallback

    from cogumi.compression.llmc import apply_masks

    class KeepZeros(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            apply_masks(model, masks)

    model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    full = cfg.model_copy(update={"backend": "peft-lora", "gradient_checkpointing": False})
    history = fit(model, tokenizer, train, full, seed, checkpoint_dir, device, epochs=epochs,
                  learning_rate=learning_rate, teacher=teacher, callbacks=(KeepZeros(),))
    apply_masks(model, masks)  # a resumed run's checkpoint holds them already; cheap to be sure
    model.eval()
    return history


def launched_world_size() -> int:
    """How many processes train together: torchrun's WORLD_SIZE in a worker that
    cogumi.training.launch started, 1 in the phase's own process."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _ddp_arguments(device: str, world_size: int) -> dict:
    """TrainingArguments for DDP in a torchrun worker; none in one process, so that path's
    arguments are what they always were. LoRA trains every adapter on every step, so DDP
    need not search the graph for unused parameters (that search also breaks reentrant
    gradient checkpointing)."""
    if world_size == 1:
        return {}
    return {"ddp_backend": "nccl" if device == "cuda" else "gloo",
            "ddp_find_unused_parameters": False}


def _distilling_trainer(trainer_base, teacher):
    """A Trainer whose loss is `distillation_loss` against the frozen `teacher`."""
    import torch

    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    class DistillingTrainer(trainer_base):
        def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
            feed = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
            with torch.no_grad():
                teacher_logits = teacher(**feed).logits
            outputs = model(**feed)
            loss = distillation_loss(outputs.logits, teacher_logits, inputs["labels"])
            return (loss, outputs) if return_outputs else loss

    return DistillingTrainer


def checkpoint_key(*parts: str) -> str:
    """Checkpoints are only resumed by a run over the same inputs and settings."""
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]
