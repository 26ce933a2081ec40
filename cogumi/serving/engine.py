"""One llama.cpp base with its LoRA modifiers, loaded once, switched per request.

llama-cpp-python's high-level `Llama` applies one LoRA given at construction
(`lora_path`); a Llama per modifier would load the base once per route. llama.cpp itself
keeps adapters apart from the model: `llama_adapter_lora_init` loads an adapter against
the loaded model once, and `llama_set_adapters_lora` chooses which adapters a context
applies, per decode, without touching the base weights (what llama.cpp's own server does
for its per-request `lora` field). So the base is loaded once, every modifier is loaded
once against it, and a request sets its route's adapter on the one context.

Why concurrent requests cannot mix adapters: the context (its KV cache and its adapter
set) is used by one request at a time, under `self._lock`, held from setting the adapter
to the last token; and the KV cache is cleared before every request, so no request reuses
positions computed under another adapter (llama-cpp-python's prefix reuse would otherwise
keep a previous prompt's cache). Requests therefore queue; the answer to a request does
not depend on what ran before it.

Why a token loop here rather than `create_completion`: the escalation model reads the log
probability of every generated token, and create_completion gives those only with
`logits_all=True` (n_ctx x vocabulary floats kept) and sorts the whole vocabulary in
Python per token; a streamed request must also stop between tokens when its client goes
away. The loop takes llama-cpp-python's token generator (`Llama.generate`, its sampler
chain), reads each token's logits from the context (`llama_get_logits_ith`), and
detokenizes with llama-cpp-python.
"""

from __future__ import annotations

import ctypes
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BASE = "base"


class EngineError(RuntimeError):
    """The base or a modifier could not be loaded; one line naming the file."""


class PromptTooLong(ValueError):
    def __init__(self, prompt_tokens: int, n_ctx: int):
        super().__init__(f"the prompt is {prompt_tokens} tokens; this model's context is "
                         f"{n_ctx} tokens")
        self.prompt_tokens, self.n_ctx = prompt_tokens, n_ctx


@dataclass
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()


@dataclass
class Generation:
    route: str
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    token_logprobs: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    finish_reason: str = "stop"
    """"stop" (end of sequence or a stop string), "length" (max_tokens or the context),
    "cancelled" (the caller stopped it: a client that went away)."""

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)



def _log_softmax_at(logits: np.ndarray, token: int) -> float:
    m = float(logits.max())
    return float(logits[token] - m - math.log(float(np.exp(logits - m).sum())))


class Engine:
    """``Engine(base_gguf, {"code": path_to_lora_gguf, ...}, n_ctx=2048)``."""

    def __init__(self, base_gguf: str | Path, modifiers: dict[str, str | Path], *,
                 n_ctx: int = 2048, n_threads: int | None = None, n_batch: int = 512,
                 chat_template: str | None = None, add_bos: bool | None = None) -> None:
        from cogumi.evaluation.backends.llamacpp_backend import LlamaCppBackend
        from cogumi.llama_cpp_build import LlamaCppBuildError, load_llama_cpp
        try:
            llama_cpp = load_llama_cpp("cogumi serve")
        except LlamaCppBuildError as e:
            raise EngineError(str(e)) from e
        Llama = llama_cpp.Llama
        self._lc = llama_cpp
        base_gguf = Path(base_gguf)
        if not base_gguf.is_file():
            raise EngineError(f"{base_gguf}: base GGUF missing")
        try:
            self.llama = Llama(model_path=str(base_gguf), n_ctx=n_ctx, n_threads=n_threads,
                               n_threads_batch=n_threads, n_batch=n_batch, logits_all=False,
                               verbose=False, seed=0)
        except (ValueError, RuntimeError) as e:
            raise EngineError(f"{base_gguf}: llama.cpp could not load it ({e})") from None
        # The evaluation backend's prompt rendering and BOS policy: the same prompt the
        # phases measured (3X's eval_modifier, 4A's route outcomes) is the one served.
        self.prompts = LlamaCppBackend(llama=self.llama, chat_template=chat_template,
                                       add_bos=add_bos, model_digest="served")
        self._adapters: dict[str, object] = {}
        for name, path in modifiers.items():
            path = Path(path)
            if not path.is_file():
                raise EngineError(f"{path}: modifier {name!r} missing")
            adapter = llama_cpp.llama_adapter_lora_init(self.llama.model,
                                                        str(path).encode("utf-8"))
            if not adapter:
                raise EngineError(f"{path}: llama.cpp could not load modifier {name!r} as a "
                                  f"LoRA of {base_gguf.name}")
            self._adapters[name] = adapter
        self.routes: tuple[str, ...] = (BASE, *self._adapters)
        self._lock = threading.Lock()
        self._active: str | None = None
        self.n_vocab = int(self.llama.n_vocab())
        self._vocab = llama_cpp.llama_model_get_vocab(self.llama.model)

    # ------------------------------------------------------------------ prompts
    @property
    def n_ctx(self) -> int:
        return int(self.llama.n_ctx())

    def chat_prompt(self, messages: Sequence[dict[str, str]]) -> list[int]:
        return self.prompts.encode(self.prompts.render(messages))

    def text_prompt(self, text: str) -> list[int]:
        return self.prompts.encode(text)

    def check_room(self, prompt_ids: Sequence[int]) -> None:
        if len(prompt_ids) >= self.n_ctx:
            raise PromptTooLong(len(prompt_ids), self.n_ctx)

    @property
    def busy(self) -> bool:
        """Whether a request holds the context now."""
        return self._lock.locked()

    # ------------------------------------------------------------------ adapters
    def _activate(self, route: str) -> None:
        """Set the route's adapter on the context (under the lock)."""
        if route not in self.routes:
            raise KeyError(route)
        lc = self._lc
        if route == BASE:
            lc.llama_set_adapters_lora(self.llama.ctx, None, 0, None)
        else:
            adapters = (lc.llama_adapter_lora_p_ctypes * 1)(self._adapters[route])
            scales = (ctypes.c_float * 1)(1.0)
            if lc.llama_set_adapters_lora(self.llama.ctx, adapters, 1, scales):
                raise EngineError(f"llama.cpp refused to set modifier {route!r}")
        self._active = route

    # ------------------------------------------------------------------ generation
    def generate(self, route: str, prompt_ids: Sequence[int], params: SamplingParams, *,
                 on_text: Callable[[str], None] | None = None,
                 cancelled: threading.Event | None = None) -> Generation:
        """Generate under `route`'s adapter. `on_text` receives each new piece of text as it
        is settled (complete UTF-8, not possibly the start of a stop string); `cancelled`
        ends the generation between tokens."""
        prompt_ids = list(prompt_ids)
        self.check_room(prompt_ids)
        with self._lock:
            self._activate(route)
            return self._generate_locked(route, prompt_ids, params, on_text, cancelled)

    def _generate_locked(self, route, prompt_ids, params, on_text, cancelled) -> Generation:
        llama, lc = self.llama, self._lc
        out = Generation(route=route, prompt_tokens=len(prompt_ids))
        llama.reset()  # n_tokens = 0: no prefix of an earlier request is reused
        llama.set_seed(int(params.seed))
        greedy = params.temperature <= 0
        budget = min(params.max_tokens, self.n_ctx - len(prompt_ids))
        stops = [s for s in params.stop if s]
        emitted = 0  # characters of the (stop-trimmed) text already handed to on_text
        raw = b""
        gen = llama.generate(prompt_ids, temp=0.0 if greedy else params.temperature,
                             top_k=1 if greedy else 0, top_p=1.0 if greedy else params.top_p,
                             min_p=0.0, repeat_penalty=1.0, reset=True)
        finish = "length"
        try:
            for token in gen:
                if cancelled is not None and cancelled.is_set():
                    finish = "cancelled"
                    break
                if lc.llama_vocab_is_eog(self._vocab, token):
                    finish = "stop"
                    break
                logits = np.ctypeslib.as_array(lc.llama_get_logits_ith(llama.ctx, -1),
                                               shape=(self.n_vocab,))
                out.token_ids.append(int(token))
                out.token_logprobs.append(_log_softmax_at(logits, int(token)))
                raw = llama.detokenize(out.token_ids, prev_tokens=prompt_ids)
                text = raw.decode("utf-8", errors="ignore")
                cut = _first_stop(text, stops)
                if cut is not None:
                    text, finish = text[:cut], "stop"
                    out.text = text
                    if on_text and len(text) > emitted:
                        on_text(text[emitted:])
                    return self._done(out, finish)
                settled = _settled(text, stops)
                if on_text and settled > emitted:
                    on_text(text[emitted:settled])
                    emitted = settled
                out.text = text
                if len(out.token_ids) >= budget:
                    break
        finally:
            gen.close()
        out.text = raw.decode("utf-8", errors="ignore") if finish != "cancelled" else out.text
        if on_text and len(out.text) > emitted and finish != "cancelled":
            on_text(out.text[emitted:])
        return self._done(out, finish)

    @staticmethod
    def _done(out: Generation, finish: str) -> Generation:
        out.finish_reason = finish
        return out

    def close(self) -> None:
        for adapter in self._adapters.values():
            self._lc.llama_adapter_lora_free(adapter)
        self._adapters.clear()
        self.llama.close()


def _first_stop(text: str, stops: list[str]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def _settled(text: str, stops: list[str]) -> int:
    """How much of `text` can be handed out: not a trailing piece that could still grow
    into a stop string. (An incomplete UTF-8 sequence at the end is not in `text`: decoding
    with errors="ignore" drops it, and its character comes with the next token.)"""
    keep = len(text)
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                keep = min(keep, len(text) - k)
                break
    return keep
