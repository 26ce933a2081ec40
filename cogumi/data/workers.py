"""The one place that picks how data workers are started (dedup, language id)."""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Sequence


def pool_context(preload: Sequence[str] = ()):
    """A multiprocessing context for worker pools.

    forkserver (Python 3.14's default on Linux) does not fork whatever threads the caller
    has running (torch, tokenizers), which plain fork would. `preload` names modules the
    server imports once, so workers fork from it instead of each importing them (effective
    only if the server is not running yet).
    """
    methods = multiprocessing.get_all_start_methods()
    main = sys.modules.get("__main__")
    main_file = getattr(main, "__file__", None)
    if (main_file is not None and getattr(main, "__spec__", None) is None
            and not os.path.exists(main_file) and "fork" in methods):
        # `python - <<EOF` and the like: forkserver and spawn would re-run the main module
        # from a path that does not exist ('<stdin>') and every worker would fail.
        return multiprocessing.get_context("fork")
    if "forkserver" not in methods:
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    if preload:
        context.set_forkserver_preload(list(preload))
    return context
