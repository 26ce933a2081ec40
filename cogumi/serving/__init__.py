"""Phase 5: the deployable bundle and `cogumi serve`, its OpenAI-compatible server.

`cogumi.serving.bundle` lays the bundle out and verifies it; `engine` is the llama.cpp base
with its modifiers; `system` routes and escalates; `app` is the FastAPI server. Nothing
heavy is imported here: `cogumi bundle verify` and `cogumi plan` run without FastAPI.
"""
