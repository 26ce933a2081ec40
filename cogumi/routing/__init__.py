"""Routing (phases 4A-4C) and what the server (phase 5) loads from their artifacts.

```python
from cogumi.routing import Router, Escalation, serving_signals
router = Router.load("runs/tiny/4A/router")          # bundle/router/ in a bundle
route, margin = router.route("Write a function ...")  # a name of router.routes; margin in [0, 1]
esc = Escalation.load("runs/tiny/4B/escalation.json")
p = esc.p_wrong(serving_signals(token_logprobs, margin))   # token_logprobs: the greedy
# generation's chosen-token log-probabilities from llama.cpp (logprobs of its completion)
escalate = p >= json.load(open("runs/tiny/4C/thresholds.json"))["threshold"]
```

Library code only: it never imports the runner (the phases in cogumi/phases/ orchestrate).
"""

from cogumi.routing.escalation import SIGNALS, Escalation, serving_signals
from cogumi.routing.router import Router, RouterFileError

__all__ = ["SIGNALS", "Escalation", "Router", "RouterFileError", "serving_signals"]
