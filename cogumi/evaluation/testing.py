"""Small, offline stand-ins for tests and benchmarks: a randomly initialised tiny Llama,
a byte-level tokenizer with a chat template, and a scripted backend.

Nothing here downloads anything; everything is deterministic for a given seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .backends.base import Backend
from .settings import (
    GenerationOutput,
    GenerationRequest,
    LoglikelihoodOutput,
    LoglikelihoodRequest,
)

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start|>{{ m['role'] }}\n{{ m['content'] }}<|end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|start|>assistant\n{% endif %}"
)
SPECIALS = ["<s>", "</s>", "<pad>", "<|start|>", "<|end|>"]


def tiny_tokenizer(add_bos_itself: bool = True) -> Any:
    """Byte-level tokenizer (256 byte tokens + 5 specials) with a chat template.

    ``add_bos_itself=False`` imitates tokenizers (Gemma from GGUF) that never add BOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    if add_bos_itself:
        tk.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 0)]
        )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<s>",
        eos_token="<|end|>",
        pad_token="<pad>",
        additional_special_tokens=["</s>", "<|start|>"],
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_llama(tokenizer: Any, seed: int = 0, hidden: int = 64, layers: int = 2) -> Any:
    """A randomly initialised LlamaForCausalLM sized for CPU tests (~0.1M parameters)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg).eval()
    return model


class ScriptedBackend(Backend):
    """A backend whose answers come from a function of (request, rendered prompt).

    Used to test scoring, reports and failure handling without a model; ``respond`` may
    return ``str`` or ``bytes`` (to imitate undecodable output)."""

    name = "scripted"

    def __init__(
        self,
        respond: Callable[[GenerationRequest, str], str | bytes],
        loglik: Callable[[LoglikelihoodRequest, str], float] | None = None,
        digest: str = "scripted",
    ) -> None:
        self.respond = respond
        self._loglik = loglik
        self._digest = digest
        self.calls = 0

    def render(self, messages: Sequence[dict[str, str]], answer_prefix: str | None = None) -> str:
        return ("\n".join(f"[{m['role']}] {m['content']}" for m in messages) + "\n[assistant] "
                + (answer_prefix or ""))

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationOutput]:
        self.calls += 1
        outs = []
        for r in requests:
            text = r.prompt if r.prompt is not None else self.render(r.messages)
            outs.append(GenerationOutput(text=self.respond(r, text), prompt_text=text))
        return outs

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[LoglikelihoodOutput]:
        if self._loglik is None:
            return super().loglikelihood(requests)
        outs = []
        for r in requests:
            ctx = r.context if r.context is not None else self.render(r.context_messages)
            outs.append(LoglikelihoodOutput(self._loglik(r, ctx), False, 1))
        return outs

    def identity(self) -> dict[str, Any]:
        return {"backend": self.name, "model_digest": self._digest}
