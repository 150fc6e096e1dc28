"""The fault-injection seed (printed) and one summary line per fault kind at the end of the run."""

from __future__ import annotations

import pytest

from tests.faults.invariants import SEED_ENV, SUMMARY, fault_seed


@pytest.fixture(scope="session")
def seed() -> int:
    return fault_seed()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not SUMMARY:
        return
    terminalreporter.section("fault injection")
    from tests.faults import invariants

    if invariants.LAST_SEED is not None:
        terminalreporter.write_line(f"seed: {SEED_ENV}={invariants.LAST_SEED} (set it to replay these instants)")
    for kind, (injected, held) in sorted(SUMMARY.items()):
        verdict = "all invariants held" if injected == held else f"invariants FAILED after {injected - held}"
        terminalreporter.write_line(f"{kind}: {injected} injected, {verdict}")
