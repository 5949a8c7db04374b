"""The console entry point (`skipsearch`, `python -m skipsearch`).

A `--storage URL` holding a password would sit in `ps` for the whole run, so before anything heavy
is imported the process re-executes itself with the URL moved into $SKIPSEARCH_STORAGE. Plain
string handling on purpose: this runs in the first milliseconds of every command.
"""

from __future__ import annotations

import os
import sys

ENV_VAR = "SKIPSEARCH_STORAGE"


def _has_password(url: str) -> bool:
    scheme, sep, rest = url.partition("://")
    if not sep:
        return ":" in url.split("@")[0] and "@" in url  # malformed, but hide what looks like a secret
    userinfo = rest.partition("?")[0].rpartition("@")[0]
    return ":" in userinfo and bool(userinfo.partition(":")[2])


def hide_storage_password(argv: list[str]) -> None:
    for i, arg in enumerate(argv):
        if arg == "--storage" and i + 1 < len(argv):
            value, rest = argv[i + 1], argv[:i] + argv[i + 2 :]
        elif arg.startswith("--storage="):
            value, rest = arg.split("=", 1)[1], argv[:i] + argv[i + 1 :]
        else:
            continue
        if _has_password(value):
            env = dict(os.environ, **{ENV_VAR: value})
            os.execve(sys.executable, [sys.executable, "-m", "skipsearch", *rest], env)
        return


def main() -> None:
    hide_storage_password(sys.argv[1:])
    from .cli import main as run

    run()
