"""The log events of a test, formatted as text, and the lines among them that say something."""

from __future__ import annotations

from typing import Any

from twisted.logger import formatEvent, globalLogPublisher

__all__ = ["capture_logs", "lines_with"]


def capture_logs(test: Any) -> list[str]:
    """Every log event from now to the end of ``test`` (a TestCase), formatted as text."""
    lines: list[str] = []

    def observer(event: dict[str, Any]) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observer)
    test.addCleanup(globalLogPublisher.removeObserver, observer)
    return lines


def lines_with(lines: list[str], text: str) -> list[str]:
    """The lines that contain ``text``."""
    return [line for line in lines if text in line]
