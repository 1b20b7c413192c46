"""Command-line options that also read from environment variables, parsed and validated once at start.

Each option is declared once: its flag, its variable, its type and its help. `--help` lists every one with
the variable it reads, so an operator of a container (where flags are awkward) and a person at a terminal
see the same knobs. A bad value stops the process with a message naming the variable or flag.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any, Callable, Sequence


class OptionError(ValueError):
    """An option's value is malformed; the message names the flag and the variable."""


@dataclasses.dataclass(frozen=True)
class Option:
    flag: str  # "--tcp-port"; the attribute is the flag without dashes, "tcp_port"
    env: str
    parse: Callable[[str], Any]
    default: str | None
    help: str

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


def port_or_off(text: str) -> int | None:
    """A TCP/UDP port, 0 for one the OS picks, or 'off'."""
    if text.strip().lower() in ("off", "none", "", "-"):
        return None
    port = int(text)
    if not 0 <= port <= 65535:
        raise ValueError("a port must lie between 0 and 65535, or be 'off'")
    return port


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError("must be greater than 0")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be 1 or more")
    return value


def comma_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def log_level(text: str) -> str:
    level = text.strip().upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
    return level


def parse_options(prog: str, description: str, options: Sequence[Option], argv: Sequence[str] | None,
                  environ: dict[str, str] | None = None) -> dict[str, Any]:
    """Parse flags over environment over defaults; returns {dest: value}. Raises OptionError."""
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for opt in options:
        shown = "unset" if opt.default is None else repr(opt.default)
        parser.add_argument(opt.flag, dest=opt.dest, metavar=opt.env, default=None,
                            help=f"{opt.help} [env {opt.env}; default {shown}]")
    args = parser.parse_args(argv)
    values: dict[str, Any] = {}
    for opt in options:
        raw = getattr(args, opt.dest)
        if raw is None:
            raw = environ.get(opt.env, opt.default)
        if raw is None:
            values[opt.dest] = None
            continue
        try:
            values[opt.dest] = opt.parse(raw)
        except ValueError as exc:
            raise OptionError(f"{opt.flag} / {opt.env}: {exc} (got {raw!r})") from None
    return values
