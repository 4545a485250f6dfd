"""topk-service: the HTTP server (settings, app factory, engine, batcher, metrics, CLI)."""

from service.app import create_app as create_app
from service.settings import Settings as Settings

__all__ = ["Settings", "create_app"]
