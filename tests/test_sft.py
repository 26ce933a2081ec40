"""SFT data and training loop: masking, exclusions with reasons, and resume after a kill."""

import pytest
import torch

from cogumi.evaluation.testing import tiny_llama, tiny_tokenizer
from cogumi.profile import TrainingConfig
from cogumi.training.sft import IGNORE_INDEX, encode_records, fit, split_heldout


def _cfg(**kw):
    base = dict(backend="peft-lora", lora_rank=4, lora_alpha=8, lora_dropout=0.0,
                target_modules=["q_proj", "v_proj"], epochs=1, learning_rate=1e-2,
                batch_size=4, max_seq_len=128)
    return TrainingConfig(**{**base, **kw})


def _records(n):
    return [{"id": f"r{i}", "instruction": f"What is {i} plus 1?", "response": f"{i + 1}"}
            for i in range(n)]


def test_only_answer_tokens_are_trained():
    tok = tiny_tokenizer()
    data = encode_records(_records(3), tok, add_bos=False, max_seq_len=128)
    assert len(data.examples) == 3
    for example, record in zip(data.examples, _records(3), strict=True):
        answer = [t for t, lab in zip(example.input_ids, example.labels, strict=True)
                  if lab != IGNORE_INDEX]
        assert record["response"] in tok.decode(answer)
        assert "plus" not in tok.decode(answer)  # the prompt is masked
        assert example.labels[0] == IGNORE_INDEX


def test_bad_records_are_counted_with_a_reason_not_crashing():
    tok = tiny_tokenizer()
    records = _records(2) + [{"id": "e", "instruction": "Hi", "response": "  "},
                             {"id": "l", "instruction": "x" * 500, "response": "y"}]
    data = encode_records(records, tok, add_bos=False, max_seq_len=64)
    assert len(data.examples) == 2
    assert data.excluded == {"empty response": 1, "longer than max_seq_len 64": 1}


def test_bos_is_added_once_when_asked():
    tok = tiny_tokenizer(add_bos_itself=False)
    data = encode_records(_records(1), tok, add_bos=True, max_seq_len=128)
    ids = data.examples[0].input_ids
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id


def test_heldout_split_is_deterministic_and_disjoint():
    records = _records(200)
    train, held = split_heldout(records, 0.1)
    assert split_heldout(list(reversed(records)), 0.1)[1] == list(reversed(held))
    assert not {r["id"] for r in train} & {r["id"] for r in held}
    assert 5 < len(held) < 40


class _Killed(Exception):
    pass


def _train(tmp_path, callback=None):
    """Train a LoRA on the random tiny model for 16 steps, optionally with a callback."""
    import transformers
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    tok = tiny_tokenizer()
    model = get_peft_model(tiny_llama(tok, seed=0),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                      task_type="CAUSAL_LM"))
    examples = encode_records(_records(32), tok, False, 128).examples
    original = transformers.Trainer.__init__

    def init(self, *a, **kw):
        original(self, *a, **kw)
        if callback is not None:
            self.add_callback(callback)
    transformers.Trainer.__init__ = init
    try:
        return fit(model, tok, examples, _cfg(epochs=2), 0, tmp_path, "cpu")
    finally:
        transformers.Trainer.__init__ = original


def test_killed_run_resumes_to_the_same_loss(tmp_path):
    from transformers import TrainerCallback

    class KillAtStep6(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 6:
                raise _Killed()

    steps_run = []

    class CountSteps(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            steps_run.append(state.global_step)

    # 32 examples / batch 4 = 8 steps per epoch, 16 in all; checkpoints every 4 steps.
    clean_log, resumed = _train(tmp_path / "clean")
    assert not resumed
    with pytest.raises(_Killed):
        _train(tmp_path / "killed", KillAtStep6())  # dies after checkpoint-4 was written
    assert (tmp_path / "killed" / "checkpoint-4").exists()
    log, resumed = _train(tmp_path / "killed", CountSteps())
    assert resumed
    assert steps_run == list(range(5, 17))  # continued from step 4, did not start over
    final = [h["loss"] for h in log if "loss" in h][-1]
    clean_final = [h["loss"] for h in clean_log if "loss" in h][-1]
    # Same seed, same data order, restored optimizer and RNG state: equal to float noise.
    assert final == pytest.approx(clean_final, rel=1e-4, abs=1e-4)
