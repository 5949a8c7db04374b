"""optuna-dashboard on a skipsearch storage, with the studies' artifact folder (sample grids)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from optuna.artifacts import FileSystemArtifactStore
from sqlalchemy.engine import URL

from ._storage import StorageSettings, open_storage, resolve_url

__all__ = ["serve_dashboard", "dashboard_app"]


def _store(artifacts: Path) -> FileSystemArtifactStore | None:
    return FileSystemArtifactStore(str(artifacts)) if artifacts.is_dir() else None


def dashboard_app(storage_url: str | URL | None, artifacts: Path) -> Any:
    """The dashboard as a WSGI app (tests serve it on an ephemeral port)."""
    from optuna_dashboard import wsgi

    return wsgi(open_storage(resolve_url(storage_url), StorageSettings()), artifact_store=_store(artifacts))


def serve_dashboard(storage_url: str | URL | None, *, host: str = "127.0.0.1", port: int = 8080,
                    artifacts: Path = Path("skipsearch-artifacts")) -> None:
    from optuna_dashboard import run_server

    run_server(open_storage(resolve_url(storage_url), StorageSettings()), host=host, port=port,
               artifact_store=_store(artifacts))
