"""Generation backends: transformers, llama.cpp (GGUF) and OpenAI-compatible HTTP."""
