"""How the CLI talks to a person: consoles, the study table that fits any width, progress.

In a terminal: rich tables, live progress and bars. Without one (a pipe, a log file, a CI job):
plain lines, one per event, so a log shows what happened and when.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.measure import Measurement
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from ..changes import format_change

if TYPE_CHECKING:
    from ..search import StudySummary
    from ..search.launch import TrialEvent

__all__ = [
    "confirmed_tables",
    "console",
    "err_console",
    "interactive",
    "study_table",
    "best_lines",
    "noise_warnings",
    "running_lines",
    "progress_bar",
    "fmt",
    "duration",
    "event_line",
    "LaunchView",
]

console = Console(highlight=False)
if not console.is_terminal and not os.environ.get("COLUMNS"):  # piped: no 80-column default, unless asked
    console = Console(width=120, highlight=False)
err_console = Console(stderr=True, highlight=False)


def interactive() -> bool:
    return console.is_terminal and not console.is_dumb_terminal


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "—" if value is None else format(value, spec)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _change_cell(s: StudySummary) -> Text:
    text = format_change(s.change) + ("✓" if s.confirmed and s.change_significant else "")
    if s.change is None:
        return Text(text)
    if s.change_significant is False:
        return Text(text + "*", style="yellow")
    return Text(text, style="green" if s.change < 0 else "")


def _study_cell(s: StudySummary, split: bool = False) -> Text:
    """The study's name (on two lines, model / solver and NFE, where width is short), then `done`."""
    name = s.name.replace("/", "/\n", 1) if split else s.name
    return Text(name) + Text("  done", style="dim") if s.done else Text(name)


# Columns in the order they are dropped when the terminal is too narrow for all of them even in the
# compact layout: the FID change is the headline.
_COLUMNS: list[tuple[str, str, Callable[[StudySummary], RenderableType]]] = [
    ("study", "left", _study_cell),
    ("FID change", "right", _change_cell),
    ("best", "right", lambda s: fmt(s.best)),
    ("baseline", "right", lambda s: fmt(s.baseline)),
    ("trials", "right", lambda s: f"{s.finished}/{s.budget}"),
    ("run", "right", lambda s: str(s.running)),
    ("pruned", "right", lambda s: str(s.pruned)),
    ("failed", "right", lambda s: str(s.failed)),
]
_DROP_ORDER = ["run", "baseline", "failed", "pruned", "trials", "best"]


def _build(summaries: Sequence[StudySummary], columns: list, title: str | None, *, compact: bool = False,
           split: bool = False, study_width: int | None = None) -> Table:
    table = Table(title=title, title_justify="left",
                  **(dict(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=0) if compact else {}))
    for name, justify, _ in columns:
        table.add_column(name, justify=justify, no_wrap=True, overflow="ellipsis",  # type: ignore[arg-type]
                         max_width=study_width if name == "study" else None)
    for s in summaries:
        table.add_row(*((_study_cell(s, split) if name == "study" else cell(s)) for name, _, cell in columns))
    return table


def _width(table: Table) -> int:
    return Measurement.get(console, console.options.update(width=10_000), table).maximum


def study_table(summaries: Sequence[StudySummary], title: str | None = None, width: int | None = None) -> Table:
    """The studies' table at any width: the full table; else a compact one (no side borders), with
    long study names on two lines; only then are the least important columns dropped, and the study
    name shortened last. The FID change always shows."""
    width = width or console.width
    for compact, split in ((False, False), (True, False), (True, True)):
        table = _build(summaries, _COLUMNS, title, compact=compact, split=split)
        if _width(table) <= width:
            return table
    columns = list(_COLUMNS)
    while True:
        table = _build(summaries, columns, title, compact=True, split=True)
        needed = _width(table)
        if needed <= width:
            return table
        droppable = [c for c in columns if c[0] in _DROP_ORDER]
        if not droppable:
            break
        columns.remove(min(droppable, key=lambda c: _DROP_ORDER.index(c[0])))
    longest = max([len("study")] + [len(line) for s in summaries for line in _study_cell(s, True).plain.splitlines()])
    return _build(summaries, columns, title, compact=True, split=True, study_width=max(8, longest - (needed - width)))


def _interval(pair: tuple[float, float] | None, spec: str = ".2f") -> str:
    return "" if pair is None else f" [{format(pair[0], spec)}, {format(pair[1], spec)}]"


def _change_interval(pair: tuple[float, float] | None) -> str:
    """A gain interval shown as FID changes: [−49%, −43%] for a gain of 0.43..0.49."""
    if pair is None:
        return ""
    return f" [{format_change(-pair[1])}, {format_change(-pair[0])}]"


def sigma_extremes(sigmas: Sequence[float] | None) -> str:
    """A σ list by its ends, the part a steps search moves: "σ 80, 42.4 … 0.0213, 0.002"."""
    values = [v for v in sigmas or () if v > 0]
    shown = [f"{v:.3g}" for v in values]
    if len(shown) > 4:
        shown = shown[:2] + ["…"] + shown[-2:]
    return "σ " + ", ".join(shown).replace(", …,", " …") if shown else ""


def _confirmed_table(s: StudySummary, layout: int) -> Table:
    """layout 0: one line per schedule; 1: intervals on a second line; 2: that, without side borders."""
    c = s.confirmation
    assert c is not None
    state = "" if c.done else f"; {c.state}"
    compact = dict(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0)) if layout == 2 else {}
    caption = (f"{c.passed_over} more of the best by search score not confirmed: worse than the baseline "
               "beyond its seed noise") if c.passed_over else None
    table = Table(title=f"{s.name}: confirmed on held-out seeds {c.seeds[0]}..{c.seeds[1]} ({c.samples} samples{state})",
                  title_justify="left", caption=caption, caption_justify="left", **compact)
    gap = "\n" if layout else " "
    for column, justify in (("schedule", "left"), ("search", "right"), ("held-out FID [95%]", "right"),
                            ("FID change [95%]", "right")):
        table.add_column(column, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    steps = "steps" in s.config.space.split("+")  # a steps space: each schedule's σ list is its own
    for r in c.rows:
        label = f"trial {r.source_trial}{gap}({r.kind})" + (f"{gap}{sigma_extremes(r.sigmas)}" if steps else "")
        change = "—" if r.gain is None else format_change(-r.gain) + gap + _change_interval(r.gain_interval).lstrip()
        style = "" if r.significant is None else ("green" if r.significant and (r.gain or 0) > 0 else "yellow")
        table.add_row(label, fmt(r.search_value),
                      fmt(r.value) + gap + _interval(r.interval).lstrip(), Text(change.rstrip(), style=style))
    return table


def confirmed_tables(summaries: Sequence[StudySummary], width: int | None = None) -> list[Table]:
    """Per confirmed study: the baseline and the re-scored schedules on held-out seeds, with 95%
    bootstrap intervals (the gain's paired over samples). Where a line would not fit, the intervals
    go on a second line of each row: numbers are never cut."""
    width = width or console.width
    tables = []
    for s in summaries:
        if s.confirmation is None or not s.confirmation.rows:
            continue
        for layout in range(3):
            table = _confirmed_table(s, layout)
            if _width(table) <= width:
                break
        tables.append(table)
    return tables


def best_lines(summaries: Sequence[StudySummary]) -> list[str]:
    lines = []
    for s in summaries:
        if s.confirmed:
            best = s.confirmation.best  # type: ignore[union-attr]
            base = s.confirmation.baseline  # type: ignore[union-attr]
            params = " ".join(f"{k}={v:.3g}" for k, v in best.params.items())
            verdict = "" if best.significant else " — NOT significant: the gain's interval includes 0"
            base_text = f"FID {base.value:.2f} → " if base is not None else ""
            lines.append(f"{s.name}: confirmed best trial {best.source_trial}: {base_text}{best.value:.2f} held-out "
                         f"(FID {format_change(-(best.gain or 0.0))}{_change_interval(best.gain_interval)}); "
                         f"{params}{verdict}")
            continue
        if s.best_trial is None:
            continue
        params = " ".join(f"{k}={v:.3g}" for k, v in s.best_params.items())
        rate = f", {s.images_per_s:.0f} img/s" if s.images_per_s else ""
        change = f" (FID {format_change(s.change)})" if s.change is not None else ""
        label = "best trial" if s.confirmation is None else f"best by search score (confirmation {s.confirmation.state})"
        lines.append(f"{s.name}: {label} {s.best_trial}: FID {fmt(s.baseline)} → {fmt(s.best)}{change}; {params}{rate}")
    return lines


def noise_warnings(summaries: Sequence[StudySummary]) -> list[str]:
    """Say plainly when the best schedule's gain is not established: its confirmed gain interval
    includes 0, or (before confirmation) it is within the proxy's seed noise."""
    out = []
    for s in summaries:
        if s.baseline_note is not None and s.finished:
            out.append(f"* {s.name}: {s.baseline_note}.")
        if s.confirmed and s.change_significant is False:
            out.append(f"* {s.name}: on held-out seeds the best schedule's gain is not significant (its 95% interval "
                       "includes 0); treat it as no gain.")
        elif not s.confirmed and s.significant is False and s.noise is not None:
            out.append(f"* {s.name}: the best trial does not beat the baseline by more than the proxy's seed noise "
                       f"(±{s.noise:.2f} FID); treat it as no gain.")
    return out


def running_lines(summaries: Sequence[StudySummary]) -> list[str]:
    lines = []
    for s in summaries:
        for r in s.running_trials:
            bar = f"{r.samples_done}/{r.samples_total} samples"
            lines.append(f"  {s.name} trial {r.number}: {bar}, {duration(r.seconds)}")
        eta = s.eta_seconds()
        if not s.done and eta is not None:
            lines.append(f"  {s.name}: about {duration(eta)} to go")
    return lines


def live_view(summaries: Sequence[StudySummary], elapsed: float) -> RenderableType:
    parts: list[RenderableType] = [study_table(summaries, title=f"search ({duration(elapsed)})")]
    lines = running_lines(summaries)
    if lines:
        parts.append(Text("\n".join(lines), style="dim"))
    return Group(*parts)


@contextmanager
def progress_bar(enabled: bool) -> Iterator[Callable[[str, int, int], None]]:
    """A `(label, done, total)` callback: a rich bar per label in a terminal, plain lines otherwise."""
    if enabled:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TimeRemainingColumn(), console=console, transient=True) as bar:
            tasks: dict[str, int] = {}

            def update(label: str, done: int, total: int) -> None:
                if label not in tasks:
                    tasks[label] = bar.add_task(label, total=total)
                bar.update(tasks[label], completed=done)

            yield update
        return
    last: dict[str, float] = {}

    def plain(label: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - last.get(label, 0.0) >= 10.0:
            last[label] = now
            console.print(f"{label}: {done}/{total} samples")

    yield plain


def event_line(event: TrialEvent) -> str:
    """One finished trial as a log line: `NAME trial 7 complete: FID 13.25 (best 13.25) rho_top=0.3 ... 3 s`."""
    if event.outcome == "failed":
        return f"{event.study} trial {event.number} failed: {event.reason or 'no reason recorded'}"
    best = f" (best {event.best:.2f})" if event.best is not None else ""
    params = " ".join(f"{k}={v:.3g}" for k, v in event.params.items())
    seconds = f" {event.seconds:.0f} s" if event.seconds is not None else ""
    at = f" at {event.samples} samples" if event.outcome == "pruned" and event.samples else ""
    value = f"FID {event.value:.2f}{at}" if event.value is not None else "no value"
    return f"{event.study} trial {event.number} {event.outcome}: {value}{best} {params}{seconds}"


class LaunchView:
    """What `launch` shows of its events: the studies it created or joined, its workers, then a live
    table in a terminal (one plain line per finished trial without one)."""

    def __init__(self) -> None:
        self.live: Live | None = None

    def __enter__(self) -> LaunchView:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def __call__(self, event: Any) -> None:
        from ..search.launch import Notice, StudiesReady, WatchState, WorkersStarted

        if isinstance(event, StudiesReady):
            console.print(f"storage {event.storage}")
            for p in event.prepared:
                what = "created" if p.created else "joined"
                extra = f", budget raised from {p.previous_budget} to {p.budget} trials" if p.previous_budget else ""
                console.print(f"{what} study {p.config.study_name} ({p.budget} trials{extra})")
                for key, stored, given in p.kept:
                    console.print(f"  it keeps its {key} {stored!r} (you gave {given!r}): a study's settings are "
                                  "fixed when it is created", highlight=False, soft_wrap=True)
        elif isinstance(event, WorkersStarted):
            devices = ", ".join(w.device for w in event.workers)
            console.print(f"{len(event.workers)} worker(s) on {devices}; logs in {event.log_dir}")
            if interactive():
                self.live = Live(console=console, refresh_per_second=2, transient=True)
                self.live.start()
        elif isinstance(event, WatchState):
            out = self.live.console if self.live is not None else console
            for trial in event.events:
                out.print(event_line(trial), highlight=False, soft_wrap=True)
            if self.live is not None:
                self.live.update(live_view(event.summaries, event.elapsed))
        elif isinstance(event, Notice):
            err_console.print(event.message, style="yellow", highlight=False, soft_wrap=True)
