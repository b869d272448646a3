"""Command-line entry points: each file parses arguments and calls a library function."""
