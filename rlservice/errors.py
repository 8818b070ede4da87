"""Errors that reach the user as one line and a non-zero exit (the CLI prints `error: <message>`)."""


class RLServiceError(Exception):
    """Base class: the message is complete and user-facing; no traceback is shown."""

    exit_code = 2


class ConfigError(RLServiceError):
    """A spec (YAML, --set override, preset name) is invalid; the message names field and value."""


class DatasetError(RLServiceError):
    """A dataset is unknown, malformed (NaN/inf, shape mismatch) or lacks reference scores."""


class DivergenceError(RLServiceError):
    """Training diverged: |Q| beyond the bound of SPEC.md or non-finite."""
