"""optuna-dashboard on a skipsearch storage, with the studies' artifact folder (sample grids).

optuna-dashboard's write routes (tell a trial, set its attributes, delete a study) have no
authentication, so the dashboard is read-only unless asked otherwise: every request but GET and
HEAD is refused before it reaches the app. The server binds its port before it says it listens:
a port in use is one line, not a server's traceback.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from optuna.artifacts import FileSystemArtifactStore
from sqlalchemy.engine import URL

from ..errors import UsageError
from .storage import StudyStore

__all__ = ["serve_dashboard", "dashboard_app", "dashboard_server", "READ_METHODS"]

READ_METHODS = ("GET", "HEAD")
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _store(artifacts: Path) -> FileSystemArtifactStore | None:
    return FileSystemArtifactStore(str(artifacts)) if artifacts.is_dir() else None


def read_only(app: WSGIApp) -> WSGIApp:
    """`app` with every request that could change a study refused (405, before the app sees it)."""

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD", "GET").upper() in READ_METHODS:
            return app(environ, start_response)
        body = json.dumps({"reason": "this dashboard is read-only; restart it with --allow-writes to change studies"})
        start_response("405 Method Not Allowed", [("Content-Type", "application/json"), ("Allow", "GET, HEAD")])
        return [body.encode()]

    return guarded


def dashboard_app(store: StudyStore | str | URL | None, artifacts: Path, *, allow_writes: bool = False) -> WSGIApp:
    """The dashboard as a WSGI app (read-only unless `allow_writes`)."""
    from optuna_dashboard import wsgi

    app = wsgi(StudyStore.of(store).storage, artifact_store=_store(artifacts))
    return app if allow_writes else read_only(app)


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


def dashboard_server(store: StudyStore | str | URL | None, *, host: str = "127.0.0.1", port: int = 8080,
                     artifacts: Path = Path("skipsearch-artifacts"), allow_writes: bool = False) -> WSGIServer:
    """The dashboard's server, bound to (host, port) and not yet serving."""
    app = dashboard_app(store, artifacts, allow_writes=allow_writes)
    try:
        return make_server(host, port, app, handler_class=_Quiet)
    except OSError as e:
        if e.errno in (98, 48):  # EADDRINUSE (Linux, macOS)
            raise UsageError(f"port {port} on {host} is in use; give another --port") from None
        if isinstance(e, socket.gaierror) or e.errno in (99, 49):  # unknown host, address not available here
            raise UsageError(f"cannot listen on {host}: {e.strerror or e}; give another --host") from None
        raise


def serve_dashboard(server: WSGIServer) -> None:
    """Serve until interrupted. The server runs in a daemon thread and this one only waits, so
    Ctrl-C or SIGTERM ends the process at once, whatever a request handler is doing."""
    thread = threading.Thread(target=server.serve_forever, name="dashboard", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.5)
    finally:
        server.server_close()
