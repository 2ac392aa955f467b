"""Shared helpers: typed configs, atomic I/O, logging, the command-line front end."""
