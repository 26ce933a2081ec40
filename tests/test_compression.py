"""Phase 2A/2E/2B building blocks on a small random Llama (CPU, offline, seconds each):
SparseGPT really reaches the sparsity, recovery keeps the mask, W4A16 saves, loads and
generates, and widths the quantizer cannot group fail with the tensor named."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from cogumi.compression.common import (
    MODEL_DIR,
    load_hf_model,
    load_merged_phase_model,
    retention,
    save_hf_model,
    size_row,
)
from cogumi.compression.llmc import (
    IndivisibleWidth,
    apply_masks,
    calibration_data,
    sparsity_report,
    zero_masks,
)
from cogumi.evaluation.testing import tiny_llama, tiny_tokenizer
from cogumi.models import LoadedModel
from cogumi.profile import (
    ProfileError,
    PruneConfig,
    QuantizeConfig,
    RecoveryConfig,
    TrainingConfig,
    parse_profile,
)

from .conftest import ROOT

IGNORE = ["re:.*lm_head"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: a matmul is microseconds, and two OpenMP threads on a loaded
    2-core machine spend ~30x that waiting on each other (measured: 1.4 ms vs 0.05 ms)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _records(n: int) -> list[dict]:
    return [{"id": f"r{i}", "instruction": f"What is {i} plus {i % 7}?",
             "response": f"{i} plus {i % 7} is {i + i % 7}. The answer is {i + i % 7}."}
            for i in range(n)]


def _saved_model(tmp_path, hidden: int = 128, layers: int = 2) -> LoadedModel:
    """A random Llama saved and reloaded, as phases see models (config.json on disk)."""
    tok = tiny_tokenizer()
    loaded = LoadedModel(tiny_llama(tok, hidden=hidden, layers=layers), tok, False, "test")
    save_hf_model(loaded, tmp_path / "base")
    return load_hf_model(tmp_path / "base")


def _pruned(tmp_path, cfg: PruneConfig | None = None) -> LoadedModel:
    from cogumi.phases.prune import prune_model
    loaded = _saved_model(tmp_path)
    cfg = cfg or PruneConfig(sparsity=0.65, calibration_records=16, max_seq_len=64)
    loaded.model, accounting = prune_model(loaded.model, loaded.tokenizer, False, _records(40),
                                           cfg, 0.1, 0, tmp_path / "scratch")
    assert accounting["used"] == cfg.calibration_records
    return loaded


@pytest.fixture(scope="module")
def pruned_dir(tmp_path_factory):
    """Pruned once at 65 % for the tests below, which load their own copy."""
    tmp = tmp_path_factory.mktemp("pruned")
    save_hf_model(_pruned(tmp), tmp / "pruned")
    return tmp / "pruned"


def test_sparsegpt_reaches_the_profile_sparsity_in_every_layer(pruned_dir):
    loaded = load_hf_model(pruned_dir)
    rep = sparsity_report(loaded.model, IGNORE)
    assert rep["min_layer"] >= 0.649  # every targeted Linear, measured on the weights
    assert len(rep["per_layer"]) == 2 * 7
    assert (loaded.model.lm_head.weight != 0).all()  # the head is left dense
    assert rep["all_parameters"] < rep["linear"]  # embeddings count against the overall share


def test_two_four_mask_zeroes_two_of_every_four(tmp_path):
    cfg = PruneConfig(sparsity=0.5, mask_structure="2:4", calibration_records=8, max_seq_len=64)
    loaded = _pruned(tmp_path, cfg)
    w = loaded.model.model.layers[0].mlp.down_proj.weight
    zeros_per_block = (w.reshape(w.shape[0], -1, 4) == 0).sum(-1)
    assert (zeros_per_block >= 2).all()


def test_two_four_with_another_sparsity_is_refused_naming_the_key():
    text = (ROOT / "cogumi" / "profiles" / "tiny.toml").read_text()
    assert 'sparsity = 0.65\nmask_structure = "unstructured"' in text
    text = text.replace('mask_structure = "unstructured"', 'mask_structure = "2:4"')
    with pytest.raises(ProfileError, match=r"tiny.toml: .*prune.*'2:4'.*0\.65 cannot"):
        parse_profile(text, "cogumi/profiles/tiny.toml")


def test_calibration_accounts_for_every_record():
    tok = tiny_tokenizer()
    records = _records(50) + [{"id": "empty", "instruction": "x", "response": " "}]
    data = calibration_data(records, tok, False, n=10, max_seq_len=16, heldout_fraction=0.1,
                            seed=0)
    acc = data.accounting
    assert acc["used"] == len(data.dataset) == 10
    assert acc["truncated to max_seq_len"] > 0
    assert max(len(x) for x in data.dataset["input_ids"]) == 16
    assert (acc["heldout (not used)"] + acc["empty response (not used)"]
            + acc["not sampled (beyond the calibration count)"] + acc["used"]) == 51


def test_recovery_merge_is_dense_and_the_mask_is_reapplied(tmp_path, pruned_dir):
    from cogumi.phases.recovery import recover
    from cogumi.training.sft import encode_records

    loaded = load_hf_model(pruned_dir)
    before = zero_masks(loaded.model, IGNORE)
    tok = loaded.tokenizer
    train = encode_records(_records(16), tok, False, 128).examples
    cfg = TrainingConfig(backend="peft-lora", lora_rank=4, lora_alpha=8, lora_dropout=0.0,
                         target_modules=["q_proj", "v_proj", "down_proj"], epochs=1,
                         learning_rate=1e-2, batch_size=8, max_seq_len=128)
    model, rep = recover(loaded.model, tok, train, train[:4], cfg,
                         RecoveryConfig(epochs=1, learning_rate=1e-2), IGNORE, 0,
                         tmp_path / "ckpt", "cpu")
    sp = rep["sparsity"]
    # The merged LoRA delta really is dense on the adapted layers ...
    assert sp["merged_dense"] < sp["pruned"] - 0.05
    assert rep["sparsity"]["weights_reset_to_zero"] > 0
    # ... and afterwards exactly the 2A positions are zero again.
    after = zero_masks(model, IGNORE)
    for name, mask in before.items():
        assert torch.equal(mask, after[name]), name
    assert sp["masked"] == pytest.approx(sp["pruned"])


def test_distillation_loss_is_the_kl_on_answer_tokens_only():
    from cogumi.training.sft import IGNORE_INDEX, distillation_loss

    torch.manual_seed(0)
    teacher = torch.randn(2, 5, 7)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 4, 1],
                           [IGNORE_INDEX, 2, 2, IGNORE_INDEX, IGNORE_INDEX]])
    assert distillation_loss(teacher, teacher, labels).item() == pytest.approx(0.0, abs=1e-6)
    student = teacher.clone()
    student[0, 0] += 5.0                      # position 0 predicts token 1: a prompt token
    student[1, 3:] += torch.randn(2, 7)       # predicts positions 4-5: padding / prompt
    assert distillation_loss(student, teacher, labels).item() == pytest.approx(0.0, abs=1e-6)
    student[0, 2] = torch.randn(7)            # predicts answer token 3: counted
    kl = distillation_loss(student, teacher, labels).item()
    log_t = torch.log_softmax(teacher[0, 2], -1)
    log_s = torch.log_softmax(student[0, 2], -1)
    one = torch.sum(log_t.exp() * (log_t - log_s)).item()
    answer_positions = 3 + 2                  # shifted labels: 3 in row 0, 2 in row 1
    assert kl == pytest.approx(one / answer_positions, rel=1e-5) and kl > 0


def _distillation_setup(pruned_dir):
    """(teacher, pruned model, train examples, kl_to_teacher): the model before pruning made
    confident (its LM head x 8: a random model's near-uniform outputs would leave nothing
    measurable to distill), the pruned copy, and the KL to it on the training batch."""
    from cogumi.training.sft import _collate, distillation_loss, encode_records

    teacher = load_hf_model(pruned_dir.parent / "base").model
    with torch.no_grad():
        teacher.lm_head.weight.mul_(8.0)
    loaded = load_hf_model(pruned_dir)
    tok = loaded.tokenizer
    train = encode_records(_records(16), tok, False, 128).examples
    batch = _collate(tok.pad_token_id or 0)([{"input_ids": e.input_ids, "labels": e.labels}
                                             for e in train])

    def kl_to_teacher(model) -> float:
        with torch.no_grad():
            feed = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
            return distillation_loss(model(**feed).logits, teacher(**feed).logits,
                                     batch["labels"]).item()

    return teacher, loaded, train, kl_to_teacher


def test_distilling_recovery_moves_the_pruned_model_toward_its_teacher(tmp_path, pruned_dir):
    from cogumi.phases.recovery import recover

    teacher, loaded, train, kl_to_teacher = _distillation_setup(pruned_dir)
    tok = loaded.tokenizer

    before = kl_to_teacher(loaded.model)
    cfg = TrainingConfig(backend="peft-lora", lora_rank=4, lora_alpha=8, lora_dropout=0.0,
                         target_modules=["q_proj", "v_proj", "down_proj"], epochs=5,
                         learning_rate=1e-2, batch_size=8, max_seq_len=128)
    model, rep = recover(loaded.model, tok, train, train[:4], cfg,
                         RecoveryConfig(epochs=5, learning_rate=1e-2, objective="distill"),
                         IGNORE, 0, tmp_path / "ckpt", "cpu", teacher=teacher)
    assert rep["sparsity"]["masked"] == pytest.approx(rep["sparsity"]["pruned"])
    after = kl_to_teacher(model)
    assert after < before, (before, after)      # measured: 1.14 -> 1.01 nats
    logged = [h["loss"] for h in rep["log_history"] if "loss" in h]
    assert logged[-1] < logged[0]                # the loss trained on is the KL


def test_sparse_finetuning_trains_the_kept_weights_and_keeps_every_zero(tmp_path, pruned_dir):
    """2A's prune.finetune: full-weight distillation toward the dense model, no adapter; the
    exact 2A positions stay zero at every step and the kept weights move."""
    from cogumi.training.sft import fit_keeping_zeros

    teacher, loaded, train, kl_to_teacher = _distillation_setup(pruned_dir)
    tok = loaded.tokenizer
    masks = zero_masks(loaded.model, IGNORE)
    kept_before = {n: m.weight.detach().clone() for n, m in
                   dict(loaded.model.named_modules()).items() if n in masks}
    before = kl_to_teacher(loaded.model)
    cfg = TrainingConfig(backend="peft-lora", lora_rank=4, lora_alpha=8, lora_dropout=0.0,
                         target_modules=["q_proj"], epochs=1, learning_rate=1e-3,
                         batch_size=8, max_seq_len=128)
    history, resumed = fit_keeping_zeros(loaded.model, tok, train, cfg, 0, tmp_path / "ckpt",
                                         "cpu", masks, epochs=4, learning_rate=1e-3,
                                         teacher=teacher)
    assert not resumed and not hasattr(loaded.model, "peft_config")
    after_masks = zero_masks(loaded.model, IGNORE)
    modules = dict(loaded.model.named_modules())
    for name, mask in masks.items():
        assert torch.equal(after_masks[name], mask), name  # no zero filled, none added
        moved = modules[name].weight.detach()[~mask] != kept_before[name][~mask]
        assert moved.float().mean() > 0.5, name            # every layer really trained
    assert kl_to_teacher(loaded.model) < before


def test_a_profile_can_ask_2a_for_sparse_finetuning_and_names_a_bad_key():
    text = (ROOT / "cogumi" / "profiles" / "tiny.toml").read_text()
    assert "\n[prune.finetune]\n" in text
    profile = parse_profile(text, "cogumi/profiles/tiny.toml")
    assert profile.prune.finetune.objective == "distill"
    bad = text.replace("\n[prune.finetune]\n", "\n[prune.finetune]\nepoch = 2\n")
    with pytest.raises(ProfileError, match=r"tiny.toml: .*prune.finetune.epoch"):
        parse_profile(bad, "cogumi/profiles/tiny.toml")


def test_apply_masks_counts_what_it_resets():
    lin = torch.nn.Sequential(torch.nn.Linear(4, 4, bias=False))
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[0] = True
    assert apply_masks(lin, {"0": mask}) == 4
    assert (lin[0].weight[0] == 0).all() and (lin[0].weight[1:] != 0).all()


def test_awq_w4a16_saves_compressed_loads_and_generates(tmp_path, pruned_dir):
    from cogumi.compression.common import save_tokenizer_and_info
    from cogumi.phases.quantize import quantize_model, stored_formats

    loaded = load_hf_model(pruned_dir)
    cfg = QuantizeConfig(method="awq", calibration_records=8, max_seq_len=64)
    model, ignore, fallback, _ = quantize_model(loaded.model, loaded.tokenizer, False,
                                                _records(40), cfg, 0.1, 0, tmp_path / "s",
                                                "test")
    assert fallback == []
    out = tmp_path / "q"
    model.save_pretrained(out, save_compressed=True)
    save_tokenizer_and_info(loaded, out, phase="2B")
    names = [f"model.layers.{i}.{m}" for i in range(2)
             for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                       "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]
    assert set(stored_formats(out, names).values()) == {"packed int4"}
    assert size_row(out, 1)["weight_bytes"] < size_row(pruned_dir, 1)["weight_bytes"]

    w = load_hf_model(out, dequantize=True).model.model.layers[0].mlp.down_proj.weight.detach()
    # int4 with one scale per 128 inputs: at most 16 distinct values per row and group.
    groups = w.reshape(w.shape[0], -1, 128)
    assert max(len(torch.unique(groups[r, g])) for r in range(8)
               for g in range(groups.shape[1])) <= 16
    # AWQ rescales and rounds each weight: pruned zeros stay zero.
    assert sparsity_report(load_hf_model(out, dequantize=True).model,
                           ["lm_head"])["linear"] >= 0.6
    q = load_hf_model(out)  # as users load it: packed int4, unpacked in each forward
    assert hasattr(q.model.model.layers[0].mlp.down_proj, "weight_packed")
    ids = q.tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 plus 2?"}],
                                          add_generation_prompt=True, return_tensors="pt",
                                          return_dict=True)
    out_ids = q.model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out_ids.shape[1] == ids["input_ids"].shape[1] + 5


def test_width_not_divisible_by_the_group_size_names_the_tensor(tmp_path):
    from cogumi.phases.quantize import plan_ignore

    loaded = _saved_model(tmp_path, hidden=192, layers=1)
    with pytest.raises(IndivisibleWidth,
                       match=r"model\.layers\.0\.self_attn\.q_proj\.weight.*\[192, 192\].*192 "
                             r"is not a multiple of the W4A16 group size 128"):
        plan_ignore(loaded.model, QuantizeConfig(), "tmp/base")


def test_indivisible_fallback_is_stated_per_tensor(tmp_path):
    from cogumi.phases.quantize import plan_ignore

    loaded = _saved_model(tmp_path, hidden=192, layers=1)
    ignore, fallback = plan_ignore(loaded.model,
                                   QuantizeConfig(indivisible="keep-full-precision"), "x")
    assert "model.layers.0.self_attn.q_proj" in ignore and "lm_head" in ignore
    # intermediate 384 = 3 x 128: down_proj's input width divides, so it is quantised.
    assert "model.layers.0.mlp.down_proj" not in ignore
    assert {f["tensor"] for f in fallback} >= {"model.layers.0.mlp.gate_proj.weight"}
    assert all(f["kept"] == "full precision" and "% 128" in f["why"] for f in fallback)


def test_merged_1b_model_equals_base_plus_adapter(tmp_path):
    from peft import LoraConfig, get_peft_model

    base = _saved_model(tmp_path)
    peft_model = get_peft_model(base.model, LoraConfig(r=4, target_modules=["q_proj"],
                                                       init_lora_weights=False))
    (tmp_path / "runs" / "1B").mkdir(parents=True)
    peft_model.save_pretrained(tmp_path / "runs" / "1B" / "adapter")
    ids = torch.tensor([[0, 5, 6, 7, 8]])
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
    from cogumi.profile import ModelConfig
    model_cfg = ModelConfig(source="local", path=str(tmp_path / "base"), dtype="float32",
                            parameters=sum(p.numel() for p in base.model.parameters()))
    profile = SimpleNamespace(model=model_cfg, hardware=SimpleNamespace(device="cpu"))
    ctx = SimpleNamespace(profile=profile, root=tmp_path,
                          input_dir=lambda pid: tmp_path / "runs" / pid)
    merged = load_merged_phase_model(ctx, "1B")
    assert not hasattr(merged.model, "peft_config")  # plain model, LoRA folded in
    with torch.no_grad():
        got = merged.model(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-4)
    save_hf_model(merged, tmp_path / "runs" / "2A" / MODEL_DIR)
    assert load_merged_phase_model(ctx, "2A").tokenizer.chat_template
    # 1C trains 1B's adapter further and saves the whole adapter: it loads the same way.
    (tmp_path / "runs" / "1C").mkdir()
    (tmp_path / "runs" / "1B" / "adapter").rename(tmp_path / "runs" / "1C" / "adapter")
    with torch.no_grad():
        got_1c = load_merged_phase_model(ctx, "1C").model(input_ids=ids).logits
    assert torch.allclose(got_1c, expected, atol=1e-4)


def test_compression_reads_1c_unless_the_profile_declares_no_distill(tmp_path):
    from cogumi.compression.common import reference_for, steps_of, trained_phase
    from cogumi.registry import get_phase

    (tmp_path / "1C").mkdir()
    (tmp_path / "1C" / "metrics.json").write_text(json.dumps(
        {"math.accuracy": 0.5, "math.n_items": 30, "teacher_relative": 0.9}))
    for distill, expected in ((object(), "1C"), (None, "1B")):
        profile = SimpleNamespace(distill=distill)
        for pid in ("2A", "2E"):
            phase = get_phase(pid)
            ctx = SimpleNamespace(profile=profile, phase=phase)
            assert trained_phase(ctx) == expected
    ctx = SimpleNamespace(input_dir=lambda pid: tmp_path / pid)
    ref = reference_for(ctx, "1C")
    assert ref.phase == "1C" and ref.metrics == {"math.accuracy": 0.5, "math.n_items": 30}
    assert steps_of(ctx, "1C") == []


def test_retention_is_the_minimum_chance_corrected_share_capped_at_one():
    ref = {"math.accuracy": 0.5, "mmlu.accuracy": 0.55, "code.pass@1": 0.0,
           "math.n_items": 100, "mmlu.n_items": 100, "code.n_items": 100}
    r = retention({"math.accuracy": 0.45, "mmlu.accuracy": 0.64, "code.pass@1": 0.1}, ref)
    assert r["per_metric"]["math.accuracy"] == pytest.approx(0.9)
    # (0.64 - 0.25) / (0.55 - 0.25) = 1.3: capped, so a gain cannot hide a loss elsewhere.
    assert r["per_metric"]["mmlu.accuracy"] == pytest.approx(1.0)
    assert r["per_metric"]["code.pass@1"] is None and "code.pass@1" in r["skipped"]
    assert r["value"] == pytest.approx(0.9)
    assert r["mean"] == pytest.approx(0.95)
    # A score that went missing after compression counts as lost, not as excluded.
    assert retention({"mmlu.accuracy": 0.4}, ref)["value"] == pytest.approx(0.0)
    # MMLU at 0.4 is chance-corrected: (0.325 - 0.25) / (0.4 - 0.25) = 0.5, not 0.325 / 0.4.
    ref2 = {"math.accuracy": 0.5, "mmlu.accuracy": 0.4, "math.n_items": 100, "mmlu.n_items": 100}
    r = retention({"math.accuracy": 0.5, "mmlu.accuracy": 0.325}, ref2)
    assert r["per_metric"]["mmlu.accuracy"] == pytest.approx(0.5)


def test_retention_skips_a_reference_within_one_standard_error_of_chance():
    # 0.3 on 40 items: SE = sqrt(0.3 * 0.7 / 40) = 0.072 > 0.3 - 0.25.
    ref = {"math.accuracy": 0.5, "mmlu.accuracy": 0.3, "math.n_items": 40, "mmlu.n_items": 40}
    r = retention({"math.accuracy": 0.2, "mmlu.accuracy": 0.1}, ref)
    assert r["used"] == ["math.accuracy"] and r["value"] == pytest.approx(0.4)
    assert "standard error" in r["skipped"]["mmlu.accuracy"]
    # Nothing measurable to retain: undefined, which fails every gate.
    assert math.isnan(retention({}, {"math.accuracy": 0.0, "math.n_items": 40})["value"])


def test_gptq_alternative_packs_int4_and_fills_pruned_zeros(tmp_path, pruned_dir):
    from cogumi.phases.quantize import quantize_model, stored_formats

    loaded = load_hf_model(pruned_dir)
    cfg = QuantizeConfig(method="gptq", calibration_records=8, max_seq_len=64)
    model, *_ = quantize_model(loaded.model, loaded.tokenizer, False, _records(40), cfg, 0.1,
                               0, tmp_path / "s", "test")
    model.save_pretrained(tmp_path / "q", save_compressed=True)
    assert stored_formats(tmp_path / "q", ["model.layers.1.mlp.down_proj"]) == {
        "model.layers.1.mlp.down_proj": "packed int4"}
    # GPTQ compensates each column's rounding error on the columns not yet quantised, zeros
    # included: the reason 2B reports its own sparsity and prefers AWQ after pruning.
    from cogumi.compression.common import save_tokenizer_and_info
    save_tokenizer_and_info(loaded, tmp_path / "q")
    after = sparsity_report(load_hf_model(tmp_path / "q", dequantize=True).model, IGNORE)
    assert after["linear"] < 0.64  # pruned: >= 0.65 in every layer


def test_retention_table_says_why_a_retention_is_undefined():
    from cogumi.compression.common import Reference, retention_step, retention_table

    n = {"math.n_items": 40, "mmlu.n_items": 40, "code.n_items": 40}
    ref = Reference("1B", {"math.accuracy": 0.2, "mmlu.accuracy": 0.0, "code.pass@1": 0.0,
                           **n}, "x")
    zero = {"math.accuracy": 0.0, "mmlu.accuracy": 0.0, "code.pass@1": 0.0, **n}
    steps = [retention_step("2A", zero, ref.metrics, "1B", ref),
             retention_step("2E", {**zero, "code.pass@1": 0.1}, zero, "2A", ref)]
    text = retention_table(ref, steps)
    # Each score with the share of the reference's margin over chance it keeps.
    assert "| 2E | 0.000 (0.000) | 0.000 (—) | 0.100 (—) | — vs 2A | 0.000 |" in text
    assert "- 2E vs 2A: undefined" in text
    assert "code.pass@1: reference 0.000 is not above chance" in text
    assert "2A vs 1B: undefined" not in text  # 1B's MATH is above chance: 2A retains 0 of it
