"""`tokenleap serve`: an OpenAI-compatible HTTP server (FastAPI + uvicorn) over tokenleap's methods."""

from .app import ApiError, create_app, serve

__all__ = ["create_app", "serve", "ApiError"]
