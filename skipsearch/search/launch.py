"""`launch`: validate, create the studies, run local workers and follow them to the end.

Everything a launch needs (checkpoint, skip sites, features, reference and their dimensions) is
checked before the storage is touched, so a bad launch leaves nothing behind. What happens is
reported as events to one callback (the CLI draws them as a live table or plain lines); a signal
stops the workers, which hand their trials back, and no worker outlives its launch.
"""

from __future__ import annotations

import dataclasses
import datetime
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import URL

from ..errors import StudyError, UsageError
from ..scoring import make_scorer
from ..prompts import Prompts, read_prompts
from ..target import Target, load_target
from ._config import StudyConfig
from ._confirm import confirmation_pending, warm_points
from ._processes import WorkerProcess, spawn_workers, stop_workers
from ._signals import Interrupted, checkpoint, signals_interrupt
from ._study import Prepared, counts_toward_budget, load_study, prepare_study
from ._summary import StudySummary, summarize
from .attrs import REASON_ATTR, SAMPLES_ATTR, SECONDS_ATTR, SIGMAS_ATTR, SITE_INFO_ATTR
from .storage import StorageSettings, StudyStore

__all__ = [
    "prepare_studies",
    "LaunchPlan",
    "Launched",
    "StudiesReady",
    "WorkersStarted",
    "Notice",
    "WatchState",
    "TrialEvent",
    "launch_studies",
    "watch",
]


def _checked(configs: Sequence[StudyConfig]) -> list[tuple[StudyConfig, Target]]:
    """Each config with its network loaded and every file it names checked (and fingerprinted)."""
    targets: dict[tuple[str, object], Target] = {}

    def target_of(source: str, prompts: Prompts | None = None) -> Target:
        key = (source, prompts.key if prompts is not None else None)
        if key not in targets:
            targets[key] = load_target(source, prompts=prompts)
            targets[key].check_finite()
        return targets[key]

    ready = []
    for config in configs:
        prompts = None
        if config.prompts:  # two of them show the pipeline works; the workers embed them all
            every = read_prompts(config.prompts, config.negative_prompt)
            prompts = dataclasses.replace(every, texts=every.texts[:2])
        target = target_of(config.checkpoint, prompts)
        overrides: dict[str, object] = {"checkpoint_sha256": target.sha256}
        if config.guide:
            guide = target_of(config.guide)
            if config.tune_guide and len(guide.sites) != len(target.sites):
                raise UsageError(f"--tune-guide needs the guide to have the main network's {len(target.sites)} skip "
                                 f"sites; {config.guide} has {len(guide.sites)}")
            overrides["guide_sha256"] = guide.sha256
        if target.latent or config.vae:
            target.decoder(config.vae)  # the VAE a latent network needs (and only one): found and loadable
        scorer = make_scorer(target.net, config.features, config.reference, features_weights=config.features_weights,
                             report=config.report_features)
        overrides["reference_sha256"] = scorer.reference.sha256
        ready.append((config.with_overrides(**overrides), target))
    return ready


def prepare_studies(
    store: StudyStore | str | URL | None,
    configs: Sequence[StudyConfig],
    settings: StorageSettings = StorageSettings(),
) -> list[Prepared]:
    """Check each config against its network and reference, then create (or extend) its study.
    A URL is opened (and created) only once every config has passed."""
    ready = _checked(configs)
    return _prepare(store if isinstance(store, StudyStore) else StudyStore.open(store, settings, create=True), ready)


def _prepare(store: StudyStore, ready: Sequence[tuple[StudyConfig, Target]]) -> list[Prepared]:
    prepared = []
    for config, target in ready:
        describe = {SITE_INFO_ATTR: target.site_info(), SIGMAS_ATTR: target.sigmas(config.recipe())}
        warm = store(warm_points, store.storage, config)
        p = store(prepare_study, store, config, target.sites, describe, warm)
        if p.complete and store(confirmation_pending, store.storage, p.study, p.config):
            p = dataclasses.replace(p, complete=False)  # the search is done, its confirmation is not: workers finish it
        prepared.append(p)
    return prepared


# -- following a launch --------------------------------------------------------------------------


@dataclass(frozen=True)
class TrialEvent:
    """A trial that finished since the last look."""

    study: str
    number: int
    outcome: str  # complete, pruned, failed
    value: float | None
    best: float | None
    params: dict[str, float]
    seconds: float | None
    samples: int | None
    reason: str | None


@dataclass(frozen=True)
class WatchState:
    summaries: list[StudySummary]
    exit_codes: list[int | None]  # None: still running
    events: list[TrialEvent]
    elapsed: float


def _events(study_name: str, trials: Sequence[FrozenTrial], seen: set[tuple[str, int]]) -> list[TrialEvent]:
    events = []
    best: float | None = None
    for t in sorted(trials, key=lambda t: (t.datetime_complete or datetime.datetime.max, t.number)):
        if t.state == TrialState.COMPLETE and t.value is not None:
            best = t.value if best is None else min(best, t.value)
        if (study_name, t.number) in seen or not counts_toward_budget(t):
            continue
        seen.add((study_name, t.number))
        outcome = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned"}.get(t.state, "failed")
        value = t.value if t.state == TrialState.COMPLETE else (
            t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None)
        events.append(TrialEvent(study_name, t.number, outcome, value, best, dict(t.params),
                                 t.user_attrs.get(SECONDS_ATTR), t.user_attrs.get(SAMPLES_ATTR),
                                 t.user_attrs.get(REASON_ATTR)))
    return events


def watch(store: StudyStore, names: Sequence[str], workers: Sequence[WorkerProcess],
          interval: float = 2.0) -> Iterator[WatchState]:
    """Every `interval` seconds: the studies' summaries, the workers' exit codes and the trials
    that finished since the last look. Ends once every worker has exited. An unreachable database
    is waited out (and said once through the store's log)."""
    seen: set[tuple[str, int]] = set()
    start = time.monotonic()

    def look(name: str) -> tuple[StudySummary, list[TrialEvent]]:
        study, config = load_study(store.storage, name)
        trials = study.get_trials(deepcopy=False)
        return summarize(study, config, trials), _events(name, trials, seen)

    while True:
        summaries, events = [], []
        for name in names:
            summary, new = store(look, name)
            summaries.append(summary)
            events.extend(new)
        codes = [w.process.poll() for w in workers]
        yield WatchState(summaries, codes, events, time.monotonic() - start)
        if all(code is not None for code in codes):
            return
        _wait_for_exit(workers, interval)


def _wait_for_exit(workers: Sequence[WorkerProcess], seconds: float) -> None:
    """Sleep `seconds`, but wake as soon as the last worker exits (the final table comes at once)."""
    deadline = time.monotonic() + seconds
    for w in workers:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        try:
            w.process.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            return


# -- the launch as one call ----------------------------------------------------------------------


@dataclass(frozen=True)
class LaunchPlan:
    """What to launch: one config per study, the devices to run local workers on (none: only
    create the studies), and how workers run."""

    configs: Sequence[StudyConfig]
    devices: Sequence[str] = ()
    settings: StorageSettings = field(default_factory=StorageSettings)
    compile: bool = False
    interval: float = 2.0  # seconds between looks at the studies


@dataclass(frozen=True)
class StudiesReady:
    storage: str  # the storage URL, password masked
    prepared: list[Prepared]

    @property
    def complete(self) -> bool:
        return all(p.complete for p in self.prepared)


@dataclass(frozen=True)
class WorkersStarted:
    workers: list[WorkerProcess]
    log_dir: Path


@dataclass(frozen=True)
class Notice:
    """Something the storage layer wants said (an outage, the end of one)."""

    message: str


@dataclass(frozen=True)
class Launched:
    """How a launch ended: the studies, and each local worker's exit code."""

    store: StudyStore
    prepared: list[Prepared]
    workers: list[WorkerProcess] = field(default_factory=list)
    exit_codes: list[int | None] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [p.config.study_name for p in self.prepared]

    def raise_for_workers(self) -> None:
        """A worker that failed ends the launch in one line: what it said last."""
        for w, code in zip(self.workers, self.exit_codes):
            if code not in (0, None):
                said = w.last_line() or f"see {w.log}"
                raise StudyError(f"worker {w.index} exited with code {code}: {said}")


LaunchEvent = StudiesReady | WorkersStarted | WatchState | Notice


def launch_studies(where: StudyStore | str | URL | None, plan: LaunchPlan,
                   on_event: Callable[[LaunchEvent], None] = lambda event: None) -> Launched:
    """Create (or extend) the plan's studies, run local workers until their budgets are met, and
    report what happens to `on_event`. SIGTERM or SIGINT stops the workers (their running trials
    are re-queued) and raises `Interrupted`."""
    ready = _checked(plan.configs)  # before the storage is touched
    notice = lambda message: on_event(Notice(message))  # noqa: E731
    store = where if isinstance(where, StudyStore) else StudyStore.open(where, plan.settings, create=True, log=notice)
    prepared = _prepare(store, ready)
    ready_event = StudiesReady(store.masked, prepared)
    on_event(ready_event)
    if ready_event.complete or not plan.devices:
        return Launched(store, prepared)
    names = [p.config.study_name for p in prepared]
    log_dir = Path(prepared[0].config.artifacts) / "logs"
    workers = spawn_workers(store, names, plan.devices, log_dir, compile=plan.compile)
    on_event(WorkersStarted(workers, log_dir))
    codes: list[int | None] = [None] * len(workers)
    with signals_interrupt():
        try:
            for state in watch(store, names, workers, plan.interval):
                codes = state.exit_codes
                on_event(state)
                checkpoint()
        except Interrupted as stop:
            stop_workers(workers)
            raise stop.noted(f"{stop}: stopped the workers; their running trials are re-queued") from None
        finally:
            stop_workers(workers)  # never leave a worker behind, whatever ended the watch
    return Launched(store, prepared, workers, codes)
