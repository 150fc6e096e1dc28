"""Errors that reach the user as one line on stderr, each with its exit code (listed in README.md)."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_LOCKED = 75


class BackupdError(Exception):
    """An expected failure: printed as one line, no traceback (unless --debug)."""

    exit_code = EXIT_FAILED


class ConfigError(BackupdError):
    """A broken configuration: names the file, the key and what is wrong."""

    exit_code = EXIT_USAGE

    def __init__(self, file: object, key: str | None, message: str) -> None:
        where = f"{file}" + (f": {key}" if key else "")
        super().__init__(f"config {where}: {message}")
        self.file = file
        self.key = key


class UsageError(BackupdError):
    exit_code = EXIT_USAGE


class LockedError(BackupdError):
    exit_code = EXIT_LOCKED


class StepError(BackupdError):
    """A run step failed: the message names job, host and step so an operator knows where to look."""

    def __init__(self, step: str, message: str, *, job: str | None = None, host: str | None = None) -> None:
        parts = []
        if job:
            parts.append(f"job {job}")
        if host:
            parts.append(f"host {host}")
        parts.append(f"step {step}")
        super().__init__(f"{', '.join(parts)}: {message}")
        self.step = step
        self.job = job
        self.host = host
        self.reason = message
