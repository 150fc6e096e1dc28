"""The interface every format checker implements, so the pipeline can verify any stream in one pass."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass
class CheckResult:
    """Outcome of a structural check. `stats` go into the manifest and are what drills compare against."""

    format: str
    ok: bool
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "ok": self.ok,
            "errors": list(self.errors),
            "warnings": list(self.warnings),
            "stats": self.stats,
            "facts": self.facts,
        }


class FormatChecker(abc.ABC):
    """Fed the *uncompressed* stream in chunks of any size; never raises on bad data.

    The first structural problem is recorded as an error and later input is ignored, so a corrupt
    multi-GB stream costs nothing more once the problem is found. Memory stays constant.
    """

    format: ClassVar[str]

    @abc.abstractmethod
    def feed(self, data: bytes) -> None:
        """Consume the next chunk of the stream."""

    @abc.abstractmethod
    def finish(self) -> CheckResult:
        """The stream has ended: report what was found (a truncated stream is an error)."""
