"""The `skipsearch` command line: thin commands (parse → one library call → print).

Commands are registered here, in the order `--help` lists them: the search first, then the
schedule tools, then the rest. User errors end in one red line and exit code 2 (see `_app`).
"""

from __future__ import annotations

from ._app import app
from .demo import demo_app
from .run import confirm, launch, worker
from .schedules import sample, score, validate
from .studies import dashboard, export, presets, status
from .tools import reference, sites

__all__ = ["app", "main"]

app.command(context_settings={"allow_extra_args": True})(launch)
app.command()(worker)
app.command()(status)
app.command()(export)
app.command()(confirm)
app.command()(validate)
app.command()(score)
app.command()(sample)
app.command()(dashboard)
app.command()(presets)
app.command()(sites)
app.command()(reference)
app.add_typer(demo_app, name="demo", hidden=True)


def main() -> None:
    """Run the app (the console entry point, `skipsearch.entry.main`, first hides a storage password)."""
    try:
        app()
    except KeyboardInterrupt:
        from ._output import err_console

        err_console.print("[yellow]interrupted[/yellow]")
        raise SystemExit(130) from None
