"""Phase 2: compression (prune, recover, quantise, GGUF, pack, calibrate)."""
