"""
Structured logs for log shippers: every log event as one JSON object per line.

twistd takes a log observer factory by its fully qualified name::

    twistd -n --logger txsocksgss.logs.jsonObserver socksgss [options]

Each line is one event serialized by `twisted.logger.eventAsJSON` (so
`twisted.logger.eventsFromJSONLogFile` reads the file back), with the
event's own fields at the top level: a session line has ``client``,
``user``, ``method``, ``protection``, ``command``, ``destination``, ``up``,
``down``, ``duration`` and ``outcome``.  Twisted's fields are prefixed
``log_`` (``log_time``, a Unix time; ``log_level`` with its ``name``;
``log_namespace``; ``log_format``, the message template), and ``text`` holds
the message as the text log would show it.

The lines go to standard output (twistd ``-n``, systemd, containers), or
to the file named by the environment variable ``TXSOCKSGSS_LOG_FILE``
(appended to; needed when twistd runs as a daemon, which has no output).
twistd's ``--logfile`` does not apply: ``--logger`` replaces it.
"""

from __future__ import annotations

import os
import sys
from typing import IO, Any

from twisted.logger import FileLogObserver, ILogObserver, eventAsJSON, formatEvent

__all__ = ["LOG_FILE_VARIABLE", "jsonObserver", "jsonLineObserver"]

#: The environment variable naming the file `jsonObserver` appends to.
LOG_FILE_VARIABLE = "TXSOCKSGSS_LOG_FILE"


def _asJSONLine(event: dict[str, Any]) -> str:
    if "text" not in event:
        event = dict(event, text=formatEvent(event))
    return eventAsJSON(event) + "\n"


def jsonLineObserver(outFile: IO[Any]) -> ILogObserver:
    """
    An observer writing each event to ``outFile`` as one line of JSON (see
    the module docstring), flushed per event.
    """
    observer: ILogObserver = FileLogObserver(outFile, _asJSONLine)
    return observer


def jsonObserver() -> ILogObserver:
    """
    twistd's ``--logger`` factory: JSON lines to standard output, or to the
    file ``$TXSOCKSGSS_LOG_FILE`` when that variable is set (``-`` also
    means standard output).
    """
    path = os.environ.get(LOG_FILE_VARIABLE)
    if path and path != "-":
        # Line-buffered: a shipper tailing the file sees whole lines.
        return jsonLineObserver(open(path, "a", encoding="utf-8", buffering=1))
    # twistd asks for the observer before it redirects standard output into
    # the log, so this is the real output, not a loop back into logging.
    return jsonLineObserver(sys.stdout)
