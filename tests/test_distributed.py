"""Training in two processes (torchrun, DDP on gloo) gives one process's losses.

Two runs over the same 32 examples, 8 optimizer steps of the same global batch of 4:
today's one-process path (`train_lora` in this process, batch 4) and the launched one
(`train_lora_processes`, 2 processes x batch 2, the path `cogumi run 1A` takes when
`hardware.processes = 2`). They see the same examples at each step: the Trainer's
length-grouped sampler draws one order from the same seed, and with 32 examples its
mega-batch is 8 examples either way (min(32 // (4 b), 50) x b for b = 4 and b = 2), so the
order is the same, and the two ranks take alternate micro-batches of 2 from it, making up
the one-process batch of 4 at each step. The loss is normalised by the answer tokens of the
whole global batch, on both paths.

So the two compute the same real-valued function and differ only in float rounding: the
order of the sums over tokens in the loss and in the weight gradients (one batch of 4, or
two of 2 and gloo's all-reduce), BLAS blocking for other matrix shapes, padding widths.
The tolerance, fixed from that before the test was first run: in float64 (unit roundoff
u = 2^-53 = 1.1e-16), reordering a sum of n terms moves it by at most about 2 n u of the sum
of the terms' magnitudes; the longest sums here are the weight gradients over a global
batch's tokens and the matrix products over the vocabulary (n <= 300), so <= 7e-14 of that
magnitude. Allowing a factor of 1e3 for cancellation (a sum much smaller than its terms'
magnitudes) and for 8 AdamW steps carrying the difference forward gives 1e-10; the test
allows rel = 1e-9 on what stays in float64: the adapter weights and the final adapters'
loss on the examples.

The losses the Trainer logs are not float64: it adds each step's loss into a float32
accumulator (`Trainer._tr_loss`, in place), and with DDP averages the ranks' float32 values
in float32. (The first version of this test held them to 1e-9 too and failed by one float32
ulp at one step: this rounding had been overlooked.) One process logs fl32(L), within half
an ulp of L; two log fl32((fl32(a) + fl32(b)) / 2) with a + b = 2L, |a|, |b| <= 2|L|,
within 1.5 ulp of L. So they may differ by 2 ulp(L) <= 2 * 2^-23 |L|: rel = 2^-22 (+ the
float64 1e-9) for the logged losses.

A real difference is far larger than either tolerance: a loss averaged per process
instead of over the global batch (the answers differ in length), another batch composition,
or gradients not averaged across the ranks change the losses at the scale of the training
itself (lr 1e-2 moves the loss by about 0.1 per step). With `average_tokens_across_devices`
turned off in cogumi.training.sft, this test fails.

The launched run is then resumed the way a killed one would be: its last checkpoint
(step 8) is removed and the same job launched again; it continues from step 6 to the same
final loss and adapter.
"""

import shutil

import pytest
import torch

from cogumi.evaluation.testing import tiny_llama, tiny_tokenizer
from cogumi.profile import ModelConfig, TrainingConfig
from cogumi.training import backends
from cogumi.training.launch import LaunchError, check_processes, train_lora_processes
from cogumi.training.sft import encode_records, mean_loss, train_lora

REL = 1e-9  # float64 values; see the module docstring (float64 rounding, margin 1e3, x10)
REL_LOGGED = 2**-22 + REL  # the Trainer's logged losses: float32, two ulps (module docstring)
SEED = 0


def _cfg(batch_size: int) -> TrainingConfig:
    return TrainingConfig(backend="peft-lora", lora_rank=4, lora_alpha=8, lora_dropout=0.0,
                          target_modules=["q_proj", "v_proj"], epochs=1, learning_rate=1e-2,
                          batch_size=batch_size, max_seq_len=128)


def _records(n):
    return [{"id": f"r{i}", "instruction": f"What is {i} plus 1?", "response": f"{i + 1}"}
            for i in range(n)]


@pytest.fixture(scope="module")
def model_cfg(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-f64")
    tok = tiny_tokenizer()
    tiny_llama(tok, seed=SEED).save_pretrained(folder)
    tok.save_pretrained(folder)
    return ModelConfig(source="local", path=str(folder), dtype="float64", parameters=1e5)


def _losses(log_history):
    return [h["loss"] for h in log_history if "loss" in h]


def _adapter(folder) -> dict:
    from safetensors.torch import load_file
    return load_file(folder / "adapter_model.safetensors")


def _assert_same_tensors(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for name, tensor in want.items():
        assert got[name].dtype == torch.float64, name
        torch.testing.assert_close(got[name], tensor, rtol=REL,
                                   atol=REL * float(tensor.abs().max()), msg=name)


@pytest.fixture(scope="module")
def runs(model_cfg, tmp_path_factory):
    """The one-process run in this process and the two-process launched one."""
    from peft import PeftModel

    tmp = tmp_path_factory.mktemp("ddp")
    one = backends.load_for_training(model_cfg, _cfg(4), tmp, "cpu")
    examples = encode_records(_records(32), one.tokenizer, False, 128).examples
    torch.manual_seed(SEED)  # as the launched workers do before the adapters are made
    model_one, log_one, _ = train_lora(one.model, one.tokenizer, examples, _cfg(4), SEED,
                                       tmp / "one", "cpu")
    model_one.save_pretrained(tmp / "adapter-one")

    def launch():
        return train_lora_processes(model_cfg, _cfg(2), examples, SEED, tmp / "two", "cpu", 2,
                                    tmp / "job", tmp)

    two = launch()
    # The phase's way back: its own copy of the base model with the workers' adapter.
    base = backends.load_for_training(model_cfg, _cfg(2), tmp, "cpu")
    model_two = PeftModel.from_pretrained(base.model, two.adapter_dir)
    pad = one.tokenizer.pad_token_id
    return {"log_one": log_one, "two": two, "launch": launch, "tmp": tmp,
            "adapter_one": _adapter(tmp / "adapter-one"),
            "adapter_two": _adapter(two.adapter_dir),
            "loss_one": mean_loss(model_one, examples, pad),
            "loss_two": mean_loss(model_two, examples, pad)}


def test_two_gloo_processes_train_like_one(runs):
    losses_one, losses_two = _losses(runs["log_one"]), _losses(runs["two"].log_history)
    assert len(losses_one) == len(losses_two) == 8
    assert losses_one[-1] < losses_one[0] - 0.1  # it trained: the comparison is not vacuous
    assert losses_two == pytest.approx(losses_one, rel=REL_LOGGED)
    _assert_same_tensors(runs["adapter_two"], runs["adapter_one"])
    assert runs["loss_two"] == pytest.approx(runs["loss_one"], rel=REL)
    assert not runs["two"].resumed
    assert [r["rank"] for r in runs["two"].ranks] == [0, 1]
    assert all(len(r["step_s"]) == 8 for r in runs["two"].ranks)


def test_a_killed_launched_run_resumes_to_the_same_adapter(runs):
    """Killed after the step-6 checkpoint: the relaunch continues from it, not from 0."""
    checkpoints = runs["tmp"] / "two"
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == [
        "checkpoint-6", "checkpoint-8"]
    shutil.rmtree(checkpoints / "checkpoint-8")
    again = runs["launch"]()
    assert again.resumed
    assert [len(r["step_s"]) for r in again.ranks] == [2, 2]  # steps 7 and 8 only
    assert _losses(again.log_history)[-1] == pytest.approx(
        _losses(runs["two"].log_history)[-1], rel=REL_LOGGED)
    _assert_same_tensors(_adapter(again.adapter_dir), runs["adapter_two"])


def test_more_processes_than_gpus_is_refused_naming_the_key():
    with pytest.raises(LaunchError, match=r"^hardware\.processes = \d+ needs \d+ CUDA GPUs"):
        check_processes(torch.cuda.device_count() + 1, "cuda")
    check_processes(2, "cpu")  # gloo on the CPU: any number
