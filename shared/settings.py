"""One configuration system for every role: each option is both a flag and an environment variable,
declared once with its parser, default and help, and read once at start.

`--help` lists every option with the variable it reads and its default, so an operator of a container
(where flags are awkward) and a person at a terminal see the same knobs. A bad value stops the process
with a ConfigError naming both the variable and the flag. Nothing else reads `os.environ` for settings.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any, Callable, Mapping, Sequence


class ConfigError(ValueError):
    """An option is missing or malformed; the message names its variable and flag."""


@dataclasses.dataclass(frozen=True)
class Option:
    flag: str  # "--tcp-port"; the attribute is the flag without dashes, "tcp_port"
    env: str
    parse: Callable[[str], Any]  # raises ValueError with a message meant for the operator
    default: str | None  # None: unset unless given
    help: str
    secret: bool = False  # never echo its value in an error

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    def name(self) -> str:
        return f"{self.env} ({self.flag})"


def problem(option: Option, text: str) -> ConfigError:
    """A ConfigError about `option`, for checks that involve more than one value."""
    return ConfigError(f"{option.name()}: {text}")


# --- parsers: each raises ValueError with a message an operator can act on -----------------------------------

def integer(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError("expected an integer") from None
        if not low <= value <= high:
            raise ValueError(f"{value} is outside {low}..{high}")
        return value
    return parse


def positive_int(text: str) -> int:
    return integer(1, 1 << 62)(text)


def positive_float(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError("expected a number") from None
    if not value > 0 or value == float("inf"):
        raise ValueError("must be a finite number greater than 0")
    return value


def port_or_off(text: str) -> int | None:
    """A TCP/UDP port, 0 for one the OS picks, or 'off'."""
    if text.strip().lower() in ("off", "none", "", "-"):
        return None
    return integer(0, 65535)(text)


def port(text: str) -> int:
    return integer(0, 65535)(text)


def comma_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true or false")


def log_level(text: str) -> str:
    level = text.strip().upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
    return level


def text(value: str) -> str:
    return value.strip()


def optional_text(value: str) -> str | None:
    return value.strip() or None


def http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL")
    return value.rstrip("/")


def namespace(value: str) -> str:
    from shared.registration import namespace_problem

    if reason := namespace_problem(value):
        raise ValueError(reason)
    return value


def multiaddrs(value: str) -> tuple[str, ...]:
    import multiaddr  # loaded only by the roles that take multiaddrs

    addrs = comma_list(value)
    for addr in addrs:
        try:
            multiaddr.Multiaddr(addr)
        except Exception as exc:
            raise ValueError(f"{addr!r} is not a multiaddr ({exc})") from None
    return addrs


def peer_ids(value: str) -> tuple[str, ...] | None:
    """A comma-separated allow-list of peer IDs; '*' (None) allows any."""
    if value.strip() == "*":
        return None
    ids = comma_list(value)
    for peer_id in ids:
        if not peer_id.startswith(("12D3KooW", "Qm")) or not peer_id.isalnum():
            raise ValueError(f"{peer_id[:60]!r} is not a peer ID")
    return ids


# --- what every role reads: logs and traces ----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Observability:
    log_level: str = "INFO"
    libp2p_log_level: str = "WARNING"
    google_cloud_project: str | None = None
    otlp_endpoint: str | None = None
    trace_file: str | None = None


OBSERVABILITY_OPTIONS = [
    Option("--log-level", "LOG_LEVEL", log_level, "INFO", "DEBUG, INFO, WARNING or ERROR"),
    Option("--libp2p-log-level", "LIBP2P_LOG_LEVEL", log_level, "WARNING",
           "level of py-libp2p's own log lines (libp2p roles)"),
    Option("--google-cloud-project", "GOOGLE_CLOUD_PROJECT", optional_text, None,
           "makes each log line's trace field the full projects/P/traces/T that Cloud Logging links"),
    Option("--otlp-endpoint", "OTEL_EXPORTER_OTLP_ENDPOINT", optional_text, None,
           "export spans over OTLP/HTTP here (the standard OTEL_EXPORTER_OTLP_* variables apply)"),
    Option("--otlp-traces-endpoint", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", optional_text, None,
           "the same, for traces only; wins over OTEL_EXPORTER_OTLP_ENDPOINT"),
    Option("--trace-file", "TRACE_FILE", optional_text, None, "append spans as JSON lines to this file (debugging)"),
]


def observability(values: dict[str, Any]) -> Observability:
    """Take the observability options out of parsed `values`."""
    traces_endpoint, endpoint = values.pop("otlp_traces_endpoint"), values.pop("otlp_endpoint")
    return Observability(
        log_level=values.pop("log_level"), libp2p_log_level=values.pop("libp2p_log_level"),
        google_cloud_project=values.pop("google_cloud_project"), otlp_endpoint=traces_endpoint or endpoint,
        trace_file=values.pop("trace_file"))


# --- parsing -------------------------------------------------------------------------------------------------

def help_text(prog: str, description: str, options: Sequence[Option]) -> str:
    return _parser(prog, description, options).format_help()


def _parser(prog: str, description: str, options: Sequence[Option]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for opt in options:
        shown = "unset" if opt.default is None else repr(opt.default)
        parser.add_argument(opt.flag, dest=opt.dest, metavar=opt.env, default=None,
                            help=f"{opt.help} [env {opt.env}; default {shown}]")
    return parser


def parse_options(prog: str, description: str, options: Sequence[Option], argv: Sequence[str] | None,
                  environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Flags over environment over defaults -> {dest: value}. Raises ConfigError naming the option."""
    environ = os.environ if environ is None else environ
    args = _parser(prog, description, options).parse_args(argv)
    values: dict[str, Any] = {}
    for opt in options:
        raw = getattr(args, opt.dest)
        if raw is None:
            raw = environ.get(opt.env)
            if raw is not None and not raw.strip():
                raw = None  # an empty variable counts as unset, as in most deployment tools
        if raw is None:
            raw = opt.default
        if raw is None:
            values[opt.dest] = None
            continue
        try:
            values[opt.dest] = opt.parse(raw)
        except ValueError as exc:
            shown = "" if opt.secret else f" (got {raw[:80]!r})"
            raise ConfigError(f"{opt.name()}: {exc}{shown}") from None
    return values
