"""A modifier as phase 3 ships it (issue 15): a LoRA trained by cogumi.training on the tiny
fixture (one optimizer step), exported by llama.cpp's convert_lora_to_gguf.py, and applied
by llama.cpp (llama-cpp-python's ``Llama(lora_path=...)``, what LlamaCppBackend passes) to
the fixture's GGUF: it must change llama.cpp's logits, and match the same adapter in
transformers (peft) position by position. About 20 s on 2 cores, offline once the
converter is cached."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cogumi.profile import load_profile

from .conftest import ROOT

TINY = ROOT / "fixtures" / "tiny-llama"
PROMPTS = ["What is 17 + 25? Think step by step.",
           "Write a function add_two(x) that returns x + 2.",
           "Which number is the largest? 131, 125, 67 or 104."]
# float32 on both sides (weights and KV cache), the same weights: the fixture's F32 GGUF
# without an adapter agrees with transformers to float rounding (2C's test: KL below 1e-6,
# checked here too on the base); the adapter adds two
# small matmuls per projection, in llama.cpp's own order. 1e-3 absolute on logits of
# magnitude ~10 is float32 accumulation-order rounding, far below the adapter's own effect,
# which the test requires to be at least 100 times larger.
LOGIT_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def one_step_adapter(tmp_path_factory):
    """(peft model, adapter folder, adapter.gguf): rank 4 on every projection, one step."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cogumi.compression.gguf_export import convert_lora_to_gguf
    from cogumi.training.sft import encode_records, train_lora

    out = tmp_path_factory.mktemp("modifier-lora")
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(TINY)
    model = AutoModelForCausalLM.from_pretrained(TINY, dtype="float32")
    records = [{"id": str(i), "instruction": p, "response": f"The answer is {i}."}
               for i, p in enumerate(PROMPTS * 3)][:8]
    data = encode_records(records, tok, False, 128)
    cfg = load_profile("tiny").training.model_copy(update={
        "lora_rank": 4, "lora_alpha": 8.0, "epochs": 1, "learning_rate": 1e-2,
        "batch_size": 8})
    peft_model, log, _ = train_lora(model, tok, data.examples, cfg, 0, out / "ckpt", "cpu")
    assert max(h.get("step", 0) for h in log) == 1
    peft_model.eval()
    peft_model.save_pretrained(out / "adapter")
    gguf = convert_lora_to_gguf(out / "adapter", TINY, out / "adapter.gguf", "f32",
                                out / "lora.log")
    return peft_model, tok, out / "adapter", gguf


def test_the_adapter_exports_with_its_rank_alpha_and_every_projection(one_step_adapter):
    from gguf import GGUFReader
    peft_model, _, adapter, gguf = one_step_adapter
    config = json.loads((adapter / "adapter_config.json").read_text())
    reader = GGUFReader(str(gguf))

    def field(name):
        f = reader.fields[name]
        return f.parts[f.data[0]]

    assert bytes(field("adapter.type")).decode() == "lora"
    assert float(field("adapter.lora.alpha")[0]) == config["lora_alpha"] == 8
    layers = json.loads((TINY / "config.json").read_text())["num_hidden_layers"]
    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == layers * 7 * 2  # 7 projections, A and B each
    want = peft_model.base_model.model.model.layers[2].mlp.down_proj.lora_B["default"].weight
    got = np.asarray(tensors["blk.2.ffn_down.weight.lora_b"].data).reshape(want.shape)
    assert np.abs(want.detach().numpy()).max() > 0  # trained: B left zero would be a no-op
    assert np.array_equal(got, want.detach().numpy())


def _llama_logits(model_path, ids, lora_path=None):
    import llama_cpp
    # An F32 KV cache (llama.cpp's default is F16, which alone moves logits by ~4e-3 here).
    extra = {"type_k": llama_cpp.GGML_TYPE_F32, "type_v": llama_cpp.GGML_TYPE_F32}
    if lora_path:
        extra["lora_path"] = str(lora_path)
    llama = llama_cpp.Llama(model_path=str(model_path), n_ctx=256, n_threads=1,
                            logits_all=True, verbose=False, seed=0, **extra)
    llama.eval(ids)
    logits = np.asarray(llama.scores[: len(ids)], dtype=np.float64)
    llama.close()
    return logits


def test_llama_cpp_applies_the_gguf_lora_like_transformers(one_step_adapter, tiny_f32_gguf):
    import torch
    peft_model, tok, _, gguf = one_step_adapter
    base_gguf = tiny_f32_gguf[0] / "f32.gguf"
    for prompt in PROMPTS:
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                       add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            hf_lora = peft_model(torch.tensor([ids])).logits[0].double().numpy()
            with peft_model.disable_adapter():
                hf_base = peft_model(torch.tensor([ids])).logits[0].double().numpy()
        cpp_lora = _llama_logits(base_gguf, ids, gguf)
        cpp_base = _llama_logits(base_gguf, ids)
        effect = np.abs(cpp_lora - cpp_base).max()
        assert np.abs(cpp_base - hf_base).max() < LOGIT_TOLERANCE
        assert np.abs(cpp_lora - hf_lora).max() < LOGIT_TOLERANCE, prompt
        assert effect > 100 * LOGIT_TOLERANCE, effect
        assert np.abs(hf_lora - hf_base).max() == pytest.approx(effect, rel=0.01)
