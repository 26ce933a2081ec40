"""A real bundle from the tiny fixture model, for the serving tests (built once a session).

The base is the fixture Llama exported to F32 GGUF by 2C's converter (conftest's
tiny_f32_gguf); each modifier is a real PEFT LoRA on the same model, its weights drawn at
random (init_lora_weights=False: a freshly initialised LoRA has B = 0 and would change
nothing), converted by llama.cpp's convert_lora_to_gguf.py, so the modifiers answer
differently from the base and from each other.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_MODEL = ROOT / "fixtures" / "tiny-llama"
MODIFIERS = {"code": 1, "reasoning": 2}
"""Modifier name -> the seed its random LoRA is drawn with."""
SERVING = {"n_ctx": 512, "n_threads": 1, "stop": [], "max_tokens": 24}
"""The bundles' serving settings (manifest system.serving)."""


def make_lora_gguf(name: str, seed: int, work: Path) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from cogumi.compression.gguf_export import convert_lora_to_gguf

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(FIXTURE_MODEL, dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                            target_modules=["q_proj", "v_proj", "down_proj"]))
    adapter = work / f"{name}-adapter"
    peft.save_pretrained(adapter)
    out = work / f"{name}.gguf"
    convert_lora_to_gguf(adapter, FIXTURE_MODEL, out, "f32", work / f"{name}-convert.log")
    return out


def pack(src: Path, out: Path) -> Path:
    import zstandard
    with open(src, "rb") as fin, open(out, "wb") as fout:
        zstandard.ZstdCompressor(level=3).copy_stream(fin, fout)
    return out


def build_parts(work: Path, base_gguf: Path) -> dict:
    """Everything a bundle is made of except the router and escalation model."""
    work.mkdir(parents=True, exist_ok=True)
    modifiers = {}
    for name, seed in MODIFIERS.items():
        gguf = make_lora_gguf(name, seed, work)
        modifiers[name] = (gguf, {"name": name, "domain": name, "lora_rank": 4,
                                  "lora_alpha": 8.0})
    return {"base_gguf": base_gguf, "packed": pack(base_gguf, work / "model.gguf.zst"),
            "modifiers": modifiers}


ROUTER_QUERIES = {
    "code": ["Write a Python function that reverses a list.",
             "def add(a, b): implement this function", "Fix the bug in this code: for i in",
             "Write a function returning the factorial of n."],
    "reasoning": ["What is 12 times 7?", "If Tom has 3 apples and eats one, how many remain?",
                  "Solve for x: 2x + 4 = 10.", "What is 15 minus 9?"],
    "base": ["Tell me about the weather.", "Say hello.", "Name a colour.",
             "Describe a cat."],
}


def fit_router(folder):
    from cogumi.routing import Router
    from cogumi.routing.router import make_features
    queries = [q for qs in ROUTER_QUERIES.values() for q in qs]
    labels = [r for r, qs in ROUTER_QUERIES.items() for _ in qs]
    Router.fit(queries, labels, ["base", "code", "reasoning"],
               make_features("hashed-ngrams")).save(folder)
    return folder


def fit_escalation(path, parts):
    """Fitted on the serving signals of real greedy generations of the base; "wrong" is
    the less confident half (a test needs both labels, not a meaningful verdict)."""
    from cogumi.routing import Escalation, serving_signals
    from cogumi.serving.engine import Engine, SamplingParams
    engine = Engine(parts["base_gguf"], {}, n_ctx=256, n_threads=1)
    rows = []
    for qs in ROUTER_QUERIES.values():
        for q in qs:
            gen = engine.generate("base", engine.chat_prompt([{"role": "user", "content": q}]),
                                  SamplingParams(max_tokens=16))
            rows.append(serving_signals(gen.token_logprobs, 0.5))
    engine.close()
    median = sorted(r["mean_logprob"] for r in rows)[len(rows) // 2]
    Escalation.fit(rows, [r["mean_logprob"] < median for r in rows]).save(path)
    return path


from cogumi.serving.app import RunningServer  # noqa: E402,F401 - re-exported for the tests
