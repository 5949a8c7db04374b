"""`python -m skipsearch` runs the CLI."""

from skipsearch.cli import main

main()
