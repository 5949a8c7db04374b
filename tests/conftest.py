"""Shared fixtures: a tiny EDM checkpoint, and a fresh PostgreSQL database per test.

PostgreSQL tests run against the real server (127.0.0.1:5432, or $SKIPSEARCH_TEST_POSTGRES). They
skip when no server answers — except under CI, where `.ci/run` guarantees one and a missing server
is a failure.
"""

from __future__ import annotations

import json
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from skipsearch.models.edm import EDMPrecond
from skipsearch.search.storage import resolve_url

# A suite started in the background by a non-interactive shell (`cmd &`, CI runners) inherits SIGINT
# ignored, and so would every process a test starts: their Ctrl-C tests would wait on a process that
# cannot hear it. Catching it here makes each child start with the default again.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

TINY_NET = dict(img_resolution=8, img_channels=1, model_type="SongUNet", model_channels=8, channel_mult=[1, 2],
                num_blocks=1, attn_resolutions=[], dropout=0.0)
PG_DEFAULT = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small random EDM network as .pt + .json (3 skip sites, 8x8, one channel)."""
    torch.manual_seed(0)
    net = EDMPrecond(**TINY_NET)
    folder = tmp_path_factory.mktemp("tiny")
    path = folder / "edm-tiny.pt"
    torch.save(net.state_dict(), path)
    path.with_suffix(".json").write_text(json.dumps({"constructor_kwargs": TINY_NET}))
    return path


def _pg_base() -> str:
    return resolve_url(os.environ.get("SKIPSEARCH_TEST_POSTGRES", PG_DEFAULT)).render_as_string(hide_password=False)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A new, empty database on the real server; dropped afterwards."""
    import sqlalchemy as sa

    base = _pg_base()
    engine = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
    except Exception as e:  # noqa: BLE001
        engine.dispose()
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI but not reachable: {e}")
        pytest.skip(f"no PostgreSQL server reachable ({type(e).__name__})")
    name = f"skipsearch_test_{uuid.uuid4().hex[:12]}"
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = base.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with engine.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'studies.db'}"
    return request.getfixturevalue("pg_url")
