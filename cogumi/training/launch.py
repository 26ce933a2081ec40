"""LoRA training in several processes: torchrun starts them, the transformers Trainer runs DDP.

    train_lora_processes(model_cfg, training_cfg, examples, seed, checkpoint_dir, device,
                         processes, job_dir, root) -> TrainingResult

The phase's own process stays out of the process group: it evaluates, writes the artifact
and the manifest, exactly as in a one-process run. For the training it writes a job file
and the encoded examples into `job_dir` (the phase's work folder) and runs

    python -m torch.distributed.run --standalone --nproc-per-node N -m cogumi.training.launch JOB

Each worker loads the base model the backend's way on its own device (cuda:LOCAL_RANK, or
the CPU, where the process group uses gloo) and calls the same `train_lora` a one-process run
calls. The Trainer sees torchrun's environment and wraps the model in DDP: each rank gets
every N-th micro-batch of the one sampled order, the loss is normalised by the answer tokens
of the whole global batch (`average_tokens_across_devices`), gradients are averaged, and
checkpoints, logging and the progress bar happen on rank 0 only. A killed run resumes from
the newest checkpoint in `checkpoint_dir`, as in one process (the Trainer keeps one RNG state
per rank there).

What comes back is files: rank 0 saves the adapter to `job_dir/result/adapter` and writes
`result.json` (log history, whether it resumed) last, so a result without it is incomplete;
every rank writes `rank<N>.json` with its peak accelerator memory and how long each
optimizer step took. The phase loads the adapter onto its own copy of the base model.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from cogumi.profile import ModelConfig, TrainingConfig
from cogumi.training.sft import Example

RESULT = "result"
"""The folder under job_dir that the workers write and the phase reads."""


class LaunchError(RuntimeError):
    """The training processes could not be started or did not finish; one line."""


@dataclass
class TrainingResult:
    adapter_dir: Path
    log_history: list[dict]
    resumed: bool
    ranks: list[dict]
    """Per rank, in rank order: peak_memory_allocated_bytes (None on the CPU) and step_s,
    the seconds of each optimizer step this run took (forward, backward and optimizer for
    all its micro-batches; not the checkpoint saves and logging between steps)."""


def check_processes(processes: int, device: str) -> None:
    """One line naming hardware.processes when this machine cannot run that many."""
    if processes < 1:
        raise LaunchError(f"hardware.processes = {processes}: must be at least 1")
    if device != "cuda":
        return
    import torch
    found = torch.cuda.device_count()
    if processes > found:
        raise LaunchError(f"hardware.processes = {processes} needs {processes} CUDA GPUs, "
                          f"torch sees {found} here")


def torchrun_command(job_file: Path, processes: int) -> list[str]:
    """torch's own launcher, from the interpreter running now (the same environment).
    --standalone: a rendezvous on this host with a free port, nothing to configure."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={processes}", "-m", "cogumi.training.launch", str(job_file)]


def train_lora_processes(model_cfg: ModelConfig, training_cfg: TrainingConfig,
                         examples: list[Example], seed: int, checkpoint_dir: Path, device: str,
                         processes: int, job_dir: Path, root: Path) -> TrainingResult:
    """Train LoRA adapters on `examples` in `processes` DDP workers; see the module docstring.

    `training_cfg.batch_size` is per process. The workers seed torch with `seed` right
    before the adapters are created, so every rank starts from the same adapter weights
    (DDP also broadcasts rank 0's when it wraps the model)."""
    check_processes(processes, device)
    job_dir.mkdir(parents=True, exist_ok=True)
    result_dir = job_dir / RESULT
    shutil.rmtree(result_dir, ignore_errors=True)  # a stale result must never be read back
    examples_file = job_dir / "examples.jsonl"
    with examples_file.open("w") as f:
        for e in examples:
            f.write(json.dumps(asdict(e)) + "\n")
    job_file = job_dir / "job.json"
    job_file.write_text(json.dumps({
        "model": model_cfg.model_dump(mode="json"),
        "training": training_cfg.model_dump(mode="json"),
        "seed": seed,
        "device": device,
        "root": str(root),
        "checkpoint_dir": str(checkpoint_dir),
        "examples": str(examples_file),
        "result_dir": str(result_dir),
    }, indent=2))
    env = dict(os.environ)
    # The workers import the cogumi that launched them, from any working directory.
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    command = torchrun_command(job_file, processes)
    proc = subprocess.Popen(command, env=env, cwd=root)
    try:
        returncode = proc.wait()
    except BaseException:
        # Interrupted here (Ctrl-C, a timeout): SIGTERM, which torchrun passes on to its
        # workers, so that none is left training on a GPU.
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    if returncode != 0:
        raise LaunchError(f"training in {processes} processes failed (torchrun exit "
                          f"{returncode}); the workers' output is above; job: {job_file}")
    summary_file = result_dir / "result.json"
    if not summary_file.is_file():
        raise LaunchError(f"training in {processes} processes exited 0 but wrote no "
                          f"{summary_file}")
    summary = json.loads(summary_file.read_text())
    ranks = [json.loads((result_dir / f"rank{r}.json").read_text()) for r in range(processes)]
    return TrainingResult(result_dir / "adapter", summary["log_history"], summary["resumed"],
                          ranks)


# --- the worker: what torchrun runs in each process ----------------------------------------

def _load_indexed_cpu_locations() -> None:
    """Let torch.load map storages to "cpu:N". accelerate names a CPU worker's device
    torch.device("cpu", N), and transformers 5.17 resumes a multi-process run's optimizer
    state with map_location = that device; torch 2.13's loader knows only "cpu" and refuses
    "cpu:0", so a killed multi-process CPU run could not resume. Registered through torch's
    own extension point (ahead of its CPU entry, which has priority 10); saving is untouched.
    """
    import torch.serialization

    def deserialize(storage, location):
        return storage if location.startswith("cpu:") else None

    torch.serialization.register_package(9, lambda obj: None, deserialize)


def _worker(job_file: Path) -> None:
    job = json.loads(job_file.read_text())
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    device = job["device"]
    import torch
    from transformers import TrainerCallback

    from cogumi.training import backends
    from cogumi.training.sft import train_lora

    if device == "cpu":
        _load_indexed_cpu_locations()
    if device == "cuda":
        # Before loading: "cuda" then means this rank's GPU for .to() and device_map alike.
        torch.cuda.set_device(local_rank)
    cfg = TrainingConfig.model_validate(job["training"])
    loaded = backends.load_for_training(ModelConfig.model_validate(job["model"]), cfg,
                                        Path(job["root"]), device)
    examples = [Example(**json.loads(line))
                for line in Path(job["examples"]).read_text().splitlines() if line]

    step_s: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if device == "cuda":
                torch.cuda.synchronize()  # the host clock then covers the step's GPU work
            step_s.append(time.perf_counter() - self.begin)

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(job["seed"])
    peft_model, log_history, resumed = train_lora(
        loaded.model, loaded.tokenizer, examples, cfg, job["seed"], Path(job["checkpoint_dir"]),
        device, callbacks=[StepClock()])
    result_dir = Path(job["result_dir"])
    result_dir.mkdir(parents=True, exist_ok=True)
    (result_dir / f"rank{rank}.json").write_text(json.dumps({
        "rank": rank,
        "peak_memory_allocated_bytes": (torch.cuda.max_memory_allocated()
                                        if device == "cuda" else None),
        "step_s": step_s,
    }))
    if rank == 0:
        peft_model.save_pretrained(result_dir / "adapter")
    if torch.distributed.is_initialized():
        # Every rank's file is written before rank 0 declares the result complete.
        torch.distributed.barrier()
    if rank == 0:
        (result_dir / "result.json").write_text(json.dumps(
            {"log_history": log_history, "resumed": resumed,
             "world_size": int(os.environ["WORLD_SIZE"])}, indent=2))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: torchrun ... -m cogumi.training.launch JOB.json")
    _worker(Path(sys.argv[1]))
