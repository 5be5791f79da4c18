"""The HTTP server: FastAPI app, model repository and the protocol faces."""

from inferd.serve.app import create_app
from inferd.serve.settings import ServerSettings

__all__ = ["ServerSettings", "create_app"]
