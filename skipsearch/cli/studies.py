"""`status`, `export`, `dashboard` and `presets`: read what the studies hold."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.table import Table

from ._output import best_lines, confirmed_tables, console, noise_warnings, study_table
from ._options import StorageOpt

if TYPE_CHECKING:
    from ..search import StudyStore

__all__ = ["status", "export", "dashboard", "presets", "print_status"]


def print_status(store: StudyStore, names: list[str] | None = None) -> None:
    from ..search import study_summaries

    summaries = study_summaries(store.storage, names=names)
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
    from ..search import StudyStore, study_summaries, unreadable_studies

    store = StudyStore.open(storage)
    summaries = study_summaries(store.storage)
    foreign = unreadable_studies(store.storage)
    if as_json:
        typer.echo(json.dumps({"storage": store.masked, "studies": [s.to_json() for s in summaries],
                               "unreadable": [{"study": name, "reason": why} for name, why in foreign]}, indent=2))
        return
    if summaries:
        print_status(store)
    elif not foreign:
        console.print(f"no skipsearch studies in {store.masked}; start one with `skipsearch launch`")
    for _, why in foreign:
        console.print(why, style="yellow", highlight=False, soft_wrap=True)


def export(
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="JSON file to write (atomically).")] = None,
    storage: StorageOpt = None,
    model: Annotated[Optional[str], typer.Option(help="Only this model name.")] = None,
    nfe: Annotated[Optional[list[int]], typer.Option(help="Only these NFEs.")] = None,
    family: Annotated[bool, typer.Option("--family", help="Also fit one schedule for every NFE per model, solver "
                                                          "and space studied at two or more NFEs.")] = False,
    sigmas: Annotated[bool, typer.Option("--sigmas", help="Print each schedule's σ list (for k-diffusion, "
                                                          "ComfyUI's custom sigmas, diffusers' sigmas=).")] = False,
) -> None:
    """Write the best schedule of each study as a skipsearch.schedules/v1 file."""
    from ..errors import UsageError
    from ..search import export_schedules

    if output is None:
        if not sigmas:
            raise UsageError("give -o FILE to write the schedules (or --sigmas to print their σ lists)")
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            doc, summaries = export_schedules(storage, Path(tmp) / "schedules.json", model=model, nfe=nfe,
                                              families=family)
    else:
        doc, summaries = export_schedules(storage, output, model=model, nfe=nfe, families=family)
        fams = f" and {len(doc.families)} famil{'y' if len(doc.families) == 1 else 'ies'}" if doc.families else ""
        console.print(f"wrote {output}: {len(doc.entries)} schedule(s){fams}", soft_wrap=True, highlight=False)
    if sigmas:
        for label, values in sigma_lists(doc):
            typer.echo(f"{label}: {', '.join(f'{v:.6g}' for v in values)}")
    for line in noise_warnings(summaries):
        console.print(line, highlight=False, soft_wrap=True)


def sigma_lists(doc: object) -> list[tuple[str, list[float]]]:
    """Each entry's σ list, then each family's at every NFE of its range its solver can take."""
    from ..solvers import get_solver

    out = [(e.label, list(e.sigmas)) for e in doc.entries if e.sigmas]  # type: ignore[attr-defined]
    for fam in doc.families:  # type: ignore[attr-defined]
        spec = get_solver(fam.solver)
        for n in range(fam.nfe_range[0], fam.nfe_range[1] + 1):
            if spec.valid_nfe(n):
                entry = doc.entry(model=fam.model_name, nfe=n, solver=fam.solver)  # type: ignore[attr-defined]
                if entry.study and entry.study.get("family"):
                    out.append((f"{entry.label} (family)", list(entry.sigmas or [])))
    return out


def dashboard(
    storage: StorageOpt = None,
    port: Annotated[int, typer.Option(help="Port to serve on.")] = 8080,
    host: Annotated[str, typer.Option(help="Interface to bind (127.0.0.1: this machine only).")] = "127.0.0.1",
    artifacts: Annotated[Path, typer.Option(help="Artifact folder of the studies.")] = Path("skipsearch-artifacts"),
    allow_writes: Annotated[bool, typer.Option("--allow-writes", help="Let the dashboard change studies (no "
                                                                       "authentication: trusted networks only).")] = False,
) -> None:
    """Serve optuna-dashboard on the same storage and artifact folder (read-only by default)."""
    from ..search import StudyStore, dashboard_server, serve_dashboard

    store = StudyStore.open(storage)  # a missing storage is one line here, not a server error later
    server = dashboard_server(store, host=host, port=port, artifacts=artifacts, allow_writes=allow_writes)
    mode = "read-write" if allow_writes else "read-only"
    console.print(f"optuna-dashboard ({mode}) for {store.masked} on http://{host}:{server.server_port} (Ctrl-C to stop)")
    serve_dashboard(server)


def presets() -> None:
    """List the shipped study presets (use one with `launch --preset NAME`)."""
    from ..search import PRESETS

    table = Table(title="study presets", title_justify="left")
    for column in ("preset", "solver", "NFE", "description"):
        table.add_column(column, overflow="fold")
    for name, preset in PRESETS.items():
        table.add_row(name, str(preset.settings.get("solver", "dpmpp_2m")), " ".join(map(str, preset.nfe)),
                      preset.description)
    console.print(table)
