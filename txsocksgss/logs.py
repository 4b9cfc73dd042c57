"""
twistd's log observers of txsocksgss, named by twistd's ``--logger`` option
(a fully qualified name of a callable returning an observer)::

    twistd -n --logger txsocksgss.logs.fastTextObserver socksgss [options]
    twistd -n --logger txsocksgss.logs.jsonObserver socksgss [options]

Text logs: `fastTextObserver` writes twistd's own text format, byte for
byte what twistd writes without ``--logger``, to the file twistd's
``--logfile`` names (standard output with ``-`` or, under ``-n``, without
one; ``twistd.log`` for a daemon), rotated on SIGUSR1 as twistd does;
it formats less per line (`txsocksgss.textlog.TextLogObserver`).
twistd passes a ``--logger`` factory nothing, so it reads ``--logfile``
and ``--nodaemon`` from twistd's command line itself, with twistd's own
option table.  ``--syslog`` does not apply.

Structured logs for log shippers: `jsonObserver` writes every log event as
one JSON object per line.  Each line is one event serialized by `twisted.logger.eventAsJSON` (so
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
twistd's ``--logfile`` does not apply to the JSON logs.
"""

from __future__ import annotations

import getopt
import os
import signal
import sys
from typing import IO, Any, Sequence

from twisted.logger import FileLogObserver, ILogObserver, eventAsJSON, formatEvent

from txsocksgss.textlog import TextLogObserver

__all__ = ["LOG_FILE_VARIABLE", "fastTextObserver", "jsonLineObserver", "jsonObserver", "processTextObserver",
           "textObserverFor"]

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


# The observer fastTextObserver made for twistd in this process.
_process_text_observer: TextLogObserver | None = None


def fastTextObserver() -> ILogObserver:
    """
    twistd's ``--logger`` factory: twistd's text log, to where twistd's
    command line (`sys.argv`) says (see `textObserverFor`).  The observer is
    also this process's `processTextObserver`.
    """
    global _process_text_observer
    _process_text_observer = textObserverFor(sys.argv[1:])
    return _process_text_observer


def processTextObserver() -> TextLogObserver | None:
    """
    The observer `fastTextObserver` made for twistd in this process (twistd's
    only log observer), or None when twistd logs some other way.  The
    master of ``--workers`` writes its workers' formatted lines through its
    file.
    """
    return _process_text_observer


def textObserverFor(arguments: Sequence[str]) -> TextLogObserver:
    """
    A `txsocksgss.textlog.TextLogObserver` writing where twistd, given
    ``arguments`` (its command line without the program), would write its
    text log: ``--logfile FILE`` (a `twisted.python.logfile.LogFile`,
    rotated on SIGUSR1 unless that signal is handled already), ``-`` for
    standard output, nothing for standard output with ``--nodaemon`` and
    for ``twistd.log`` without.  Exits, as twistd does, for a daemon asked
    to log to standard output.
    """
    from twisted.python.logfile import LogFile
    from twisted.scripts.twistd import ServerOptions

    # twistd's own option table, so every spelling twistd accepts (-l FILE,
    # -nlFILE, --logf=FILE) reads the same; parsing stops at the subcommand.
    table = ServerOptions()
    try:
        pairs, _rest = getopt.getopt(list(arguments), table.shortOpt, table.longOpt)
    except getopt.GetoptError:
        pairs = []  # not twistd's command line (a program calling the factory): the defaults
    options = {table.synonyms.get(name.lstrip("-"), name.lstrip("-")): value for name, value in pairs}
    path, daemon = options.get("logfile", ""), "nodaemon" not in options
    if path == "-":
        if daemon:
            sys.exit("Daemons cannot log to stdout, exiting!")
        return TextLogObserver(sys.stdout)
    if not path and not daemon:
        # twistd asks for the observer before it redirects standard output
        # into the log: this is the real output.
        return TextLogObserver(sys.stdout)
    logFile = LogFile.fromFullPath(path or "twistd.log")
    if not signal.getsignal(signal.SIGUSR1):

        def rotate(signum: int, frame: Any) -> None:
            from twisted.internet import reactor

            reactor.callFromThread(logFile.rotate)  # type: ignore[attr-defined]

        signal.signal(signal.SIGUSR1, rotate)
    return TextLogObserver(logFile)
