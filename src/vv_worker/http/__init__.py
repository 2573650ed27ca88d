"""The HTTP mode: an OpenAI-compatible speech server (``python -m vv_worker.server``) and its playground."""
