"""`python -m skipsearch` runs the CLI (and is how `launch` starts its workers)."""

from skipsearch.entry import main

main()
