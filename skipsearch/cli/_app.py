"""The Typer app and its one error boundary.

Every `SkipsearchError` (and a file-system error) raised under any command ends here as one red
line and exit code 2 — never a traceback — with any storage password redacted; a signal that
stopped the work (`Interrupted`) ends as one yellow line saying what became of it, and exit code
128 + the signal. Nothing heavy is imported here: `--help` and one-line errors stay fast.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import typer
from rich.markup import escape
from typer._click.exceptions import NoArgsIsHelpError, UsageError
from typer.core import TyperGroup

from ..errors import SkipsearchError
from ..search._signals import Interrupted
from ._output import err_console

__all__ = ["app", "fail", "remember_storage"]

_STORAGE_URLS: list[str] = []  # URLs this invocation was given, to redact from any message
ENV_VAR = "SKIPSEARCH_STORAGE"


def remember_storage(url: str | None) -> str | None:
    if url:
        _STORAGE_URLS.append(url)
    return url


def _redact(message: str) -> str:
    urls = [url for url in (*_STORAGE_URLS, os.environ.get(ENV_VAR)) if url]
    if not urls:
        return message
    from ..search.storage import redact  # parsing a URL needs SQLAlchemy: only when there is one

    for url in urls:
        message = redact(message, url)
    return message


def fail(message: str, code: int = 2) -> typer.Exit:
    text = " ".join(_redact(message).split())  # one line, whatever the message held
    err_console.print(f"[bold red]error:[/bold red] {escape(text)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


class _ErrorBoundary(TyperGroup):
    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except UsageError as e:
            if isinstance(e, NoArgsIsHelpError):
                raise
            command = e.ctx.command_path if e.ctx is not None else "skipsearch"
            raise fail(f"{e.format_message()} (see `{command} --help`)") from None
        except SkipsearchError as e:
            raise fail(str(e)) from None
        except Interrupted as stop:
            err_console.print(stop.note or f"stopped by {stop}", style="yellow", highlight=False, soft_wrap=True)
            raise typer.Exit(128 + stop.signum) from None
        except (PermissionError, IsADirectoryError, NotADirectoryError, FileNotFoundError) as e:
            where = f": {e.filename}" if e.filename else ""
            raise fail(f"{e.strerror or e}{where}") from None
        except OSError as e:
            if e.errno is None:
                raise
            raise fail(f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "")) from None
        except RecursionError:
            raise fail("input nested too deeply to read") from None
        except Exception as e:
            if "sqlalchemy" in sys.modules:  # a database error needs a database layer that was imported
                from ..search.storage import DATABASE_ERRORS, describe_database_error

                if isinstance(e, DATABASE_ERRORS):
                    raise fail(describe_database_error(e)) from None
            raise


app = typer.Typer(
    name="skipsearch",
    cls=_ErrorBoundary,
    help="Search skip-coefficient schedules (Skip-Tuning) for few-step sampling of diffusion UNets (EDM, EDM2, diffusers).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)
