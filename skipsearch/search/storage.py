"""Optuna storage for studies: SQLite on one machine, PostgreSQL for many workers.

One RDBStorage per process, with heartbeats so that a killed worker's trial is failed and retried
by the next worker, and `pool_pre_ping` so idle pooled connections survive database restarts.
URLs are normalised (`postgresql://` → `postgresql+psycopg2://`, since SQLAlchemy 2.1 would pick
psycopg 3) and only ever printed with the password masked.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

__all__ = ["StorageSettings", "resolve_url", "normalize_url", "mask_url", "open_storage", "StorageError", "ENV_VAR"]

ENV_VAR = "SKIPSEARCH_STORAGE"
DEFAULT_URL = "sqlite:///skipsearch.db"
_PG_SCHEMES = ("postgresql://", "postgres://")


class StorageError(ValueError):
    """A storage URL that cannot be used."""


@dataclass(frozen=True)
class StorageSettings:
    heartbeat_interval: int = 60
    grace_period: int = 300
    max_retry: int = 3


def resolve_url(url: str | None = None) -> str:
    """--storage, else $SKIPSEARCH_STORAGE, else an SQLite file in the current folder."""
    return normalize_url(url or os.environ.get(ENV_VAR) or DEFAULT_URL)


def normalize_url(url: str) -> str:
    url = url.strip()
    for scheme in _PG_SCHEMES:
        if url.startswith(scheme):
            return "postgresql+psycopg2://" + url[len(scheme):]
    if not re.match(r"^[a-z][a-z0-9+]*://", url):
        raise StorageError(
            f"storage {mask_url(url)!r} is not a database URL; use e.g. sqlite:///skipsearch.db or "
            "postgresql://user:password@host/dbname"
        )
    return url


def mask_url(url: str) -> str:
    """The URL with any password replaced by ***."""
    return re.sub(r"(://[^:/@]*:)[^/]*@", r"\1***@", url)


def open_storage(url: str | None = None, settings: StorageSettings = StorageSettings()) -> RDBStorage:
    url = resolve_url(url)
    engine_kwargs: dict = {}
    if url.startswith("postgresql"):
        engine_kwargs = {"pool_pre_ping": True, "pool_size": 2, "max_overflow": 2}
    elif url.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": 60}}
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    try:
        return RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=settings.heartbeat_interval,
            grace_period=settings.grace_period,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=settings.max_retry),
        )
    except ImportError as e:
        raise StorageError(f"cannot open {mask_url(url)}: missing database driver ({e})") from None
    except Exception as e:  # SQLAlchemy/driver errors carry the URL; never echo a password
        detail = mask_url(str(e).strip().splitlines()[0]) if str(e).strip() else type(e).__name__
        raise StorageError(f"cannot open storage {mask_url(url)}: {detail}") from None


def quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
