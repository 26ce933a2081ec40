"""Child process: a GGUF's logits at every position of given token sequences, in llama.cpp.

Run as a separate process (`gguf_export.LlamaCppLogits` starts it) because a native crash
in llama.cpp (llama-cpp-python 0.3.36 built natively on an AMX CPU dies of SIGSEGV in batched
decoding of quantized models: cogumi/llama_cpp_build.py) ends this process, and the parent
reports it as that file's failure instead of dying with it.

Usage: python _logits_child.py MODEL.gguf N_CTX N_THREADS N_BATCH KV
  KV: "f32" for an F32 KV cache, "default" for llama.cpp's (F16).
stdin: one JSON list of token ids per line. stdout, per line read: two little-endian int32
(rows, vocabulary) and then rows x vocabulary float32 logits; row i is the distribution
after token i. Nothing else is written to stdout (it is moved to stderr first).
"""

import json
import os
import sys


def main() -> int:
    path, n_ctx, n_threads, n_batch, kv = sys.argv[1:6]
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # llama.cpp and Python prints go to stderr, never into the data stream
    import llama_cpp
    import numpy as np

    extra = {}
    if kv == "f32":
        extra = {"type_k": llama_cpp.GGML_TYPE_F32, "type_v": llama_cpp.GGML_TYPE_F32}
    llama = llama_cpp.Llama(model_path=path, n_ctx=int(n_ctx), n_threads=int(n_threads),
                            n_batch=int(n_batch), n_ubatch=int(n_batch), logits_all=True,
                            verbose=False, seed=0, **extra)
    for line in sys.stdin:
        ids = json.loads(line)
        llama.reset()
        llama.eval(ids)
        scores = np.ascontiguousarray(llama.scores[: len(ids)], dtype="<f4")
        out.write(np.asarray(scores.shape, dtype="<i4").tobytes())
        out.write(scores.tobytes())
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
