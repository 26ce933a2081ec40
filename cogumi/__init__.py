"""Cogumi: an evaluation-gated harness from curated data to a small, strong model system.

Kept import-light: the noxfile imports cogumi.registry without torch installed.
"""

__version__ = "0.1.0"
