"""Optuna storage for studies: SQLite on one machine, PostgreSQL for many workers.

`StudyStore` is the one opened storage every layer is handed: its URL, the Optuna storage, the
call that rides out outages, the cross-process lock and the settings, opened once per process.

- URLs are parsed with SQLAlchemy (`postgresql://` → `postgresql+psycopg2://`, since SQLAlchemy
  2.1 would pick psycopg 3) and only ever shown through `mask_url`; any text that may carry a
  password (driver errors) goes through `redact`. A password may hold `/`, `@` or `:` as typed.
- Read-only commands open with `create=False`: a missing SQLite file or an empty database is a
  clear error, never a new file.
- `storage_lock` serialises study creation across processes and machines (an flock on an SQLite
  file's folder, an advisory lock on PostgreSQL), so concurrent launches create each study once.
- `Retrying` rides out a database outage with bounded exponential backoff.
"""

from __future__ import annotations

import fcntl
import gc
import hashlib
import logging
import os
import re
import sqlite3
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import optuna
import sqlalchemy as sa
from optuna.storages import RDBStorage
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from ..errors import StorageError, UsageError

__all__ = [
    "StudyStore",
    "StorageSettings",
    "open_storage",
    "resolve_url",
    "mask_url",
    "redact",
    "ENV_VAR",
    "DEFAULT_URL",
    "DATABASE_ERRORS",
    "describe_database_error",
]

ENV_VAR = "SKIPSEARCH_STORAGE"
DEFAULT_URL = "sqlite:///skipsearch.db"
_DRIVERS = {"postgresql": "postgresql+psycopg2", "postgres": "postgresql+psycopg2"}
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+]*)://(.*)$", re.DOTALL)
T = TypeVar("T")
# What a damaged, locked or vanished database raises, whichever layer reports it.
DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    optuna.exceptions.StorageInternalError, sa.exc.SQLAlchemyError, sqlite3.DatabaseError,
)


class StorageUnavailable(StorageError):
    """The database did not answer, or had no connection left: an outage, worth waiting out."""


@dataclass(frozen=True)
class StorageSettings:
    heartbeat_interval: float = 60.0  # seconds between a running trial's heartbeats
    grace_period: float = 300.0  # a RUNNING trial silent this long belongs to a dead worker
    max_retry: int = 3  # re-runs of a trial whose worker died, before it counts as failed
    outage_limit: float = 600.0  # seconds a worker waits out an unreachable (or full) database before it stops
    pool_size: int = 2  # PostgreSQL connections a process holds at most: its work and its trial's heartbeat

    def __post_init__(self) -> None:
        if self.pool_size < 1:
            raise UsageError(f"--pool-size must be at least 1, got {self.pool_size}")
        if not (self.heartbeat_interval > 0 and self.grace_period > 0 and self.outage_limit >= 0):
            raise UsageError("--heartbeat and --grace must be positive and --outage-limit not negative")


def _quote_userinfo(rest: str) -> str:
    """Percent-encode a password typed raw (`p/w:s@cret`) so the URL parses as the user meant.

    The host starts after the *last* `@` before any query; before it is `user:password`, and the
    password is everything after the first `:`. A password without special characters is left
    alone (it may already be percent-encoded).
    """
    head, qmark, query = rest.partition("?")
    at = head.rfind("@")
    if at < 0:
        return rest
    user, sep, password = head[:at].partition(":")
    if not sep or not any(c in password for c in "@/:?#[] "):
        return rest
    return f"{quote(user, safe='')}:{quote(password, safe='')}{head[at:]}{qmark}{query}"


def parse_url(text: str) -> URL:
    """A storage URL as SQLAlchemy understands it, with the psycopg2 driver for PostgreSQL."""
    text = text.strip()
    match = _SCHEME.match(text)
    if not match:
        raise StorageError(
            "storage is not a database URL; use e.g. sqlite:///skipsearch.db or postgresql://user:password@host/dbname"
        )
    scheme, rest = match.groups()
    if scheme.startswith("sqlite"):
        candidate = text
    else:
        candidate = f"{scheme}://{_quote_userinfo(rest)}"
    try:
        url = make_url(candidate)
    except (ArgumentError, ValueError):
        raise StorageError(
            f"storage URL for {scheme} cannot be parsed; use e.g. postgresql://user:password@host/dbname"
        ) from None
    if url.drivername in _DRIVERS:
        url = url.set(drivername=_DRIVERS[url.drivername])
    if not (url.drivername.startswith(("sqlite", "postgresql", "mysql"))):
        raise StorageError(f"unsupported storage {url.drivername!r}: use sqlite:/// or postgresql://")
    return url


def resolve_url(url: str | URL | None = None) -> URL:
    """--storage, else $SKIPSEARCH_STORAGE, else an SQLite file in the current folder."""
    if isinstance(url, URL):
        return url
    return parse_url(url or os.environ.get(ENV_VAR) or DEFAULT_URL)


def mask_url(url: str | URL | None) -> str:
    """The URL with any password shown as ***: the only form a URL is ever printed in."""
    try:
        parsed = resolve_url(url)
    except StorageError:
        return "<not a database URL>"
    return parsed.render_as_string(hide_password=True)


def redact(text: str, url: str | URL | None) -> str:
    """`text` with the URL's password (raw or percent-encoded) replaced by ***."""
    try:
        password = resolve_url(url).password
    except StorageError:
        return text
    if password:
        for form in {password, quote(password, safe=""), quote(password)}:
            text = text.replace(form, "***")
    return text


def _sqlite_path(url: URL) -> Path | None:
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def _first_line(exc: BaseException) -> str:
    if isinstance(exc, optuna.exceptions.StorageInternalError) and exc.__cause__ is not None:
        exc = exc.__cause__
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def describe(exc: BaseException, url: URL) -> str:
    """One line about a database failure, with no password in it."""
    return redact(_first_line(exc), url)


def describe_database_error(exc: BaseException) -> str:
    """One line for a database error that reached the user, with the hint that usually helps."""
    line = _first_line(exc)
    if "malformed" in line or "not a database" in line:
        return f"the storage database is damaged ({line}); restore it from a backup or give another --storage"
    if "readonly" in line or "read-only" in line:
        return f"the storage database cannot be written ({line}); check its permissions"
    return f"storage error: {line}"


def is_transient(exc: BaseException) -> bool:
    """An error a worker should wait out (the database is restarting, unreachable or full)."""
    if isinstance(exc, StorageUnavailable):
        return True
    if isinstance(exc, optuna.exceptions.StorageInternalError):
        exc = exc.__cause__ or exc
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError)):
        return True
    if isinstance(exc, sqlite3.OperationalError):
        return "locked" in str(exc) or "busy" in str(exc)
    return False


def _engine_kwargs(url: URL, settings: StorageSettings = StorageSettings()) -> dict[str, Any]:
    if url.drivername.startswith("postgresql"):
        # pre-ping replaces connections a database restart has closed; the timeouts keep a dead
        # server from hanging a worker (connect) or a half-open connection (TCP keepalives). The
        # pool is the cap: hundreds of workers must fit in max_connections (README, "connections").
        return {
            "pool_pre_ping": True,
            "pool_size": settings.pool_size,
            "max_overflow": 0,
            "pool_timeout": 60,
            "connect_args": {"connect_timeout": 10, "keepalives": 1, "keepalives_idle": 30,
                             "keepalives_interval": 10, "keepalives_count": 3,
                             "application_name": f"skipsearch {os.getpid()}"},  # pg_stat_activity says whose
        }
    if url.drivername.startswith("sqlite"):
        return {"connect_args": {"timeout": 60}}
    return {"pool_pre_ping": True}


def _check_sqlite_file(path: Path, url: URL) -> None:
    try:
        with open(path, "rb") as f:
            header = f.read(16)
    except IsADirectoryError:
        raise StorageError(f"storage {mask_url(url)} is a folder, not an SQLite file") from None
    except OSError as e:
        raise StorageError(f"cannot read storage {mask_url(url)}: {e.strerror or e}") from None
    if header and header != b"SQLite format 3\x00":
        raise StorageError(f"storage {mask_url(url)} is not an SQLite database; give another --storage")


def _has_tables(url: URL) -> bool:
    """Optuna's schema is there and finished: the tables and their alembic stamp (written last). A
    storage being created this instant has tables without the stamp; opening it then would race
    its creator to write the version rows (and make the creator fail)."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool, **{k: v for k, v in _engine_kwargs(url).items()
                                                                   if k == "connect_args"})
    try:
        inspector = sa.inspect(engine)
        if not (inspector.has_table("studies") and inspector.has_table("alembic_version")):
            return False
        with engine.connect() as conn:
            return bool(conn.execute(sa.text("SELECT COUNT(*) FROM alembic_version")).scalar())
    finally:
        engine.dispose()


def open_storage(
    url: str | URL | None = None,
    settings: StorageSettings = StorageSettings(),
    *,
    create: bool = False,
) -> RDBStorage:
    """An RDBStorage for `url`. With `create=False` (every read-only command, and workers) a
    missing SQLite file or a database without skipsearch's tables is an error, never created."""
    parsed = resolve_url(url)
    quiet_optuna()
    path = _sqlite_path(parsed) if parsed.drivername.startswith("sqlite") else None
    try:
        if path is not None:
            if path.exists():
                _check_sqlite_file(path, parsed)
                if create and not os.access(path.parent, os.W_OK):
                    raise StorageError(f"storage {mask_url(parsed)} is in a read-only folder ({path.parent}); "
                                       "SQLite writes its journal beside the file: give a writable --storage")
            elif not create:
                raise StorageError(f"no skipsearch storage at {mask_url(parsed)}; start a search with `skipsearch launch`")
            elif not path.parent.is_dir():
                raise StorageError(f"cannot create storage {mask_url(parsed)}: folder {path.parent} does not exist")
            elif not os.access(path.parent, os.W_OK):
                raise StorageError(f"cannot create storage {mask_url(parsed)}: folder {path.parent} is not writable")
        if not create and not _has_tables(parsed):
            raise StorageError(f"no skipsearch studies in {mask_url(parsed)}; start a search with `skipsearch launch`")
        if create:
            with storage_lock(parsed, "schema"):
                return RDBStorage(parsed.render_as_string(hide_password=False),
                                  engine_kwargs=_engine_kwargs(parsed, settings))
        return RDBStorage(parsed.render_as_string(hide_password=False), engine_kwargs=_engine_kwargs(parsed, settings),
                          skip_table_creation=True)
    except StorageError:
        raise
    except ImportError as e:
        raise StorageError(f"cannot open {mask_url(parsed)}: missing database driver ({e})") from None
    except Exception as e:  # SQLAlchemy/driver errors can carry the URL; never echo a password
        error = StorageUnavailable if is_transient(e) else StorageError
        message = f"cannot open storage {mask_url(parsed)}: {describe(e, parsed)}"
    # A storage that failed half-way (a full server refused its second connection) leaves an engine
    # holding the first one, kept alive by the failure's traceback: with the traceback gone (out of
    # the except block), collect it now, or a worker retrying holds more connections than its pool.
    gc.collect()
    raise error(message)


@contextmanager
def storage_lock(url: str | URL | None, key: str, timeout: float = 120.0,
                 engine: sa.Engine | None = None) -> Iterator[None]:
    """An exclusive lock named `key` shared by every process using this storage.

    SQLite: an flock on the database's folder (SQLite storage is one machine's).
    PostgreSQL: a session advisory lock. Held for the few writes that must not interleave.
    """
    parsed = resolve_url(url)
    if parsed.drivername.startswith("sqlite"):
        path = _sqlite_path(parsed)
        if path is None:
            yield
            return
        # flock on the database's folder, never on the file: closing any descriptor of the file
        # would drop the POSIX locks SQLite holds on it in this process (another thread's
        # transaction, say). The folder needs no extra file and is always there to open.
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise StorageError(f"timed out waiting for the lock on {path}") from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock
        return
    if not parsed.drivername.startswith("postgresql"):
        yield  # other databases: rely on Optuna's own unique constraints
        return
    number = int.from_bytes(hashlib.sha256(f"skipsearch:{key}".encode()).digest()[:8], "little", signed=True)
    # A transaction-level lock on one connection, released when the transaction ends whatever
    # happens; it holds through PgBouncer's transaction pooling (a session-level lock would not). It is
    # polled, not waited for: a waiter inside a transaction would pin one of PgBouncer's few server
    # connections, and enough waiters starve the holder. On the store's own pool when there is one, so
    # a process never opens a connection beyond its pool.
    owned = engine is None
    engine = engine or sa.create_engine(parsed, poolclass=sa.pool.NullPool,
                                        connect_args=_engine_kwargs(parsed)["connect_args"])
    deadline = time.monotonic() + timeout
    pause = 0.02
    try:
        while True:
            with engine.connect() as conn:
                if conn.execute(sa.text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": number}).scalar():
                    try:
                        yield
                    finally:
                        conn.rollback()  # ends the transaction, and the lock with it (nothing was written on it)
                    return
                conn.rollback()
            if time.monotonic() > deadline:
                raise StorageError(f"timed out after {timeout:.0f} s waiting for the storage lock {key!r}")
            time.sleep(pause)
            pause = min(pause * 2, 0.5)
    finally:
        if owned:
            engine.dispose()


class Retrying:
    """Calls into the storage that wait out an outage: exponential backoff (1 s … 30 s) up to
    `settings.outage_limit`, then one StorageError. `log` hears when contact is lost and regained."""

    def __init__(self, url: URL, settings: StorageSettings, log: Callable[[str], None] | None = None) -> None:
        self.url = url
        self.settings = settings
        self.log = log or (lambda message: None)
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self.recovered_at = -float("inf")  # monotonic time contact was last regained

    def __call__(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        delay = 1.0
        while True:
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                now = time.monotonic()
                with self._lock:
                    if self._down_since is None:
                        self._down_since = now
                        self.log(f"storage unreachable ({describe(exc, self.url)}); retrying for up to "
                                 f"{self.settings.outage_limit:.0f} s")
                    down = now - self._down_since
                if down > self.settings.outage_limit:
                    raise StorageError(
                        f"storage {mask_url(self.url)} unreachable for {down:.0f} s (limit {self.settings.outage_limit:.0f} s): "
                        f"{describe(exc, self.url)}"
                    ) from None
                time.sleep(min(delay, max(0.1, self.settings.outage_limit - down)))
                delay = min(delay * 2, 30.0)
                continue
            with self._lock:
                if self._down_since is not None:
                    self.recovered_at = time.monotonic()
                    self.log(f"storage reachable again after {self.recovered_at - self._down_since:.0f} s")
                    self._down_since = None
            return result


def quiet_optuna() -> None:
    """Optuna's info logs and experimental-feature warnings say nothing a user can act on."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message=r".*is out of range for distribution.*")
    logging.getLogger("sqlalchemy").setLevel(logging.ERROR)


class StudyStore:
    """One opened study storage, handed down instead of URLs: `url`, the Optuna `storage`,
    `settings`, calls that wait out an outage (`store(fn, *args)`) and the lock every process
    using this storage shares (`store.lock(key)`)."""

    def __init__(self, url: URL, storage: RDBStorage, settings: StorageSettings = StorageSettings(),
                 log: Callable[[str], None] | None = None) -> None:
        self.url = url
        self.storage = storage
        self.settings = settings
        self.retrying = Retrying(url, settings, log)

    @classmethod
    def open(cls, url: str | URL | None = None, settings: StorageSettings = StorageSettings(), *, create: bool = False,
             log: Callable[[str], None] | None = None, wait: bool = False) -> StudyStore:
        """Open `url` (--storage, else $SKIPSEARCH_STORAGE, else ./skipsearch.db); see `open_storage`.

        `wait`: a database that does not answer yet, or has no connection slot free, is waited out
        like any outage (workers start before the database is back, or while it is full)."""
        parsed = resolve_url(url)
        if not wait:
            return cls(parsed, open_storage(parsed, settings, create=create), settings, log)
        retrying = Retrying(parsed, settings, log)
        return cls(parsed, retrying(open_storage, parsed, settings, create=create), settings, log)

    @classmethod
    def of(cls, where: StudyStore | str | URL | None, settings: StorageSettings = StorageSettings(), *,
           create: bool = False) -> StudyStore:
        """`where` itself when it is a store, else the store it names, opened."""
        return where if isinstance(where, StudyStore) else cls.open(where, settings, create=create)

    def __call__(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return self.retrying(fn, *args, **kwargs)

    def lock(self, key: str, timeout: float = 120.0) -> AbstractContextManager[None]:
        return storage_lock(self.url, key, timeout, engine=self.storage.engine)

    @property
    def masked(self) -> str:
        return mask_url(self.url)

    def child_env(self) -> dict[str, str]:
        """The environment entry that hands this storage to a child process (never its argv)."""
        return {ENV_VAR: self.url.render_as_string(hide_password=False)}

    def with_settings(self, settings: StorageSettings, log: Callable[[str], None] | None = None) -> StudyStore:
        """The same opened storage under other settings (a worker's heartbeat and outage limit)."""
        return StudyStore(self.url, self.storage, settings, log)
