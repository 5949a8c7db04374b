"""The search service, Optuna-style: this public face, focused faces beside it, private `_modules`.

    configs = StudyConfig.from_preset("demo", nfe=[10])           # one config per NFE, checked
    store = StudyStore.open(url, create=True)                      # the one opened storage
    prepared = prepare_studies(store, configs)                     # create/extend studies (idempotent)
    report = run_worker(store, [c.study_name for c in configs])    # run queued trials until none is left
    summaries = study_summaries(store.storage)                     # what each study has found
    export_schedules(store, "schedules.json")                      # best schedule per study

Beside it: `skipsearch.search.storage` (URLs, masking, database errors), `skipsearch.search.attrs`
(every study and trial attribute) and `skipsearch.search.launch` (a launch's plan and events).
Names are imported on first use, so `skipsearch presets` reads its TOML files without Optuna.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "StudyConfig": "_config",
    "PRESETS": "_presets",
    "SPACES": "_space",
    "SAMPLERS": "_samplers",
    "PRUNERS": "_samplers",
    "StudyStore": "storage",
    "StorageSettings": "storage",
    "prepare_studies": "launch",
    "LaunchPlan": "launch",
    "launch_studies": "launch",
    "run_worker": "_worker",
    "WorkerOptions": "_worker",
    "WorkerReport": "_worker",
    "NodePaths": "_resources",
    "spawn_workers": "_processes",
    "supervise_workers": "_processes",
    "worker_devices": "_processes",
    "study_summaries": "_summary",
    "StudySummary": "_summary",
    "export_schedules": "_export",
    "queue_confirmations": "_confirm",
    "unreadable_studies": "_study",
    "dashboard_server": "_dashboard",
    "serve_dashboard": "_dashboard",
    "Interrupted": "_signals",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'skipsearch.search' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # what type checkers and IDEs see; nothing is imported at run time
    from ._config import StudyConfig
    from ._confirm import queue_confirmations
    from ._dashboard import dashboard_server, serve_dashboard
    from ._export import export_schedules
    from ._presets import PRESETS
    from ._processes import spawn_workers, supervise_workers, worker_devices
    from ._resources import NodePaths
    from ._samplers import PRUNERS, SAMPLERS
    from ._signals import Interrupted
    from ._study import unreadable_studies
    from ._space import SPACES
    from ._summary import StudySummary, study_summaries
    from ._worker import WorkerOptions, WorkerReport, run_worker
    from .launch import LaunchPlan, launch_studies, prepare_studies
    from .storage import StorageSettings, StudyStore
