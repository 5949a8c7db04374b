"""The `skipsearch` command line: thin commands (parse → one library call → print).

Commands are registered here, in the order `--help` lists them: the search first, then the
schedule tools, then the rest. User errors end in one red line and exit code 2 (see `_app`).
"""

from __future__ import annotations

import os
import sys

from ._app import app
from .demo import demo_app
from .run import launch, worker
from .schedules import sample, score, validate
from .studies import dashboard, export, presets, status
from .tools import reference, sites

__all__ = ["app", "main"]

app.command(context_settings={"allow_extra_args": True})(launch)
app.command()(worker)
app.command()(status)
app.command()(export)
app.command()(validate)
app.command()(score)
app.command()(sample)
app.command()(dashboard)
app.command()(presets)
app.command()(sites)
app.command()(reference)
app.add_typer(demo_app, name="demo", hidden=True)


def _move_password_to_environment(argv: list[str]) -> None:
    """`--storage URL` with a password would sit in `ps` for the whole run: re-exec with the URL in
    $SKIPSEARCH_STORAGE instead (it is visible only for the moment before this re-exec)."""
    from ..search import ENV_VAR, parse_url
    from ..errors import StorageError

    for i, arg in enumerate(argv):
        if arg == "--storage" and i + 1 < len(argv):
            value, rest = argv[i + 1], argv[:i] + argv[i + 2 :]
        elif arg.startswith("--storage="):
            value, rest = arg.split("=", 1)[1], argv[:i] + argv[i + 1 :]
        else:
            continue
        try:
            has_password = bool(parse_url(value).password)
        except StorageError:
            return
        if has_password:
            os.execve(sys.executable, [sys.executable, "-m", "skipsearch", *rest], dict(os.environ, **{ENV_VAR: value}))
        return


def main() -> None:
    _move_password_to_environment(sys.argv[1:])
    try:
        app()
    except KeyboardInterrupt:
        from ._output import err_console

        err_console.print("[yellow]interrupted[/yellow]")
        raise SystemExit(130) from None
