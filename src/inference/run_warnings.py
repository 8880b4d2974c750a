"""The warnings of a run, gathered so that they are repeated together at its end (in the log and on the terminal):
a warning logged early (pixels masked, a PSF repaired, a chain that did not converge) is otherwise lost among
hundreds of progress lines."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("scorelens.inference.run")


class WarningCollector(logging.Handler):
    """Keeps the message of every record at WARNING or above, once each, in order."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message not in self.messages:
            self.messages.append(message)


@contextmanager
def collected_warnings() -> Iterator[WarningCollector]:
    """Gather the warnings logged inside the block; at its end (also when it fails) log them again as one summary."""
    collector = WarningCollector()
    root = logging.getLogger()
    root.addHandler(collector)
    try:
        yield collector
    finally:
        root.removeHandler(collector)
        if collector.messages:
            log.warning("%d warning(s) in this run:\n%s", len(collector.messages),
                        "\n".join(f"  - {m}" for m in collector.messages))
