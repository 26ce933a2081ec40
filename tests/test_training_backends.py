"""Training backends (`training.backend`): dispatch, the one-line error without a GPU, and the
mapping from the profile to LoRA, 4-bit and unsloth settings. Fast and CPU-only:

    pytest tests/test_training_backends.py

The GPU tests at the end are skipped without CUDA (and without bitsandbytes / unsloth); the
throughput and memory of each backend are measured by benchmarks/bench_train_backends.py.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from cogumi.profile import load_profile
from cogumi.training import backends
from cogumi.training.backends import BackendUnavailable
from cogumi.training.sft import Example, train_lora

from .conftest import ROOT

NO_CUDA = not torch.cuda.is_available()


def seed_training(backend: str = "unsloth"):
    """The seed's 1A settings (llama-3.1-8b profile), with the backend swapped."""
    return load_profile("llama-3.1-8b").training.model_copy(update={"backend": backend})


def test_every_profile_backend_has_an_implementation():
    from typing import get_args

    from cogumi.profile import TrainingConfig
    names = get_args(TrainingConfig.model_fields["backend"].annotation)
    assert set(names) == set(backends.BACKENDS)
    assert not backends.get_backend("peft-lora").needs_cuda
    assert backends.get_backend("qlora-bnb").needs_cuda
    assert backends.get_backend("unsloth").needs_cuda


def test_unknown_backend_names_the_profile_key():
    with pytest.raises(BackendUnavailable, match=r"^training\.backend = 'deepspeed' is not one of"):
        backends.get_backend("deepspeed")


@pytest.mark.parametrize("name", ["qlora-bnb", "unsloth"])
def test_gpu_backend_on_a_cpu_profile_fails_in_one_line(name):
    with pytest.raises(BackendUnavailable) as err:
        backends.check_available(name, "cpu")
    message = str(err.value)
    assert message.startswith(f"training.backend = {name!r} needs a CUDA GPU")
    assert "\n" not in message and "peft-lora" in message


@pytest.mark.skipif(not NO_CUDA, reason="checks the error on a machine without CUDA")
@pytest.mark.parametrize("name", ["qlora-bnb", "unsloth"])
def test_gpu_backend_without_cuda_fails_in_one_line(name):
    with pytest.raises(BackendUnavailable, match=r"^training\.backend = .* torch sees none here"):
        backends.check_available(name, "cuda")


def test_missing_gpu_package_names_package_and_install(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BackendUnavailable,
                       match=r"^training\.backend = 'unsloth' needs the unsloth package: pip"):
        backends.check_available("unsloth", "cuda")


def test_peft_lora_is_available_on_cpu():
    assert backends.check_available("peft-lora", "cpu").name == "peft-lora"


@pytest.mark.parametrize("name", ["qlora-bnb", "unsloth"])
def test_train_lora_refuses_before_touching_the_model(name, tmp_path):
    # model=None: the check must come before any model work, so a bad profile costs nothing.
    with pytest.raises(BackendUnavailable, match=r"^training\.backend"):
        train_lora(None, None, [], seed_training(name), 0, tmp_path, "cpu")


def test_load_for_training_refuses_gpu_backend_on_cpu(tiny_profile):
    with pytest.raises(BackendUnavailable, match=r"^training\.backend = 'qlora-bnb'"):
        backends.load_for_training(tiny_profile.model, seed_training("qlora-bnb"), ROOT, "cpu")


def test_lora_config_follows_the_profile():
    cfg = seed_training("qlora-bnb")
    lora = backends.lora_config(cfg)
    assert (lora.r, lora.lora_alpha, lora.lora_dropout) == (64, 16, 0.0)
    assert set(lora.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj",
                                        "gate_proj", "up_proj", "down_proj"}
    assert lora.bias == "none" and lora.task_type == "CAUSAL_LM"


def test_qlora_stores_nf4_double_quantised_and_computes_in_bf16():
    q = backends.bnb_4bit_config()  # builds without bitsandbytes or a GPU
    assert q.load_in_4bit and not q.load_in_8bit
    assert q.bnb_4bit_quant_type == "nf4"
    assert q.bnb_4bit_use_double_quant
    assert q.bnb_4bit_compute_dtype == torch.bfloat16


def test_unsloth_arguments_follow_the_profile():
    kw = backends.unsloth_lora_kwargs(seed_training("unsloth"), seed=7)
    assert (kw["r"], kw["lora_alpha"], kw["lora_dropout"]) == (64, 16, 0.0)
    assert kw["use_gradient_checkpointing"] == "unsloth"  # the profile asks for checkpointing
    assert kw["random_state"] == 7 and kw["max_seq_length"] == 2048
    assert len(kw["target_modules"]) == 7
    no_ckpt = seed_training("unsloth").model_copy(update={"gradient_checkpointing": False})
    assert backends.unsloth_lora_kwargs(no_ckpt, 0)["use_gradient_checkpointing"] is False


def test_trainer_arguments_per_backend():
    assert backends.trainer_arguments(seed_training("peft-lora"), "cpu") == {}  # CPU path as before
    assert backends.trainer_arguments(seed_training("qlora-bnb"), "cpu")["optim"] == "paged_adamw_8bit"
    assert backends.trainer_arguments(seed_training("unsloth"), "cpu")["optim"] == "adamw_8bit"


def test_peft_lora_wraps_a_cpu_model_with_the_profile_rank():
    from cogumi.evaluation.testing import tiny_llama, tiny_tokenizer
    cfg = load_profile("tiny").training.model_copy(update={"gradient_checkpointing": True})
    model = backends.wrap_lora(tiny_llama(tiny_tokenizer()), cfg, seed=0)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert model.peft_config["default"].r == cfg.lora_rank
    assert model.is_gradient_checkpointing


def test_qlora_refuses_a_model_not_loaded_in_4bit():
    from cogumi.evaluation.testing import tiny_llama, tiny_tokenizer
    with pytest.raises(BackendUnavailable, match="load_for_training"):
        backends.wrap_lora(tiny_llama(tiny_tokenizer()), seed_training("qlora-bnb"), seed=0)


def test_train_lora_peft_lora_still_trains_on_cpu(tmp_path):
    from cogumi.evaluation.testing import tiny_llama, tiny_tokenizer
    cfg = load_profile("tiny").training.model_copy(update={"epochs": 1, "batch_size": 2})
    examples = [Example([1, 5 + i, 6 + i, 7], [-100, 6 + i, 7, 2]) for i in range(4)]
    tok = tiny_tokenizer()
    model, history, resumed = train_lora(tiny_llama(tok), tok, examples, cfg, 0, tmp_path, "cpu")
    assert not resumed and any("loss" in h for h in history)
    assert model.peft_config["default"].r == cfg.lora_rank


# --- on a CUDA machine only -----------------------------------------------------------------

def _save_tiny_llama(path):
    from cogumi.evaluation.testing import tiny_llama, tiny_tokenizer
    tok = tiny_tokenizer()
    tiny_llama(tok, hidden=128, layers=2).save_pretrained(path)
    tok.save_pretrained(path)
    from cogumi.profile import ModelConfig
    return ModelConfig(source="local", path=str(path), dtype="bfloat16", parameters=1e6)


def _one_step(model):
    ids = torch.randint(3, 50, (2, 16), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    return loss, grads


@pytest.mark.skipif(NO_CUDA or importlib.util.find_spec("bitsandbytes") is None,
                    reason="qlora-bnb needs a CUDA GPU and bitsandbytes")
def test_qlora_bnb_loads_nf4_and_trains(tmp_path):
    import bitsandbytes as bnb
    cfg = seed_training("qlora-bnb").model_copy(update={"lora_rank": 8})
    loaded = backends.load_for_training(_save_tiny_llama(tmp_path), cfg, tmp_path, "cuda")
    linear4 = [m for m in loaded.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert linear4 and all(m.weight.quant_type == "nf4" for m in linear4)
    assert all(m.weight.quant_state.nested for m in linear4)  # double quantisation
    model = backends.wrap_lora(loaded.model, cfg, seed=0)
    loss, grads = _one_step(model)
    assert torch.isfinite(loss) and grads and all(g is not None for g in grads)


@pytest.mark.skipif(NO_CUDA or importlib.util.find_spec("unsloth") is None,
                    reason="unsloth needs a CUDA GPU and the unsloth package")
def test_unsloth_loads_4bit_and_trains(tmp_path):
    cfg = seed_training("unsloth").model_copy(update={"lora_rank": 8, "max_seq_len": 64})
    loaded = backends.load_for_training(_save_tiny_llama(tmp_path), cfg, tmp_path, "cuda")
    assert getattr(loaded.model, "is_loaded_in_4bit", False)
    model = backends.wrap_lora(loaded.model, cfg, seed=0)
    assert model.peft_config["default"].r == 8
    loss, grads = _one_step(model)
    assert torch.isfinite(loss) and grads and all(g is not None for g in grads)
