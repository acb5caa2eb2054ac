"""Serving: the batching scheduler and the OpenAI-compatible HTTP layer over it."""
