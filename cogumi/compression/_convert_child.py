"""Child process: llama.cpp's own HF -> GGUF converter, run from the cache it was fetched into.

Run as a separate process (`gguf_export.convert_to_gguf` does it) because the converter
needs the gguf-py of its own llama.cpp commit, which is newer than the `gguf` release on
PyPI under the same version number (`cogumi.compression.converter` says how it is fetched
and what differs); both cannot be imported in one process, and the parent reads GGUF files
with the PyPI one.

The one change to the converter's behaviour: when its pre-tokenizer hash table does not know
the vocabulary, `cogumi.compression.bpe_pretokenizers` decides from the tokenizer's declared
pre-tokenization (or refuses), and the decision is written to the JSON file given as
--decision, so the manifest records it.

A second, explicit one, for models whose Hugging Face tokenizer is not the original: when
--vocab-gguf names a GGUF, the tokenizer (every `tokenizer.ggml.*` key: model, tokens,
scores, token types, special ids) is copied from that file instead of being rebuilt from
tokenizer.json, and `tokenizer.ggml.add_bos_token` is set from --add-bos (the model's own
BOS policy, cogumi_model.json). The chat template still comes from the model folder. This is
for the gemma-270m profile: its model comes from a GGUF, and the tokenizer.json transformers
builds from that GGUF is a Unigram model without the token types (6249 control tokens
become plain pieces) that no converter path can turn back into Gemma's tokenizer.

Usage: python _convert_child.py CONVERTER_DIR MODEL_DIR OUT.gguf OUTTYPE DECISION.json
       [VOCAB.gguf ADD_BOS]
(CONVERTER_DIR: `converter.ensure_converter()`, the extracted vendor/llama.cpp files.)
"""

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve()
CONVERTER = Path(sys.argv[1]) if len(sys.argv) > 1 else Path()
# The converter and its own gguf-py first; then the folder that holds the cogumi package. The
# script's own directory (cogumi/compression, sys.path[0]) holds no module named gguf.
sys.path[0:0] = [str(CONVERTER), str(CONVERTER / "gguf-py"), str(HERE.parents[2])]

from cogumi.compression.bpe_pretokenizers import pre_tokenizer_for  # noqa: E402


def vocab_from_gguf(model, source: str, add_bos: bool) -> None:
    """Write the tokenizer of GGUF `source` into the converter's writer, key by key."""
    import gguf

    reader = gguf.GGUFReader(source)
    writer = model.gguf_writer
    n_tokens = 0
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer.ggml.") or key == "tokenizer.ggml.add_bos_token":
            continue
        kind = field.types[0]
        if kind == gguf.GGUFValueType.ARRAY:
            value = field.contents()
            writer.add_key_value(key, value, kind, sub_type=field.types[-1])
            if key == "tokenizer.ggml.tokens":
                n_tokens = len(value)
        else:
            writer.add_key_value(key, field.contents(), kind)
    vocab_size = model.hparams.get("vocab_size")
    if n_tokens != vocab_size:
        raise SystemExit(f"{source}: {n_tokens} tokens, but the model's config.json has "
                         f"vocab_size {vocab_size}; refusing to pair them")
    writer.add_add_bos_token(add_bos)
    template = Path(model.dir_model) / "chat_template.jinja"
    if template.exists():
        writer.add_chat_template(template.read_text(encoding="utf-8"))
    else:
        config = json.loads((Path(model.dir_model) / "tokenizer_config.json").read_text())
        if config.get("chat_template"):
            writer.add_chat_template(config["chat_template"])


def main(argv: list[str]) -> int:
    _converter, model_dir, out, outtype, decision_path, *vocab = argv
    decision = {"pre_tokenizer": None, "source": "converter hash table"}

    import conversion.base as base  # llama.cpp's converter (needs torch, transformers)
    known = base.TextModel.get_vocab_base_pre
    if vocab:
        source, add_bos = vocab[0], vocab[1] == "true"

        def set_vocab(self) -> None:
            vocab_from_gguf(self, source, add_bos)

        base.TextModel.set_vocab = set_vocab
        import conversion  # resolve the architecture's class to patch its own set_vocab
        hparams = base.ModelBase.load_hparams(Path(model_dir), False)
        cls = conversion.get_model_class(base.get_model_architecture(hparams, base.ModelType.TEXT))
        cls.set_vocab = set_vocab
        decision.update(source=f"copied from {source}", add_bos=add_bos,
                        reason="tokenizer copied key by key from the model's source GGUF")

    def get_vocab_base_pre(self, tokenizer) -> str:
        try:
            pre = known(self, tokenizer)
        except NotImplementedError:
            found = pre_tokenizer_for(Path(model_dir) / "tokenizer.json")
            decision.update(pre_tokenizer=found["pre"], source="cogumi.bpe_pretokenizers",
                            reason=found["reason"])
            return found["pre"]
        decision["pre_tokenizer"] = pre
        return pre

    base.TextModel.get_vocab_base_pre = get_vocab_base_pre
    import convert_hf_to_gguf

    sys.argv = ["convert_hf_to_gguf.py", model_dir, "--outfile", out, "--outtype", outtype]
    convert_hf_to_gguf.main()
    Path(decision_path).write_text(json.dumps(decision, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
