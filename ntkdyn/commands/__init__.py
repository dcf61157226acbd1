"""Subcommands of the ``ntkdyn`` command line (one module each)."""
