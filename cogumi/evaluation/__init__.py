"""Cogumi's evaluation suite: verifiers, not vibes.

```python
from cogumi.evaluation import TransformersBackend, load_task, evaluate, GenerationSettings
backend = TransformersBackend(model, tokenizer, batch_size=16, add_bos=None)
task = load_task("math", "fixtures/benchmarks/math.jsonl")   # "mmlu", "code"; from packages:
# load_task("gsm8k"), load_task("humaneval"), load_task("gpqa"), load_task("bfcl")
report = evaluate(backend, [task], GenerationSettings(max_new_tokens=256, temperature=0.0))
report.metrics        # {"math.accuracy": ..., "math.pass@1": ..., ...}
report.write("runs/tiny/eval")   # items.jsonl + eval.json
```
"""

from .backends.base import Backend, BackendError
from .backends.llamacpp_backend import LlamaCppBackend
from .backends.openai_backend import OpenAIBackend
from .backends.transformers_backend import TransformersBackend
from .compare import Comparison, compare_judged, compare_verified
from .runner import (
    DEFINITIONS,
    REASONS,
    EvalReport,
    build_job,
    build_program,
    evaluate,
    run_cache_key,
)
from .sandbox import CodeJob, Sandbox, SandboxLimits, SandboxResult
from .settings import (
    GenerationOutput,
    GenerationRequest,
    GenerationSettings,
    LoglikelihoodOutput,
    LoglikelihoodRequest,
)
from .tasks import BenchmarkFormatError, BenchmarkPackageMissing, Item, Task, load_task

__all__ = [
    "Backend",
    "BackendError",
    "BenchmarkFormatError",
    "BenchmarkPackageMissing",
    "CodeJob",
    "Comparison",
    "DEFINITIONS",
    "EvalReport",
    "GenerationOutput",
    "GenerationRequest",
    "GenerationSettings",
    "Item",
    "LlamaCppBackend",
    "LoglikelihoodOutput",
    "LoglikelihoodRequest",
    "OpenAIBackend",
    "REASONS",
    "Sandbox",
    "SandboxLimits",
    "SandboxResult",
    "Task",
    "TransformersBackend",
    "build_job",
    "build_program",
    "compare_judged",
    "compare_verified",
    "evaluate",
    "load_task",
    "run_cache_key",
]
