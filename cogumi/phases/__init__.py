"""Phase implementations: each module has `run(ctx) -> dict[str, float]`.

The registry (cogumi.registry) names them; the runner seals what they write.
"""
