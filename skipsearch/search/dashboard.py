"""optuna-dashboard on a skipsearch storage, with the studies' artifact folder (sample grids)."""

from __future__ import annotations

from pathlib import Path

from optuna.artifacts import FileSystemArtifactStore

from .storage import open_storage

__all__ = ["serve", "make_app"]


def make_app(storage_url: str | None, artifacts: Path):
    """The dashboard as a WSGI app (tests serve it on an ephemeral port)."""
    from optuna_dashboard import wsgi

    artifacts.mkdir(parents=True, exist_ok=True)
    return wsgi(open_storage(storage_url), artifact_store=FileSystemArtifactStore(str(artifacts)))


def serve(storage_url: str | None, *, host: str = "127.0.0.1", port: int = 8080, artifacts: Path = Path("skipsearch-artifacts")) -> None:
    from optuna_dashboard import run_server

    artifacts.mkdir(parents=True, exist_ok=True)
    run_server(open_storage(storage_url), host=host, port=port, artifact_store=FileSystemArtifactStore(str(artifacts)))
