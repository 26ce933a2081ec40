"""Teacher-written training examples: asked through any generation backend (in practice the
profile's teacher over the OpenAI-compatible protocol, cogumi.teacher), cached by content,
budgeted against a price table, and kept only when a verifier accepts them.

```python
from cogumi.distillation import Budget, ExampleVerifier, generate_examples
result = generate_examples(teacher, requests, verifier=ExampleVerifier(), cache_dir=cache,
                           budget=Budget(max_usd=5.0), prices=(0.15, 0.60))
result.kept        # [{"id", "domain", "instruction", "response", "source": "teacher"}, ...]
result.rejected    # [{"id", "domain", "reason", "detail", "response"}, ...]
result.not_sent    # requests the budget stopped before they were sent
result.usage       # requests, cache_hits, sent, tokens, cost_usd, failures by reason
```

A request is ``{"id", "domain", "prompt", "check"}``: ``prompt`` is what the teacher is asked
(never the reference answer), ``check`` what the verifier needs (:mod:`.verify`). Hosted
teachers can take the same requests as an OpenAI Batch API file (:mod:`.batch`), whose output
file fills the same cache, so the run that follows sends nothing.
"""

from __future__ import annotations

from .batch import import_batch_output, read_batch_output, write_batch_file
from .budget import Budget, BudgetExceeded
from .cache import ExampleCache, request_key
from .generate import (
    REJECT_REASONS,
    Answers,
    BudgetedTeacher,
    GenerationResult,
    ask_teacher,
    generate_examples,
    to_generation_request,
    validate_requests,
)
from .verify import ExampleVerifier, Verdict, check_for_item

__all__ = [
    "REJECT_REASONS", "Answers", "Budget", "BudgetExceeded", "BudgetedTeacher", "ExampleCache", "ExampleVerifier",
    "GenerationResult", "Verdict", "ask_teacher", "check_for_item", "generate_examples", "import_batch_output",
    "read_batch_output", "request_key", "to_generation_request", "validate_requests",
    "write_batch_file",
]
