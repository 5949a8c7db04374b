"""`python -m skipsearch.metrics classifier|reference ...`: the build scripts without runpy's double-import warning.

Running a submodule (`python -m skipsearch.metrics.reference`) works too, but the package imports
that submodule first, so runpy warns that it executes it a second time as __main__.
"""

from __future__ import annotations

import sys

from . import digits_classifier, reference
from .errors import MetricError

COMMANDS = {"classifier": digits_classifier.main, "reference": reference.main}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        sys.exit("usage: python -m skipsearch.metrics {classifier,reference} [options]  (--help for each)")
    try:
        COMMANDS[argv[0]](argv[1:])
    except MetricError as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
