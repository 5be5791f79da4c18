"""The HTTP server: FastAPI app, model repository and the protocol faces.

`create_app` is imported on first use, so that reading the settings (the CLI
reads its `serve` defaults from them) does not load the whole server.
"""

from typing import TYPE_CHECKING, Any

from inferd.serve.settings import ServerSettings

if TYPE_CHECKING:
    from inferd.serve.app import create_app

__all__ = ["ServerSettings", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from inferd.serve.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
