"""OpenAI-compatible HTTP server over AsyncLLM: `build_app(engine, name)` for embedding, `serve` for the CLI.

Importing this package needs the server dependencies (fastapi, uvicorn, prometheus-client).
"""

from plait.server.app import build_app, serve

__all__ = ["build_app", "serve"]
