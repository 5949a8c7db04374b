"""`status`, `export`, `dashboard` and `presets`: read what the studies hold."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..search import (
    PRESETS,
    StorageSettings,
    export_schedules,
    mask_url,
    open_storage,
    resolve_url,
    serve_dashboard,
    study_summaries,
)
from ._output import best_lines, confirmed_tables, console, noise_warnings, study_table
from ._options import StorageOpt

__all__ = ["status", "export", "dashboard", "presets", "print_status"]


def print_status(storage: object, names: list[str] | None = None) -> None:
    summaries = study_summaries(open_storage(resolve_url(storage), StorageSettings()), names=names)  # type: ignore[arg-type]
    console.print(study_table(summaries))
    for table in confirmed_tables(summaries):
        console.print(table)
    for line in best_lines(summaries) + noise_warnings(summaries):
        console.print(line, highlight=False, soft_wrap=True)
    for s in summaries:
        for reason in s.fail_reasons:
            console.print(f"{s.name}: {s.failed} failed trial(s): {reason}", highlight=False, soft_wrap=True)


def status(
    storage: StorageOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show every study: trials, baseline vs best proxy FID, FID change, best parameters."""
    url = resolve_url(storage)
    summaries = study_summaries(open_storage(url, StorageSettings()))
    if as_json:
        typer.echo(json.dumps({"storage": mask_url(url), "studies": [s.to_json() for s in summaries]}, indent=2))
        return
    if not summaries:
        console.print(f"no skipsearch studies in {mask_url(url)}; start one with `skipsearch launch`")
        return
    print_status(url)


def export(
    output: Annotated[Path, typer.Option("-o", "--output", help="JSON file to write (atomically).")],
    storage: StorageOpt = None,
    model: Annotated[Optional[str], typer.Option(help="Only this model name.")] = None,
    nfe: Annotated[Optional[list[int]], typer.Option(help="Only these NFEs.")] = None,
) -> None:
    """Write the best schedule of each study as a skipsearch.schedules/v1 file."""
    doc, summaries = export_schedules(storage, output, model=model, nfe=nfe)
    console.print(f"wrote {output}: {len(doc.entries)} schedule(s)")
    for line in noise_warnings(summaries):
        console.print(line, highlight=False, soft_wrap=True)


def dashboard(
    storage: StorageOpt = None,
    port: Annotated[int, typer.Option(help="Port to serve on.")] = 8080,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    artifacts: Annotated[Path, typer.Option(help="Artifact folder of the studies.")] = Path("skipsearch-artifacts"),
) -> None:
    """Serve optuna-dashboard on the same storage and artifact folder."""
    url = resolve_url(storage)
    open_storage(url, StorageSettings())  # a missing storage is one line here, not a server error later
    console.print(f"optuna-dashboard for {mask_url(url)} on http://{host}:{port} (Ctrl-C to stop)")
    serve_dashboard(url, host=host, port=port, artifacts=artifacts)


def presets() -> None:
    """List the shipped study presets (use one with `launch --preset NAME`)."""
    table = Table(title="study presets", title_justify="left")
    for column in ("preset", "solver", "NFE", "description"):
        table.add_column(column, overflow="fold")
    for name, preset in PRESETS.items():
        nfe = preset.settings.get("nfe", [10])
        table.add_row(name, str(preset.settings.get("solver", "dpmpp_2m")),
                      " ".join(map(str, nfe if isinstance(nfe, list) else [nfe])), preset.description)
    console.print(table)
