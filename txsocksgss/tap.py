"""
twistd's entry: ``twistd -n socksgss [options]``.  Command-line options are
turned into a `txsocksgss.server.config.Config`; nothing else happens here.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.python import usage

from txsocksgss.errors import ConfigError
from txsocksgss.server.config import DEFAULT_LISTEN, KNOWN_METHODS, Config
from txsocksgss.server.service import SOCKSService, makeServerFactory, makeServiceFromFactory
from txsocksgss.server.settings import SETTINGS, Setting

__all__ = ["Options", "makeService", "config_from_options"]

#: (option, setting) of each setting ``twistd socksgss`` has an option for.
_OPTIONS = tuple((setting.option, setting) for setting in SETTINGS if setting.option)


def _option_parser(parse: Callable[[str], Any] | None) -> Callable[[str], Any] | None:
    """A setting's parser of option text as a twistd coerce function: bad text is a usage error."""
    if parse is None:
        return None

    def coerce(text: str) -> Any:
        try:
            return parse(text)
        except ConfigError as error:
            raise usage.UsageError(str(error)) from None

    return coerce


def _completions() -> dict[str, usage.Completer]:
    """Shell completion of the settings' options: file names or a list of words."""
    completers: dict[str, usage.Completer] = {}
    for option, setting in _OPTIONS:
        if setting.complete_files:
            completers[option] = usage.CompleteFiles(setting.complete_files)
        elif setting.complete_choices:
            completers[option] = usage.CompleteList(list(setting.complete_choices))
    return completers


class Options(usage.Options):
    """
    The options of ``twistd socksgss``: ``--config`` and one per setting of
    `txsocksgss.server.settings.SETTINGS` (see docs/configuration), each
    also a TOML setting.  A repeatable setting's option is an ``opt_``
    method (added below the class), as twistd wants for options that
    collect.
    """

    synopsis = "[options]"
    longdesc = (
        "An authenticating SOCKS 5 proxy.  With no options it listens on "
        f"{DEFAULT_LISTEN} without authentication.  Settings may also come "
        "from a TOML file (--config); options given here win over the file."
    )
    optFlags = [[option, None, setting.help] for option, setting in _OPTIONS if setting.flag is not None]
    # --config names the file the settings come from: the one option that is not a setting.
    optParameters: list[list[Any]] = [
        ["config", "c", None, "TOML configuration file with the same settings as these options."]]
    optParameters += [[option, None, None, setting.help, _option_parser(setting.parse)]
                      for option, setting in _OPTIONS if setting.flag is None and not setting.repeatable]
    compData = usage.Completions(
        optActions={
            "config": usage.CompleteFiles("*.toml"),
            **_completions(),
            "method": usage.CompleteList(list(KNOWN_METHODS)),
        },
    )

    worker = False  # True in a worker process started by the master

    def parseOptions(self, options: Any = None) -> None:
        import sys

        self.argv = list(sys.argv[1:] if options is None else options)
        super().parseOptions(options)

    def __init__(self) -> None:
        super().__init__()
        for option, setting in _OPTIONS:
            if setting.repeatable:
                self[option] = []

    def postOptions(self) -> None:
        # Build everything that can fail on a bad setting (password file,
        # keytab, rules) now, so twistd prints a usage error, not a traceback.
        try:
            self.config = config_from_options(self)
            self.factory = makeServerFactory(self.config)
        except ConfigError as error:
            raise usage.UsageError(str(error)) from None


def _repeatable_option(option: str, setting: Setting) -> Callable[[Options, str], None]:
    """The ``opt_`` method of a repeatable setting's option: each value is added to the list."""

    def collect(self: Options, value: str) -> None:
        self[option].append(value)

    collect.__doc__ = setting.help  # twistd's help text for an opt_ method
    return collect


for _option, _setting in _OPTIONS:
    if _setting.repeatable:
        setattr(Options, "opt_" + _option.replace("-", "_"), _repeatable_option(_option, _setting))
del _option, _setting


def _given(setting: Setting, value: Any) -> Any:
    """What the option gave for ``setting``, or None when it was not given (then the file's value stands)."""
    if setting.flag is not None:
        return setting.flag if value else None
    if setting.repeatable:
        return value or None
    return value


def config_from_options(options: Any) -> Config:
    """The `Config` for parsed `Options`: the TOML file (if any), then the options over it."""
    base = Config.from_toml(options["config"]) if options["config"] else Config()
    return base.merged(**{setting.name: _given(setting, options[option]) for option, setting in _OPTIONS})


def makeService(options: Options) -> SOCKSService:
    """twistd's IServiceMaker entry."""
    worker_argv = None if options.worker else options.argv
    return makeServiceFromFactory(options.config, options.factory, worker_argv=worker_argv, handle_signals=True)
