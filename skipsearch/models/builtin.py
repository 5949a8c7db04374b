"""Models that ship with skipsearch, registered under `builtin:NAME` for `load_network`."""
