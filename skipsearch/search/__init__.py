"""The search service, Optuna-style: this public face, private `_modules` behind it.

    configs = StudyConfig.from_preset("demo", nfe=[10])          # one config per NFE, checked
    prepared = prepare_studies(url, configs)                      # create/extend studies (idempotent)
    report = run_worker(url, [c.study_name for c in configs])     # run queued trials until none is left
    summaries = study_summaries(open_storage(url))                # what each study has found
    export_schedules(url, "schedules.json")                       # best schedule per study, v1 JSON
"""

from ._config import PRESETS, Preset, StudyConfig
from ._confirm import Confirmation, ConfirmedRow, confirm_name, queue_confirmations, summarize_confirmation
from ._dashboard import dashboard_app, serve_dashboard
from ._export import export_schedules, schedule_entry
from ._launch import (
    TrialEvent,
    WatchState,
    WorkerProcess,
    finished_trial_events,
    prepare_studies,
    spawn_workers,
    stop_workers,
    watch,
    worker_devices,
)
from ._notes import study_note, update_study_note
from ._samplers import PRUNERS, SAMPLERS
from ._space import SPACES, Space
from ._storage import (
    DATABASE_ERRORS,
    DEFAULT_URL,
    ENV_VAR,
    StorageSettings,
    mask_url,
    open_storage,
    parse_url,
    redact,
    resolve_url,
    describe_database_error,
    storage_lock,
)
from ._study import KIND_ATTR, Prepared, counts_toward_budget, load_study, prepare_study
from ._summary import RunningTrial, StudySummary, format_change, study_summaries, summarize
from ._worker import Interrupted, WorkerIdentity, WorkerReport, run_worker, signals_interrupt

__all__ = [
    "StudyConfig",
    "Confirmation",
    "ConfirmedRow",
    "confirm_name",
    "queue_confirmations",
    "summarize_confirmation",
    "Preset",
    "PRESETS",
    "SPACES",
    "Space",
    "SAMPLERS",
    "PRUNERS",
    "StorageSettings",
    "DATABASE_ERRORS",
    "ENV_VAR",
    "DEFAULT_URL",
    "parse_url",
    "resolve_url",
    "mask_url",
    "redact",
    "open_storage",
    "storage_lock",
    "describe_database_error",
    "Prepared",
    "prepare_study",
    "prepare_studies",
    "load_study",
    "counts_toward_budget",
    "KIND_ATTR",
    "worker_devices",
    "spawn_workers",
    "watch",
    "stop_workers",
    "WorkerProcess",
    "WatchState",
    "TrialEvent",
    "finished_trial_events",
    "run_worker",
    "WorkerReport",
    "WorkerIdentity",
    "Interrupted",
    "signals_interrupt",
    "StudySummary",
    "RunningTrial",
    "summarize",
    "study_summaries",
    "format_change",
    "study_note",
    "update_study_note",
    "export_schedules",
    "schedule_entry",
    "serve_dashboard",
    "dashboard_app",
]
