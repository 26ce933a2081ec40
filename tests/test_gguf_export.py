"""GGUF export with llama.cpp's converter and quantizer (`python -m pytest tests/test_gguf_export.py`).

The tiny fixture Llama goes HF -> F32 GGUF -> Q5_K_M and must tokenize and generate like the
HF model in llama.cpp; a random Llama with hidden size 320 (not a multiple of 256) must have
its K-quant fallbacks found in the file itself and agree with llama.cpp's own log; a
tokenizer whose pre-tokenizer llama.cpp does not implement is refused by name.
About 30 s on 2 CPU cores, offline.
"""

from __future__ import annotations

import json
import shutil

import pytest

from cogumi.compression import gguf_export as G
from cogumi.compression.bpe_pretokenizers import UnknownPreTokenizer, pre_tokenizer_for

from .conftest import ROOT

pytest.importorskip("llama_cpp")
TINY = ROOT / "fixtures" / "tiny-llama"
TEXTS = ["Which number is the largest? 131, 125, 67 or 104.",
         "def add(a, b):\n    return a + b\n",
         "  leading spaces,\ttabs\n\nand 3.14159 digits; 12345678 😀 naïve café",
         "<|start_header_id|>user<|end_header_id|>\n\nWhat is 7 + 8?<|eot_id|>"]


@pytest.fixture(scope="module")
def tiny_q5(tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf")
    decision = G.convert_to_gguf(TINY, out / "f32.gguf", "F32", out / "convert.log")
    G.quantize(out / "f32.gguf", out / "q5.gguf", "Q5_K_M", 2, out / "quantize.log")
    return out, decision


def test_tiny_pretokenizer_is_mapped_and_recorded(tiny_q5):
    _, decision = tiny_q5
    # The fixture's BPE regex is Qwen2's (single digits); the converter's hash table does
    # not know the vocabulary, so the mapping decided it, and says so.
    assert decision["pre_tokenizer"] == "qwen2"
    assert decision["source"] == "cogumi.bpe_pretokenizers"
    from gguf import GGUFReader
    meta = GGUFReader(str(tiny_q5[0] / "q5.gguf")).fields["tokenizer.ggml.pre"]
    assert bytes(meta.parts[meta.data[0]]).decode() == "qwen2"


def test_tiny_q5_k_m_is_all_k_quants(tiny_q5):
    report = G.tensor_types(tiny_q5[0] / "q5.gguf", "Q5_K_M")
    assert report["fallback_tensors"] == 0
    assert report["intended_share"] == 1.0
    assert set(report["count_by_type"]) == {"F32", "Q5_K", "Q6_K"}
    # 1-D norms stay F32 and are not counted as quantizable.
    layers = json.loads((TINY / "config.json").read_text())["num_hidden_layers"]
    assert report["count_by_type"]["F32"] == 2 * layers + 1
    unquantized = G.tensor_types(tiny_q5[0] / "f32.gguf", None)
    assert unquantized["count_by_type"] == {"F32": report["tensors"]}


def test_tiny_gguf_tokenizes_like_hf(tiny_q5):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(TINY)
    result = G.tokenizer_agreement(tiny_q5[0] / "q5.gguf", tok, TEXTS)
    assert result["agreement"] == 1.0, result["disagreements"]


def test_tiny_gguf_generates_like_hf(tiny_q5):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cogumi.evaluation import GenerationRequest, LlamaCppBackend, TransformersBackend
    tok = AutoTokenizer.from_pretrained(TINY)
    model = AutoModelForCausalLM.from_pretrained(TINY).eval()
    reqs = [GenerationRequest(messages=({"role": "user", "content": t},), max_new_tokens=12)
            for t in TEXTS[:3]]
    hf = [o.text for o in TransformersBackend(model, tok, batch_size=4).generate(reqs)]
    for path in (tiny_q5[0] / "f32.gguf", tiny_q5[0] / "q5.gguf"):
        backend = LlamaCppBackend(path, n_ctx=256, n_batch=1)
        result = G.greedy_agreement([o.text for o in backend.generate(reqs)], hf, tok)
        # The F32 file is the same weights: llama.cpp must continue exactly as transformers.
        if path.name == "f32.gguf":
            assert result["agreement"] == 1.0, result["disagreements"]
        else:
            assert result["prefix_share"] >= 0.5, result["disagreements"]


def test_greedy_agreement_counts_divergence():
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(TINY)
    r = G.greedy_agreement(["12 + 3 = 15", "same"], ["12 + 3 = 16", "same"], tok)
    assert r["identical"] == 1 and r["agreement"] == 0.5
    assert 0.5 < r["prefix_share"] < 1.0


def test_width_320_falls_back_and_is_reported(tmp_path):
    """A Llama of hidden size 320: every tensor whose rows are 320 wide cannot be Q5_K."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=2048, hidden_size=320, intermediate_size=512,
                      num_hidden_layers=1, num_attention_heads=5, num_key_value_heads=1,
                      head_dim=64, max_position_embeddings=256, tie_word_embeddings=True,
                      bos_token_id=0, eos_token_id=4, pad_token_id=5)
    model_dir = tmp_path / "hf"
    LlamaForCausalLM(cfg).save_pretrained(model_dir)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TINY / name, model_dir / name)
    G.convert_to_gguf(model_dir, tmp_path / "f32.gguf", "F32", tmp_path / "convert.log")
    G.quantize(tmp_path / "f32.gguf", tmp_path / "q5.gguf", "Q5_K_M", 2, tmp_path / "q.log")
    report = G.tensor_types(tmp_path / "q5.gguf", "Q5_K_M")
    narrow = {t["name"] for t in report["per_tensor"]
              if len(t["shape"]) == 2 and t["shape"][0] == 320}
    assert narrow, "the test model must have 320-wide tensors"
    assert {f["name"] for f in report["fallbacks"]} == narrow
    assert all(not f["row_width_multiple_of_256"] for f in report["fallbacks"])
    assert {f["type"] for f in report["fallbacks"]} <= {"Q5_1", "Q8_0"}  # llama.cpp's fallbacks
    assert report["intended_share"] < 1.0
    # llama.cpp's log warns about some of them only: the tied embedding is put in Q8_0
    # without a warning. Reading the file back is what finds all of them.
    warned = set(G.fallback_warnings((tmp_path / "q.log").read_text()))
    assert warned and warned < narrow
    assert narrow - warned == {"token_embd.weight"}
    assert "not a multiple of 256" in G.describe_types(report)


def test_unknown_pretokenizer_is_refused_by_name(tmp_path):
    spec = json.loads((TINY / "tokenizer.json").read_text())
    spec["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\p{L}+|\s+"
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(UnknownPreTokenizer, match="tokenizer.json: pre-tokenizer regex"):
        pre_tokenizer_for(path)
    spec["model"]["type"] = "Unigram"
    path.write_text(json.dumps(spec))
    with pytest.raises(UnknownPreTokenizer, match="model.type"):
        pre_tokenizer_for(path)


def test_divergence_point_measures_the_near_tie():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(TINY)
    model = AutoModelForCausalLM.from_pretrained(TINY).eval()
    prompt = tok.encode("Which number is the largest? 131, 125, 67 or 104. The answer is",
                        add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=4, do_sample=False,
                             pad_token_id=tok.eos_token_id)
    greedy = tok.decode(out[0, len(prompt):])
    logits = model(torch.tensor([prompt])).logits[0, -1]
    runner_up = int(logits.topk(2).indices[1])
    d = G.divergence_point(model, tok, prompt, greedy, tok.decode([runner_up]), tok.eos_token_id)
    assert d["position"] == 0 and d["gguf_token_rank"] == 1
    assert d["p_hf_token"] >= d["p_gguf_token"]
    assert d["gap"] == pytest.approx(d["p_hf_token"] - d["p_gguf_token"], abs=1e-6)
    assert G.divergence_point(model, tok, prompt, greedy, greedy, 1) is None
    ended = G.divergence_point(model, tok, prompt, greedy, greedy + " more", tok.eos_token_id)
    assert ended["position"] == len(tok.encode(greedy, add_special_tokens=False))
    assert G.beyond_near_ties(1, 3, [d, {"gap": 0.01}]) == 2 / 3
