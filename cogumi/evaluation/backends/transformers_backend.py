"""Generation and log-likelihoods with a loaded transformers causal LM (CPU or CUDA).

Batched with left padding. The decode loop is our own (a few lines around the model's
forward with a KV cache) rather than ``model.generate`` because every request carries its
own temperature, top-p, seed, token budget and stop strings: each row samples from its own
``torch.Generator``, so a request's output depends on its seed only, never on which other
requests share its batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from ..settings import (
    GenerationOutput,
    GenerationRequest,
    LoglikelihoodOutput,
    LoglikelihoodRequest,
)
from .base import Backend, BackendError, plain_chat, with_single_bos

FALLBACK_TEMPLATE_NOTE = "no chat template: 'role: content' lines"


def model_digest(model: Any) -> str:
    """sha256 over every parameter and buffer (name, dtype, shape, bytes).

    Costs one pass over the weights; pass ``model_digest=`` to the backend to reuse a
    digest an earlier phase already recorded in its manifest."""
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def tokenizer_digest(tokenizer: Any) -> str:
    """sha256 over the tokenizer's full definition (vocabulary, merges, normalizer, added
    tokens) and its chat template."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update(backend.to_str().encode() if backend is not None else repr(tokenizer).encode())
    h.update(str(getattr(tokenizer, "chat_template", None)).encode())
    return h.hexdigest()


class TransformersBackend(Backend):
    """``TransformersBackend(model, tokenizer, batch_size=16, add_bos=None)``.

    ``add_bos``: ``True`` guarantees exactly one BOS at the start of every prompt (for
    tokenizers such as Gemma's from GGUF that never add it); ``False`` never adds one;
    ``None`` adds it only when the tokenizer itself would. A BOS is never doubled: when the
    chat template already starts with BOS text, the duplicate is removed.
    """

    name = "transformers"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        batch_size: int = 16,
        add_bos: bool | None = None,
        model_digest: str | None = None,
        max_length: int | None = None,
        progress: Any = None,
    ) -> None:
        """``progress``: a rich ``Progress`` to show a bar per ``generate`` call (long
        CPU runs otherwise look hung)."""
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.add_bos = add_bos
        self._digest = model_digest
        self.bos_id = tokenizer.bos_token_id
        if add_bos and self.bos_id is None:
            raise BackendError("add_bos=True but the tokenizer has no bos_token")
        if add_bos is None:
            probe = tokenizer("a").input_ids
            self._auto_bos = bool(self.bos_id is not None and probe and probe[0] == self.bos_id)
        else:
            self._auto_bos = bool(add_bos)
        self.pad_id = self._pad_id()
        self.eos_ids = self._eos_ids()
        cfg = getattr(model, "config", None)
        self.max_length = max_length or getattr(cfg, "max_position_embeddings", None) or 2048
        self.has_chat_template = bool(getattr(tokenizer, "chat_template", None))
        self.progress = progress

    # ----------------------------------------------------------------- helpers
    def _pad_id(self) -> int:
        tok = self.tokenizer
        for cand in (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id, 0):
            if cand is not None:
                return int(cand)
        return 0

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()

        def add(x: Any) -> None:
            if x is None:
                return
            if isinstance(x, (list, tuple, set)):
                for y in x:
                    add(y)
            else:
                ids.add(int(x))

        add(self.tokenizer.eos_token_id)
        gen_cfg = getattr(self.model, "generation_config", None)
        if gen_cfg is not None:
            add(getattr(gen_cfg, "eos_token_id", None))
        return ids

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    def render(self, messages: Sequence[dict[str, str]], answer_prefix: str | None = None) -> str:
        msgs = [dict(m) for m in messages]
        if self.has_chat_template:
            if answer_prefix is not None:
                return self.tokenizer.apply_chat_template(
                    [*msgs, {"role": "assistant", "content": answer_prefix}], tokenize=False,
                    continue_final_message=True)
            return self.tokenizer.apply_chat_template(
                msgs, tokenize=False, add_generation_prompt=True
            )
        # No template: a plain, recorded fallback (identity() says so).
        return plain_chat(msgs, answer_prefix)

    def encode(self, text: str) -> list[int]:
        """Token ids of a prompt with the BOS policy applied (exactly one BOS or none)."""
        ids = list(self.tokenizer(text, add_special_tokens=False).input_ids)
        return with_single_bos(ids, self.bos_id, self._auto_bos)

    def identity(self) -> dict[str, Any]:
        if self._digest is None:
            self._digest = model_digest(self.model)
        cfg = getattr(self.model, "config", None)
        return {
            "backend": self.name,
            "model_class": type(self.model).__name__,
            "name_or_path": getattr(cfg, "_name_or_path", None),
            "dtype": str(getattr(self.model, "dtype", "")),
            "add_bos": self.add_bos,
            "chat_template": "tokenizer" if self.has_chat_template else FALLBACK_TEMPLATE_NOTE,
            # The prompt's bytes depend on the tokenizer and template as much as on the
            # weights: a changed template or vocabulary must not hit an old cached result.
            "tokenizer_digest": tokenizer_digest(self.tokenizer),
            "model_digest": self._digest,
        }

    # -------------------------------------------------------------- generation
    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationOutput]:
        prepared = []
        for i, req in enumerate(requests):
            text = req.prompt if req.prompt is not None else self.render(req.messages)
            prepared.append((i, req, text, self.encode(text)))
        outputs: list[GenerationOutput | None] = [None] * len(prepared)
        runnable = []
        for i, req, text, ids in prepared:
            room = self.max_length - len(ids)
            if room < 1:
                outputs[i] = GenerationOutput(
                    text="", prompt_text=text, prompt_tokens=len(ids), finish_reason="error",
                    error=f"prompt is {len(ids)} tokens; the model's context is {self.max_length}",
                )
            else:
                runnable.append((i, req, text, ids, min(req.max_new_tokens, room)))
        # Similar lengths together: less padding, fewer wasted positions.
        runnable.sort(key=lambda r: (len(r[3]), r[4]))
        bar = (self.progress.add_task(f"generating ({len(runnable)} requests)",
                                      total=len(runnable)) if self.progress else None)
        for start in range(0, len(runnable), self.batch_size):
            chunk = runnable[start : start + self.batch_size]
            for (i, _req, _text, _ids, _mx), out in zip(chunk, self._generate_batch(chunk), strict=True):
                outputs[i] = out
            if bar is not None:
                self.progress.advance(bar, len(chunk))
        if bar is not None:
            self.progress.remove_task(bar)
        return [o for o in outputs if o is not None]

    def _keeps_last_logits(self) -> bool:
        """The model's forward takes `logits_to_keep` (through a PEFT wrapper too)."""
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        supports = getattr(base, "_supports_logits_to_keep", None)
        return bool(supports and supports())

    def _generate_batch(self, chunk: list) -> list[GenerationOutput]:
        import torch

        device = self.device
        bsz = len(chunk)
        lengths = [len(c[3]) for c in chunk]
        width = max(lengths)
        input_ids = torch.full((bsz, width), self.pad_id, dtype=torch.long)
        attn = torch.zeros((bsz, width), dtype=torch.long)
        for r, c in enumerate(chunk):
            input_ids[r, width - lengths[r] :] = torch.tensor(c[3], dtype=torch.long)
            attn[r, width - lengths[r] :] = 1
        input_ids, attn = input_ids.to(device), attn.to(device)
        positions = (attn.cumsum(-1) - 1).clamp(min=0)

        budgets = [c[4] for c in chunk]
        temps = [c[1].temperature for c in chunk]
        top_ps = [c[1].top_p for c in chunk]
        stops = [c[1].stop for c in chunk]
        # One generator per row, on the model's device: a row's sample depends on its seed
        # only, and on a GPU the logits never leave it (only the chosen ids do, once a step).
        gens = []
        for c in chunk:
            g = torch.Generator(device=device)
            g.manual_seed(int(c[1].seed))
            gens.append(g)
        max_stop_chars = max((len(s) for st in stops for s in st), default=0)

        produced: list[list[int]] = [[] for _ in range(bsz)]
        finish = ["length"] * bsz
        done = [False] * bsz
        eos = torch.tensor(sorted(self.eos_ids), dtype=torch.long) if self.eos_ids else None

        # Only the last position's logits are read: computing the vocabulary's logits for
        # every prompt position (Qwen: 152K x 896 per position, 4 GB for 8 BFCL prompts of
        # 900 tokens) costs the prefill's memory and time for nothing. transformers' own
        # generate() asks the same (logits_to_keep=1) of the models that accept it.
        keep = {"logits_to_keep": 1} if self._keeps_last_logits() else {}
        with torch.inference_mode():
            out = self.model(
                input_ids=input_ids, attention_mask=attn, position_ids=positions, use_cache=True,
                **keep,
            )
            past = out.past_key_values
            last_pos = positions[:, -1]
            for _step in range(max(budgets)):
                logits = out.logits[:, -1, :]
                # Greedy rows: argmax; sampled rows: their own generator. All on the device,
                # then one transfer of the chosen ids.
                next_dev = logits.argmax(-1)
                for r in range(bsz):
                    if done[r] or temps[r] <= 0:
                        continue
                    next_dev[r] = _sample(logits[r].float(), temps[r], top_ps[r], gens[r])
                next_tok = next_dev.cpu()
                for r in range(bsz):
                    if done[r]:
                        next_tok[r] = self.pad_id
                        continue
                    tok = int(next_tok[r])
                    if eos is not None and tok in self.eos_ids:
                        done[r], finish[r] = True, "stop"
                        continue
                    produced[r].append(tok)
                    if stops[r]:
                        tail = self.tokenizer.decode(
                            produced[r][-(max_stop_chars + 4) :], skip_special_tokens=True
                        )
                        if any(s in tail for s in stops[r]):
                            done[r], finish[r] = True, "stop"
                            continue
                    if len(produced[r]) >= budgets[r]:
                        done[r] = True
                if all(done):
                    break
                attn = torch.cat([attn, torch.ones((bsz, 1), dtype=attn.dtype, device=device)], 1)
                last_pos = last_pos + 1
                out = self.model(
                    input_ids=next_tok.view(bsz, 1).to(device),
                    attention_mask=attn,
                    position_ids=last_pos.view(bsz, 1),
                    past_key_values=past,
                    use_cache=True,
                )
                past = out.past_key_values

        results = []
        for r, c in enumerate(chunk):
            text = self.tokenizer.decode(produced[r], skip_special_tokens=True)
            text, hit = _cut_at_stop(text, stops[r])
            results.append(
                GenerationOutput(
                    text=text,
                    prompt_text=c[2],
                    prompt_tokens=lengths[r],
                    completion_tokens=len(produced[r]),
                    finish_reason="stop" if hit else finish[r],
                )
            )
        return results

    # ---------------------------------------------------------- log-likelihood
    def _ll_pair(self, req: LoglikelihoodRequest) -> tuple[list[int], list[int]]:
        """(context ids, continuation ids) split the way lm-eval splits them: encode
        context+continuation together, so tokens that merge across the boundary count as
        the continuation's, and trailing context spaces move to the continuation."""
        ctx = req.context if req.context is not None else self.render(req.context_messages)
        cont = req.continuation
        n_spaces = len(ctx) - len(ctx.rstrip(" "))
        if n_spaces:
            cont = ctx[-n_spaces:] + cont
            ctx = ctx[:-n_spaces]
        whole = self.encode(ctx + cont)
        ctx_ids = self.encode(ctx)
        if whole[: len(ctx_ids)] == ctx_ids and len(whole) > len(ctx_ids):
            return ctx_ids, whole[len(ctx_ids) :]
        return ctx_ids, list(self.tokenizer(cont, add_special_tokens=False).input_ids)

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[LoglikelihoodOutput]:
        import torch

        pairs = [self._ll_pair(r) for r in requests]
        order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
        results: list[LoglikelihoodOutput | None] = [None] * len(pairs)
        device = self.device
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            seqs = []
            for i in idx:
                ctx, cont = pairs[i]
                if not cont:
                    raise BackendError(f"empty continuation in log-likelihood request {i}")
                full = (ctx + cont)[-(self.max_length + 1) :]
                seqs.append((full[:-1], len(cont)))
            width = max(len(s) for s, _ in seqs)
            inp = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
            attn = torch.zeros((len(seqs), width), dtype=torch.long)
            for r, (s, _) in enumerate(seqs):
                inp[r, : len(s)] = torch.tensor(s, dtype=torch.long)
                attn[r, : len(s)] = 1
            with torch.inference_mode():
                logits = self.model(input_ids=inp.to(device), attention_mask=attn.to(device)).logits
                logp = torch.log_softmax(logits.float(), dim=-1).cpu()
            for r, i in enumerate(idx):
                s, n_cont = seqs[r]
                cont = pairs[i][1]
                rows = logp[r, len(s) - n_cont : len(s)]
                target = torch.tensor(cont, dtype=torch.long)
                lp = rows.gather(1, target.view(-1, 1)).sum().item()
                greedy = bool((rows.argmax(-1) == target).all())
                results[i] = LoglikelihoodOutput(logprob=lp, is_greedy=greedy, n_tokens=n_cont)
        return [r for r in results if r is not None]


def _sample(logits: Any, temperature: float, top_p: float, gen: Any) -> Any:
    """One token id (a 1-element tensor on the logits' device; no host sync here)."""
    import torch

    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, sorted_i = probs.sort(descending=True)
        cum = sorted_p.cumsum(0)
        keep = cum - sorted_p < top_p  # always keeps the first token
        sorted_p = torch.where(keep, sorted_p, torch.zeros_like(sorted_p))
        choice = torch.multinomial(sorted_p / sorted_p.sum(), 1, generator=gen)
        return sorted_i[choice][0]
    return torch.multinomial(probs, 1, generator=gen)[0]


def _cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """Text up to (not including) the earliest stop string."""
    cut = len(text)
    for s in stops:
        if s:
            j = text.find(s)
            if j != -1:
                cut = min(cut, j)
    return text[:cut], cut != len(text)
