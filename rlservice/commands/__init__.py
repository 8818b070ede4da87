"""CLI command groups: each module here defines `register(subparsers)` and is found by `rlservice.cli`."""
