"""Child process: llama.cpp's own HF -> GGUF converter, run from the vendored copy.

Run as a separate process (`gguf_export.convert_to_gguf` does it) because the converter
needs the gguf-py of its own llama.cpp commit, which is newer than the `gguf` release on
PyPI under the same version number; both cannot be imported in one process, and the parent
reads GGUF files with the PyPI one.

The one change to the converter's behaviour: when its pre-tokenizer hash table does not know
the vocabulary, `cogumi.compression.bpe_pretokenizers` decides from the tokenizer's declared
pre-tokenization (or refuses), and the decision is written to the JSON file given as
--decision, so the manifest records it.

Usage: python _convert_child.py MODEL_DIR OUT.gguf OUTTYPE DECISION.json
"""

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve()
VENDOR = HERE.parents[1] / "third_party" / "llama_cpp"
# Vendored converter and its gguf-py first; the repository root for cogumi itself. The
# script's own directory (cogumi/compression, sys.path[0]) holds no module named gguf.
sys.path[0:0] = [str(VENDOR), str(VENDOR / "gguf-py"), str(HERE.parents[2])]

from cogumi.compression.bpe_pretokenizers import pre_tokenizer_for  # noqa: E402


def main(argv: list[str]) -> int:
    model_dir, out, outtype, decision_path = argv
    decision = {"pre_tokenizer": None, "source": "converter hash table"}

    import conversion.base as base  # the vendored converter (needs torch, transformers)
    known = base.TextModel.get_vocab_base_pre

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
