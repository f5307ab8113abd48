"""The ``headwater`` command: run a server, and talk to one.

::

    headwater serve [--data-dir DIR] [--host H] [--port P] ...
    headwater topics create NAME --partitions N | list | describe NAME | delete NAME
    headwater produce TOPIC [--key-separator SEP] [--value TEXT] [--header k=v ...]
                            [--max-event-bytes SIZE] [--flush-timeout S]
    headwater consume TOPIC [--group G] [--from earliest|latest|OFFSET|ISO-TIME]
                            [--follow] [--max N] [--format text|json]
    headwater groups list | describe GROUP
    headwater run JOB.py [--url URL] [--instance N] [--job NAME] [--port P] [--data-dir DIR]
    headwater tables get JOB TABLE KEY [--key-json]
    headwater tree [--url headwater+actors://HOST:PORT]
    headwater actors kill PATH | inspect PATH [--url headwater+actors://HOST:PORT]
    headwater repair [--data-dir DIR] [--topic T --partition N] [--yes]
    headwater bench [--quick] [--local] [--write-docs docs/benchmarks.md]

Client commands reach the server named by ``--url`` (given after the
command, or before it: ``headwater --url X topics list``; else
``$HEADWATER_URL``, else ``headwater://127.0.0.1:7700``). Human output is
aligned; ``--json`` prints JSON (one object per line for streams). Errors are
one line on stderr, ``error: <message> [<code>]``, with exit code 1 (the
server refused, or a local I/O error), 3 (no connection) or 2 (bad usage);
never a traceback for an expected error. docs/cli.md is the reference.

Every command is one ``trio.run``; every client comes from
:func:`_open_client` (tests substitute an embedded broker there). ``produce``
reads stdin in a worker thread, chunk by chunk, and sends whatever complete
lines each chunk holds, so slow input is sent as it arrives and fast input in
large batches; it reads the file descriptor with ``os.read`` (a read left
blocked at exit holds no lock), and Ctrl-C or SIGTERM stops the reading,
stores what was read (within ``--flush-timeout``) and exits 130 or 143. While
the server is unreachable the client says so once per series of attempts.
``consume`` stops at the partition ends it saw at the start
(or never, with ``--follow``); SIGINT/SIGTERM end it cleanly, committing what
was printed when it reads as a group member.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import math
import os
import re
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, NoReturn, TextIO, TypeVar

import attrs
import click
import trio

from headwater import __version__
from headwater._errors import (
    AuthenticationError,
    ConfigError,
    ConnectionLostError,
    EventTooLarge,
    HeadwaterError,
    InvalidArgument,
    ServerBusyError,
    TopicExistsError,
    UnknownGroupError,
    UnknownTopicError,
    UsageError,
)
from headwater._logging import configure_logging, configure_structlog_for_cli
from headwater._protocol import ShareDescription
from headwater.client import Client, Event, Timestamp
from headwater.client._tcp import DEFAULT_URL, connect
from headwater.supervision._specs import ActorSnapshot, unwrap_group

__all__ = ["EXIT_CONNECTION", "EXIT_SERVER", "EXIT_USAGE", "main"]

T = TypeVar("T")

EXIT_SERVER = 1
EXIT_USAGE = 2
EXIT_CONNECTION = 3

#: Seconds the CLI waits for a connection (and its handshake) to the server.
CONNECT_TIMEOUT = 5.0


# --------------------------------------------------------------------------
# Running commands: one trio.run per command, errors as one line.


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


class _NotConnected(Exception):
    """Raised by :func:`_open_client` when no connection could be made:
    carries the client's error and the exit code (usage for a bad URL or CA
    file, connection otherwise), so nothing reads the message to decide."""

    def __init__(self, error: HeadwaterError, exit_code: int) -> None:
        super().__init__(error.message)
        self.error = error
        self.exit_code = exit_code


def _exit_code(error: HeadwaterError) -> int:
    if isinstance(error, ConnectionLostError | ServerBusyError | AuthenticationError):
        return EXIT_CONNECTION
    if isinstance(error, ConfigError):
        return EXIT_USAGE
    return EXIT_SERVER


def _run(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run ``fn(*args)`` under Trio; print expected errors as one line.

    Ctrl-C is raised at the next checkpoint (a blocked command is woken),
    never in the middle of an expression: raised between making a coroutine
    and awaiting it (inside Trio's socket calls), it left a "coroutine ...
    was never awaited" warning on stderr beside ``error: interrupted``."""
    return _guard(lambda: trio.run(fn, *args, restrict_keyboard_interrupt_to_checkpoints=True))


def _guard(fn: Callable[[], T]) -> T:
    """Call ``fn()`` (which runs Trio); print expected errors as one line."""
    try:
        return fn()
    except BaseException as exc:  # groups from nurseries are unwrapped below
        error = unwrap_group(exc)
        if isinstance(error, _NotConnected):
            _fail(f"{error.error.message} [{error.error.code}]", error.exit_code)
        if isinstance(error, HeadwaterError):
            _fail(f"{error.message} [{error.code}]", _exit_code(error))
        if isinstance(error, KeyboardInterrupt):
            _fail("interrupted", 130)
        if isinstance(error, BrokenPipeError):
            _quiet_stdout()
            sys.exit(0)  # `headwater consume ... | head`
        if isinstance(error, OSError):  # stdin unreadable, stdout's disk full, ...
            _fail(
                f"{error.strerror or error}" + (f": {error.filename}" if error.filename else ""), 1
            )
        raise


def _quiet_stdout() -> None:
    """The reader of stdout went away (``| head``): point stdout at
    /dev/null so the interpreter's last flush does not complain on stderr."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        pass  # not a real file (tests): nothing will be flushed to a pipe


@asynccontextmanager
async def _open_client(url: str, token: str | None, tls: Any) -> AsyncIterator[Client]:
    """A client of the server at ``url`` (the one place the CLI connects).
    A failure to connect is raised as :class:`_NotConnected`."""
    connected = False
    try:
        async with connect(
            url,
            token=token,
            tls=tls,
            connect_timeout=CONNECT_TIMEOUT,
            on_reconnect=_reconnect_notice(url),
        ) as client:
            connected = True
            yield client
    except HeadwaterError as exc:
        if connected:
            raise
        code = EXIT_USAGE if isinstance(exc, UsageError) else EXIT_CONNECTION
        raise _NotConnected(exc, code) from exc


def _reconnect_notice(url: str) -> Callable[[int, HeadwaterError | None], None]:
    """What the CLI says on stderr while the server is unreachable: one line
    when a series of reconnection attempts starts, one when it is back (so
    a command waiting for the server does not look frozen)."""

    def notice(attempt: int, error: HeadwaterError | None) -> None:
        if error is None:
            click.echo(f"reconnected to {url} after {attempt} failed attempt(s)", err=True)
        elif attempt == 1:
            click.echo(
                f"reconnecting to {url} (attempt {attempt}: {error}); still trying, with backoff",
                err=True,
            )

    return notice


class Target:
    """Where client commands go, from the shared options."""

    def __init__(self, url: str, token: str | None, tls: Any) -> None:
        self.url = url
        self.token = token
        self.tls = tls

    def client(self) -> Any:
        return _open_client(self.url, self.token, self.tls)


def _token(token: str | None, token_file: str | None) -> str | None:
    if token and token_file:
        raise click.UsageError("give --token or --token-file, not both")
    if token_file:
        try:
            with open(token_file, encoding="utf-8") as f:
                value = f.read().strip()
        except OSError as exc:
            raise click.UsageError(
                f"cannot read --token-file {token_file}: {exc.strerror}"
            ) from None
        if not value:
            raise click.UsageError(f"--token-file {token_file} is empty")
        return value
    return token or None


def resolve_url(url: str | None) -> str:
    """The server a client command talks to (DECISIONS #26): the command's
    ``--url``, else the one given before the command (``headwater --url X
    topics list``), else ``$HEADWATER_URL``, else :data:`DEFAULT_URL`."""
    if url:
        return url
    context = click.get_current_context(silent=True)
    before = context.find_root().params.get("url") if context is not None else None
    return before or os.environ.get("HEADWATER_URL") or DEFAULT_URL


def client_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--url, --token, --token-file, --tls, --tls-ca: build a :class:`Target`."""

    @click.option(
        "--url",
        default=None,
        metavar="URL",
        help="Server to use; headwaters:// turns TLS on. Default: the --url given "
        f"before the command, else $HEADWATER_URL, else {DEFAULT_URL}.",
    )
    @click.option(
        "--token", envvar="HEADWATER_TOKEN", default=None, help="Token (or $HEADWATER_TOKEN)."
    )
    @click.option(
        "--token-file",
        type=click.Path(dir_okay=False),
        default=None,
        help="Read the token from a file.",
    )
    @click.option("--tls", is_flag=True, default=False, help="Use TLS (system CAs).")
    @click.option(
        "--tls-ca",
        type=click.Path(dir_okay=False),
        default=None,
        help="Use TLS, trusting this CA file (PEM).",
    )
    def wrapper(
        url: str | None,
        token: str | None,
        token_file: str | None,
        tls: bool,
        tls_ca: str | None,
        **kwargs: Any,
    ) -> Any:
        tls_setting: Any = tls_ca if tls_ca else (True if tls else None)
        target = Target(resolve_url(url), _token(token, token_file), tls_setting)
        return fn(target, **kwargs)

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


def json_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(fn)


def _log_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The ``--log-format`` / ``--log-level`` options of the long-running
    commands (``serve``, ``run``)."""
    fn = click.option(
        "--log-level",
        type=click.Choice(["debug", "info", "warning", "error"]),
        default="info",
        show_default=True,
        help="Least severe log lines written to stderr.",
    )(fn)
    return click.option(
        "--log-format",
        type=click.Choice(["auto", "console", "json"]),
        default="auto",
        show_default=True,
        help="console on a terminal, json otherwise (auto); log lines go to stderr.",
    )(fn)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (ValueError, AttributeError):  # closed, or not a file
        return False


class Progress:
    """A counter redrawn in place on stderr (``produced 12,345 events``), at
    most every ``interval`` seconds; does nothing unless ``enabled``."""

    def __init__(self, verb: str, enabled: bool, interval: float = 0.1) -> None:
        self.verb = verb
        self.enabled = enabled
        self.interval = interval
        self._last = -math.inf
        self._width = 0

    def update(self, count: int) -> None:
        """Show ``count`` (if enabled and the last redraw is old enough)."""
        now = time.monotonic()
        if self.enabled and now - self._last >= self.interval:
            self._last = now
            text = f"{self.verb} {count:,} events"
            self._width = max(self._width, len(text))
            click.echo("\r" + text.ljust(self._width), nl=False, err=True)

    def finish(self) -> None:
        """Erase the counter line (the caller prints its summary)."""
        if self.enabled and self._width:
            click.echo("\r" + " " * self._width + "\r", nl=False, err=True)
            self._width = 0


def _emit_json(value: Any, out: TextIO | None = None) -> None:
    click.echo(json.dumps(value, default=str), file=out)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    """Aligned columns: numbers right-aligned, text left-aligned."""
    text = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in text:
        widths = [max(w, len(v)) for w, v in zip(widths, row, strict=True)]
    numeric = [
        all(isinstance(row[i], int | float) or row[i] is None for row in rows) and bool(rows)
        for i in range(len(headers))
    ]

    def line(values: list[str]) -> str:
        cells = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(cells).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in text])


_DURATION_UNITS = {
    "ms": 1,
    "s": 1000,
    "m": 60_000,
    "h": 3_600_000,
    "d": 86_400_000,
    "w": 604_800_000,
}
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kib": 1 << 10,
    "kb": 1000,
    "m": 1 << 20,
    "mib": 1 << 20,
    "mb": 1000**2,
    "g": 1 << 30,
    "gib": 1 << 30,
    "gb": 1000**3,
    "t": 1 << 40,
    "tib": 1 << 40,
    "tb": 1000**4,
}


def _print_list(
    items: list[Any],
    as_json: bool,
    empty: str,
    headers: list[str],
    row: Callable[[Any], list[Any]],
    as_dict: Callable[[Any], Any] = lambda item: item,
) -> None:
    """The shape of every ``list`` command: one JSON array with ``--json``,
    else ``empty`` when there is nothing, else a table of ``row(item)``."""
    if as_json:
        _emit_json([as_dict(item) for item in items])
    elif not items:
        click.echo(empty)
    else:
        click.echo(_table(headers, [row(item) for item in items]))


def _split_number(text: str) -> tuple[float, str] | None:
    stripped = text.strip()
    digits = len(stripped) - len(stripped.lstrip("0123456789."))
    try:
        return float(stripped[:digits]), stripped[digits:].strip().lower()
    except ValueError:
        return None


def parse_duration_ms(text: str) -> int:
    """``"500ms"``, ``"30s"``, ``"15m"``, ``"12h"``, ``"7d"``, ``"2w"`` (or
    a plain number of ms) as milliseconds; raises :class:`InvalidArgument`
    naming the text otherwise."""
    parsed = _split_number(text)
    if parsed is None or parsed[1] not in {"", *_DURATION_UNITS}:
        raise InvalidArgument(
            f"duration {text!r} is not understood; use a number with ms, s, m, h, d or w "
            "(e.g. 7d, 12h, 30m)"
        )
    number, unit = parsed
    return int(number * _DURATION_UNITS[unit or "ms"])


def parse_size(text: str) -> int:
    """``"1048576"``, ``"512KiB"``, ``"64MiB"``, ``"1GiB"`` (K/M/G/T are
    binary too; KB/MB/GB/TB decimal) as bytes; raises
    :class:`InvalidArgument` naming the text otherwise."""
    parsed = _split_number(text)
    if parsed is None or parsed[1] not in _SIZE_UNITS:
        raise InvalidArgument(
            f"size {text!r} is not understood; use bytes or a number with KiB, MiB, GiB, TiB "
            "(e.g. 512MiB, 10GiB)"
        )
    number, unit = parsed
    return int(number * _SIZE_UNITS[unit])


def _duration_text(ms: int) -> str:
    for unit in ("w", "d", "h", "m", "s"):
        if ms and ms % _DURATION_UNITS[unit] == 0:
            return f"{ms // _DURATION_UNITS[unit]}{unit}"
    return f"{ms}ms"


# Not click.ParamType[int]: that is not subscriptable before click 8.2 (we allow 8.1).
class _Parsed(click.ParamType):  # type: ignore[type-arg]
    """A click type from one of the parsers above (errors become usage errors)."""

    def __init__(self, name: str, parse: Callable[[str], int]) -> None:
        self.name = name
        self._parse = parse

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return self._parse(str(value))
        except InvalidArgument as exc:
            self.fail(exc.message, param, ctx)


DURATION = _Parsed("duration", parse_duration_ms)
SIZE = _Parsed("size", parse_size)


# --------------------------------------------------------------------------
# The command group.


#: click's "no command given: show the help" (click >= 8.2; () before that).
_NO_ARGS: Any = getattr(click.exceptions, "NoArgsIsHelpError", ())


class HeadwaterCommand(click.Group):
    """The command group, with click's own errors (a missing argument, an
    unknown option, an aborted confirmation) also as one ``error:`` line
    and exit code 2 (usage) or 1."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Run the command line (see :meth:`click.Group.main`)."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            result = super().main(args, prog_name, complete_var, False, **extra)
        except _NO_ARGS as exc:
            exc.show()
            sys.exit(EXIT_USAGE)
        except click.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            _fail(f"{exc.format_message()}{hint}", EXIT_USAGE)
        except click.ClickException as exc:
            _fail(exc.format_message(), exc.exit_code)
        except click.Abort as exc:
            if isinstance(exc.__cause__, KeyboardInterrupt):  # Ctrl-C outside trio.run
                _fail("interrupted", 130)
            _fail("aborted", EXIT_SERVER)
        sys.exit(result if type(result) is int else 0)


@click.group(cls=HeadwaterCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version=__version__, prog_name="headwater")
@click.option(
    "--url",
    default=None,
    metavar="URL",
    help="Server for the client commands (a command's own --url wins; "
    f"else $HEADWATER_URL, else {DEFAULT_URL}).",
)
def main(url: str | None) -> None:
    """Headwater: an event-streaming broker on supervised Trio actors."""
    # Library log lines (rebalances, retries) go to stderr, warnings and up,
    # so stdout carries only the command's output. `serve` reconfigures.
    configure_structlog_for_cli()
    configure_logging("console", level="warning")


@main.command()
@click.option("--data-dir", default="./headwater-data", show_default=True, help="Where data lives.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", default=7700, show_default=True, type=int, help="Port (0 picks a free one)."
)
@click.option(
    "--durability",
    type=click.Choice(["always", "interval", "never"]),
    default="always",
    show_default=True,
    help="Default durability of new topics.",
)
@click.option(
    "--interval-ms", default=200, show_default=True, type=int, help="fsync period for 'interval'."
)
@click.option(
    "--tls-cert", type=click.Path(exists=True, dir_okay=False), help="TLS certificate (PEM)."
)
@click.option(
    "--tls-key", type=click.Path(exists=True, dir_okay=False), help="TLS private key (PEM)."
)
@click.option(
    "--auth-token-file",
    type=click.Path(exists=True, dir_okay=False),
    help="Require this token (read from the file) from every client.",
)
@click.option(
    "--max-connections", default=1024, show_default=True, type=int, help="Clients at once."
)
@click.option("--max-in-flight", default=128, show_default=True, type=int, help="Per connection.")
@click.option(
    "--max-open-files",
    default=None,
    type=int,
    help="Segment files kept open at most (idle ones beyond are closed, least recently "
    "used first; default 16384, lowered to fit RLIMIT_NOFILE).",
)
@click.option(
    "--max-bytes-in-flight",
    default="16MiB",
    show_default=True,
    type=SIZE,
    help="Request bytes buffered per connection before it stops reading.",
)
@click.option(
    "--max-frame-size", default="16MiB", show_default=True, type=SIZE, help="Largest frame."
)
@click.option(
    "--send-timeout",
    default=60.0,
    show_default=True,
    type=float,
    help="Seconds a client may stop reading answers before it is dropped.",
)
@click.option("--idle-timeout", default=600.0, show_default=True, type=float, help="Seconds.")
@click.option("--handshake-timeout", default=10.0, show_default=True, type=float, help="Seconds.")
@click.option("--shutdown-timeout", default=10.0, show_default=True, type=float, help="Seconds.")
@click.option("--actors-port", default=None, type=int, help="Also serve the actor system here.")
@click.option(
    "--http-port",
    default=None,
    type=click.IntRange(0, 65535),
    help="Serve /metrics, /healthz, /readyz and the web console here (off by default).",
)
@click.option(
    "--http-host", default="127.0.0.1", show_default=True, help="Address of the HTTP listener."
)
@click.option(
    "--kafka-port",
    default=None,
    type=int,
    help="Also serve Kafka clients here (off by default; same host, TLS and token).",
)
@_log_options
def serve(**options: Any) -> None:
    """Run a broker server (Ctrl-C or SIGTERM stops it gracefully)."""
    from headwater.broker._server import ServerConfig, run_server

    token_file = options.pop("auth_token_file")
    http_port = options.pop("http_port")
    http_host = options.pop("http_host")
    token = None
    if token_file:
        token = _token(None, token_file)
    try:
        config = ServerConfig(auth_token=token, **options)
    except HeadwaterError as exc:
        _fail(f"{exc.message} [{exc.code}]", EXIT_USAGE)
    front_ends: list[Any] = []
    if http_port is not None:
        from headwater.web import open_http

        front_ends.append(partial(open_http, port=http_port, host=http_host, token=token))
    sys.exit(run_server(config, front_ends))


# --------------------------------------------------------------------------
# topics


@main.group()
def topics() -> None:
    """Create, list, describe and delete topics."""


@topics.command("create")
@click.argument("name")
@click.option("--partitions", "-p", default=1, show_default=True, type=int)
@click.option(
    "--retention",
    "retention_text",
    type=DURATION,
    default=None,
    help="Delete events older than this (7d, 12h, 30m; plain numbers are ms).",
)
@click.option("--retention-ms", type=int, default=None, help="The same in milliseconds.")
@click.option(
    "--retention-bytes",
    type=SIZE,
    default=None,
    help="Keep at most this much per partition (bytes, or 512MiB, 10GiB).",
)
@click.option("--compacted", is_flag=True, help="Keep the latest event per key.")
@click.option("--durability", type=click.Choice(["always", "interval", "never"]), default=None)
@click.option(
    "--if-not-exists", is_flag=True, help="A topic of that name already there is not an error."
)
@json_option
@client_options
def topics_create(
    target: Target,
    name: str,
    as_json: bool,
    retention_text: int | None,
    if_not_exists: bool,
    **settings: Any,
) -> None:
    """Create topic NAME."""
    if retention_text is not None:
        if settings["retention_ms"] is not None:
            raise click.UsageError("give --retention or --retention-ms, not both")
        settings["retention_ms"] = retention_text

    async def run() -> tuple[Any, bool]:
        async with target.client() as client:
            try:
                return await client.create_topic(name, **settings), True
            except TopicExistsError:
                if not if_not_exists:
                    raise
                return (await client.describe_topic(name)).topic, False

    info, created = _run(run)
    if as_json:
        _emit_json({**_topic_dict(info), "created": created})
    elif created:
        click.echo(f"created topic {info.name} with {info.partitions} partition(s)")
    else:
        click.echo(f"topic {info.name} exists already, with {info.partitions} partition(s)")


def _topic_dict(info: Any) -> dict[str, Any]:
    return {
        "name": info.name,
        "partitions": info.partitions,
        "retention_ms": info.retention_ms,
        "retention_bytes": info.retention_bytes,
        "compacted": info.compacted,
        "durability": info.durability,
    }


@topics.command("list")
@json_option
@client_options
def topics_list(target: Target, as_json: bool) -> None:
    """List every topic."""

    async def run() -> Any:
        async with target.client() as client:
            return await client.list_topics()

    infos = _run(run)
    _print_list(
        infos,
        as_json,
        "no topics yet; create one with: headwater topics create NAME",
        ["TOPIC", "PARTITIONS", "DURABILITY", "COMPACTED", "RETENTION"],
        lambda i: [
            i.name,
            i.partitions,
            i.durability,
            "yes" if i.compacted else "no",
            _retention(i),
        ],
        _topic_dict,
    )


def _retention(info: Any) -> str:
    parts = []
    if info.retention_ms is not None:
        parts.append(_duration_text(info.retention_ms))
    if info.retention_bytes is not None:
        parts.append(_size(info.retention_bytes))
    return ", ".join(parts) or "forever"


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


@topics.command("describe")
@click.argument("name")
@json_option
@client_options
def topics_describe(target: Target, name: str, as_json: bool) -> None:
    """Show a topic's settings and each partition's offsets and size
    (STABLE: the last stable offset, where read_committed readers stop while
    a transaction is open)."""

    async def run() -> Any:
        async with target.client() as client:
            return await client.describe_topic(name)

    d = _run(run)
    parts = [
        {
            "partition": p.partition,
            "earliest_offset": p.earliest_offset,
            "next_offset": p.next_offset,
            "last_stable_offset": p.last_stable_offset,
            "events": p.next_offset - p.earliest_offset,
            "size_bytes": p.size_bytes,
            "state": p.state,
            "error": p.error,
        }
        for p in d.partitions
    ]
    if as_json:
        _emit_json({**_topic_dict(d.topic), "partition_details": parts})
        return
    t = d.topic
    click.echo(
        f"topic {t.name}: {t.partitions} partition(s), durability {t.durability}, "
        f"compacted {'yes' if t.compacted else 'no'}, retention {_retention(t)}"
    )
    rows = [
        [
            p["partition"],
            p["earliest_offset"],
            p["next_offset"],
            p["last_stable_offset"],
            p["events"],
            _size(p["size_bytes"]),
            p["state"],
        ]
        for p in parts
    ]
    click.echo(_table(["PARTITION", "EARLIEST", "NEXT", "STABLE", "EVENTS", "SIZE", "STATE"], rows))
    for p in parts:
        if p["error"]:
            click.echo(f"partition {p['partition']} {p['state']}: {p['error']}")


@topics.command("delete")
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--if-exists", is_flag=True, help="No topic of that name is not an error.")
@json_option
@client_options
def topics_delete(target: Target, name: str, yes: bool, if_exists: bool, as_json: bool) -> None:
    """Delete topic NAME and all its events."""
    if not yes and _is_terminal(sys.stdin):
        click.confirm(f"delete topic {name} and all its events?", abort=True)

    async def run() -> bool:
        async with target.client() as client:
            try:
                await client.delete_topic(name)
            except UnknownTopicError:
                if not if_exists:
                    raise
                return False
            return True

    existed = _run(run)
    if as_json:
        _emit_json({"deleted": name, "existed": existed})
    elif existed:
        click.echo(f"deleted topic {name}")
    else:
        click.echo(f"no topic {name}; nothing to delete")


# --------------------------------------------------------------------------
# produce


def _parse_headers(values: tuple[str, ...]) -> list[tuple[str, bytes]]:
    out = []
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.UsageError(f"--header {item!r} must look like name=value")
        out.append((name, value.encode()))
    return out


class LineSplitter:
    """Bytes in, complete lines out (sans-IO): ``feed(chunk)`` returns the
    lines that chunk completed (without their ``\\n``), ``finish()`` the
    unterminated last line, if any."""

    def __init__(self) -> None:
        self._partial: list[bytes] = []  # pieces of a line (joined once, not per chunk)

    def feed(self, data: bytes) -> list[bytes]:
        """The lines completed by ``data``; a partial line waits for more."""
        if b"\n" not in data:
            if data:
                self._partial.append(data)
            return []
        if self._partial:
            self._partial.append(data)
            data = b"".join(self._partial)
        lines = data.split(b"\n")
        rest = lines.pop()
        self._partial = [rest] if rest else []
        return lines

    def finish(self) -> list[bytes]:
        """The last line if the input did not end with a newline."""
        rest, self._partial = b"".join(self._partial), []
        return [rest] if rest else []


def _as_key(data: bytes) -> str | bytes:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data


#: Lines per ``send_many`` at most; a slow input is sent as it arrives.
PRODUCE_CHUNK = 5000
_READ_SIZE = 1 << 16


class _Counts:
    """How far ``produce`` got: lines read from the input (handed on to be
    sent) and events acknowledged as stored."""

    def __init__(self) -> None:
        self.read = 0
        self.stored = 0


def _raw_reader(stream: Any) -> Callable[[int], bytes]:
    """A read function for ``stream`` that takes no lock: ``os.read`` on its
    file descriptor. A read left blocked in a worker thread at exit (Ctrl-C
    while stdin waits) then holds nothing the interpreter needs to flush
    (a buffered file's lock there aborts Python). Streams without a file
    descriptor (tests) are read as they are."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return getattr(stream, "read1", stream.read)  # type: ignore[no-any-return]
    return lambda size: os.read(fd, size)


async def _read_lines(
    stream: Any,
    send: trio.MemorySendChannel[list[bytes]],
    reading: trio.CancelScope | None = None,
    counts: _Counts | None = None,
) -> None:
    """Read ``stream`` (binary) in a thread, chunk by chunk, and pass on the
    complete lines of each chunk: whatever a pipe has is sent at once, so
    ``tail -f log | headwater produce t`` sends each line as it comes.
    Cancelling ``reading`` ends the input as its end would (the lines read
    so far, a last partial one included, are still passed on)."""
    read = _raw_reader(stream)
    splitter = LineSplitter()
    counts = counts if counts is not None else _Counts()
    async with send:
        with reading if reading is not None else trio.CancelScope():
            while True:
                try:
                    data = await trio.to_thread.run_sync(read, _READ_SIZE, abandon_on_cancel=True)
                except OSError as exc:
                    raise OSError(exc.errno, f"cannot read the input: {exc.strerror}") from exc
                if not data:
                    break
                lines = splitter.feed(data)
                if lines:
                    counts.read += len(lines)
                    await send.send(lines)
        last = splitter.finish()
        if last:
            counts.read += 1
            await send.send(last)


class _Stopped:
    """The signal that stopped ``produce`` (none yet: ``signum`` is None)."""

    def __init__(self) -> None:
        self.signum: int | None = None


async def _stop_on_signals(
    reading: trio.CancelScope, flushing: trio.CancelScope, flush_timeout: float, stopped: _Stopped
) -> None:
    """At the first SIGINT or SIGTERM stop reading the input and give what
    was read ``flush_timeout`` seconds to be stored; at a second, give up
    at once. (Signals are caught only on the main thread; elsewhere this
    waits for nothing.)"""
    if threading.current_thread() is not threading.main_thread():
        return
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            if stopped.signum is None:
                stopped.signum = signum
                reading.cancel()
                flushing.deadline = trio.current_time() + flush_timeout
            else:
                flushing.cancel()


class _Numbered:
    """The items of one ``send_many`` call, remembering how many were taken
    (so an item the producer refuses is known by its position)."""

    def __init__(self, lines: list[bytes], make: Callable[[bytes], Any]) -> None:
        self.lines = lines
        self.make = make
        self.taken = 0

    def __iter__(self) -> Any:
        for line in self.lines:
            self.taken += 1
            yield self.make(line)


@main.command()
@click.argument("topic")
@click.option("--value", default=None, help="Send this one value instead of reading stdin.")
@click.option("--key", default=None, help="Key for every event.")
@click.option("--key-separator", default=None, help="Split each line into KEY<SEP>VALUE.")
@click.option("--header", "headers", multiple=True, help="A header name=value (repeatable).")
@click.option("--partition", type=int, default=None, help="Send to this partition.")
@click.option(
    "--max-event-bytes",
    type=SIZE,
    default="1MiB",
    show_default=True,
    help="Largest event (key, value and headers, encoded); a longer line stops "
    "produce with its line number. The server's --max-frame-size bounds it too.",
)
@click.option(
    "--flush-timeout",
    type=float,
    default=5.0,
    show_default=True,
    help="Seconds to store what was read after Ctrl-C or SIGTERM; then exit, "
    "counting the events not acknowledged.",
)
@json_option
@client_options
def produce(
    target: Target,
    topic: str,
    value: str | None,
    key: str | None,
    key_separator: str | None,
    headers: tuple[str, ...],
    partition: int | None,
    max_event_bytes: int,
    flush_timeout: float,
    as_json: bool,
) -> None:
    """Send events to TOPIC: one per line of stdin (or --value).

    Lines are sent as they arrive (in batches when they arrive fast) and
    acknowledged once stored (fsynced with durability 'always'). Values are
    the lines' bytes as they are (UTF-8 text reads back as text); keys are
    text where they are valid UTF-8. An event may be at most
    --max-event-bytes (1MiB) encoded. Ctrl-C or SIGTERM stops reading,
    stores what was read (for at most --flush-timeout seconds) and exits
    130 (143 for SIGTERM).
    """
    header_list = _parse_headers(headers)
    if key_separator == "":
        raise click.UsageError("--key-separator must not be empty")
    if max_event_bytes < 1:
        raise click.UsageError("--max-event-bytes must be at least 1 byte")
    if not 0 <= flush_timeout < math.inf:
        raise click.UsageError("--flush-timeout must be a number of seconds >= 0")
    separator = None if key_separator is None else key_separator.encode("utf-8")
    progress = _is_terminal(sys.stderr) and value is None
    counter = Progress("produced", progress)
    plain = not header_list and partition is None
    counts = _Counts()
    stopped = _Stopped()
    per_partition: dict[int, int] = {}

    def item(line: bytes) -> Any:
        event_key: str | bytes | None = key
        if separator is not None:
            head, sep, rest = line.partition(separator)
            if sep:
                event_key, line = _as_key(head), rest
        if plain:
            return (line, event_key)
        out: dict[str, Any] = {"value": line, "key": event_key}
        if header_list:
            out["headers"] = header_list
        if partition is not None:
            out["partition"] = partition
        return out

    async def send_lines(producer: Any, lines: list[bytes]) -> None:
        first_line = counts.stored + 1  # lines are stored in order, each once
        numbered = _Numbered(lines, item)
        try:
            stored = await producer.send_many(topic, numbered)
        except EventTooLarge as exc:
            await producer.flush()  # the lines before it were queued: store them
            counts.stored += numbered.taken - 1
            raise EventTooLarge(
                f"line {first_line + numbered.taken - 1} of the input is too large: "
                f"{exc.message} (--max-event-bytes); the {counts.stored:,} event(s) "
                "before it were stored, nothing after it was sent"
            ) from None
        for event in stored:
            per_partition[event.partition] = per_partition.get(event.partition, 0) + 1
        counts.stored += len(lines)
        counter.update(counts.stored)

    async def run() -> bool:
        """Send everything; False if the flush after a signal ran out of time."""
        with trio.CancelScope() as flushing:  # gets a deadline at a signal
            async with (
                target.client() as client,
                client.producer(
                    serializer="bytes",
                    max_event_bytes=max_event_bytes,
                    max_batch_bytes=max(1 << 20, max_event_bytes),
                ) as producer,
                trio.open_nursery() as nursery,
            ):
                await producer.partitions_of(topic)  # a missing topic fails before reading
                reading = trio.CancelScope()
                nursery.start_soon(_stop_on_signals, reading, flushing, flush_timeout, stopped)
                send, receive = trio.open_memory_channel[list[bytes]](4)
                if value is None:
                    nursery.start_soon(_read_lines, sys.stdin.buffer, send, reading, counts)
                else:
                    counts.read = 1
                    async with send:
                        await send.send([value.encode("utf-8")])
                async with receive:
                    async for lines in receive:
                        chunk = list(lines)
                        while len(chunk) < PRODUCE_CHUNK:
                            try:
                                chunk.extend(receive.receive_nowait())
                            except (trio.WouldBlock, trio.EndOfChannel):
                                break
                        await send_lines(producer, chunk)
                nursery.cancel_scope.cancel()
        return not flushing.cancelled_caught

    try:
        flushed = _run(run)
    finally:
        counter.finish()
    if stopped.signum is not None:
        name = signal.Signals(stopped.signum).name
        click.echo(f"produced {counts.stored:,} event(s) to {topic}", err=True)
        if flushed:
            click.echo(f"stopped by {name}: every event read was stored", err=True)
        else:
            click.echo(
                f"stopped by {name}: {counts.read - counts.stored:,} event(s) read were not "
                f"acknowledged within --flush-timeout {flush_timeout:g}s (they may or may "
                "not be stored)",
                err=True,
            )
        sys.exit(128 + stopped.signum)
    if as_json:
        _emit_json({"topic": topic, "produced": counts.stored, "partitions": per_partition})
    else:
        click.echo(f"produced {counts.stored:,} event(s) to {topic}", err=progress)


# --------------------------------------------------------------------------
# consume


def _start(value: str) -> Any:
    """--from: earliest, latest, an offset, or an ISO-8601 time."""
    if value in ("earliest", "latest"):
        return value
    if value.isdigit():
        return int(value)
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.UsageError(
            f"--from {value!r}: use earliest, latest, an offset, or an ISO time "
            "like 2026-11-28T09:00:00Z"
        ) from None
    if when.tzinfo is None:
        when = when.astimezone()  # local time, as typed
    return Timestamp(int(when.timestamp() * 1000))


def _text(data: Any) -> str:
    if data is None:
        return ""
    if isinstance(data, bytes):
        return data.decode("utf-8", errors="replace")
    return str(data)


def _event_json(event: Event) -> dict[str, Any]:
    def enc(data: Any) -> Any:
        if isinstance(data, bytes):
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError:
                return {"base64": base64.b64encode(data).decode()}
        return data

    return {
        "topic": event.topic,
        "partition": event.partition,
        "offset": event.offset,
        "timestamp": event.timestamp,
        "key": enc(event.key),
        "value": enc(event.value),
        "headers": [[n, enc(v)] for n, v in event.headers],
    }


@main.command()
@click.argument("topic")
@click.option("--group", "-g", default=None, help="Read as a member of this consumer group.")
@click.option(
    "--from",
    "start",
    default="earliest",
    show_default=True,
    metavar="WHERE",
    help="earliest, latest, an OFFSET (per partition), or an ISO-8601 time. "
    "With --group: only where the group has no committed offset.",
)
@click.option("--partition", type=int, default=None, help="Read only this partition.")
@click.option("--follow", "-f", is_flag=True, help="Keep waiting for new events.")
@click.option(
    "--isolation",
    type=click.Choice(["read_committed", "read_uncommitted"]),
    default="read_committed",
    show_default=True,
    help="read_committed: only committed transactions' events; "
    "read_uncommitted: open and aborted ones too.",
)
@click.option(
    "--max", "max_events", type=int, default=None, metavar="N", help="Stop after N events."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="text: the value per line; json: one object per event.",
)
@click.option("--print-key", is_flag=True, help="text format: print KEY<SEP>VALUE.")
@click.option(
    "--key-separator",
    default=None,
    metavar="SEP",
    help="With --print-key (which it implies): put SEP between key and value [TAB].",
)
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.option(
    "--subscription",
    "-s",
    default=None,
    metavar="NAME",
    help="Read as a consumer of this share subscription (created on first use).",
)
@click.option(
    "--mode",
    type=click.Choice(["shared", "exclusive", "failover", "key_shared"]),
    default="shared",
    show_default=True,
    help="With --subscription: the mode a new subscription gets.",
)
@click.option(
    "--ack",
    is_flag=True,
    help="With --subscription: acknowledge each printed event (without it, "
    "printed events go back to the subscription when this command ends).",
)
@client_options
def consume(
    target: Target,
    topic: str,
    group: str | None,
    start: str,
    partition: int | None,
    follow: bool,
    isolation: str,
    max_events: int | None,
    fmt: str,
    print_key: bool,
    key_separator: str | None,
    as_json: bool,
    subscription: str | None,
    mode: str,
    ack: bool,
) -> None:
    """Print events of TOPIC: to the current end, or forever with --follow.

    One event per line: its value as text (--print-key: key, separator,
    value), or with --json one JSON object per event (bytes that are not
    UTF-8 as {"base64": ...}). With --group the printed events are committed
    to the group. Ctrl-C (or SIGTERM) ends reading cleanly: exit 0, and
    with --group what was printed is committed.
    """
    if key_separator is not None:
        print_key = True
    separator = "\t" if key_separator is None else key_separator
    begin = _start(start)
    if max_events is not None and max_events < 1:
        raise click.UsageError("--max must be at least 1")
    if group is not None and partition is not None:
        raise click.UsageError("--partition reads without a group; drop one of them")
    json_out = as_json or fmt == "json"
    out = sys.stdout
    if subscription is None and ack:
        raise click.UsageError("--ack acknowledges events of a --subscription; add one")
    if subscription is not None and (group is not None or partition is not None):
        raise click.UsageError("--subscription reads without --group or --partition")

    def show(event: Event) -> None:
        if json_out:
            out.write(json.dumps(_event_json(event)) + "\n")
        elif print_key:
            out.write(f"{_text(event.key)}{separator}{_text(event.value)}\n")
        else:
            out.write(_text(event.value) + "\n")

    async def run_shared() -> int:
        assert subscription is not None
        if start not in ("earliest", "latest"):
            raise click.UsageError("--from with --subscription is earliest or latest")
        shown = 0
        async with (
            target.client() as client,
            client.subscribe(
                topic,
                subscription,
                mode=mode,
                start=start,
                deserializer="bytes",
                max_unacked=1000 if max_events is None else min(1000, max_events),
            ) as sub,
        ):
            with trio.CancelScope() as reading:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_cancel_on_signal, reading)
                    while max_events is None or shown < max_events:
                        want = 1000 if max_events is None else max_events - shown
                        events = await sub.getmany(want, timeout=0.5 if follow else 0.2)
                        for event in events:
                            show(event)
                        out.flush()
                        if ack and events:
                            await sub.ack_many(events)
                        shown += len(events)
                        counter.update(shown)
                        if not events and not follow:
                            break
                    nursery.cancel_scope.cancel()
        return shown

    # An OFFSET is where each partition starts (with a group: each partition
    # the group has no committed offset for). A partition shorter than that
    # prints only offsets >= OFFSET once they exist; it does not start over.
    from_offset = begin if type(begin) is int else 0
    # Without --follow, look often whether every partition is read to its end.
    wait = 0.5 if follow else 0.05

    async def run() -> int:
        shown = 0
        async with target.client() as client:
            description = await client.describe_topic(topic)
            # The end a read_committed reader can reach is the last stable offset.
            ends = {
                (topic, p.partition): (
                    p.last_stable_offset
                    if isolation == "read_committed" and p.last_stable_offset >= 0
                    else p.next_offset
                )
                for p in description.partitions
            }
            if partition is not None and (topic, partition) not in ends:
                raise InvalidArgument(
                    f"topic {topic} has partitions 0..{len(ends) - 1}, not {partition}"
                )
            skip = dict.fromkeys(ends, from_offset)
            if from_offset and group is not None:
                try:
                    committed = (await client.describe_group(group)).partitions
                except UnknownGroupError:
                    committed = ()
                for p in committed:
                    if p.committed is not None:
                        skip.pop((p.topic, p.partition), None)
            async with client.consumer(
                topic,
                group=group,
                start=begin,
                deserializer="bytes",
                auto_commit=group is not None,
                isolation=isolation,
            ) as consumer:
                if partition is not None:
                    consumer.assign([(topic, partition)])
                # (No checkpoint since the fetchers were started: they begin here.)
                for tp in consumer.assignment():
                    if tp in skip and ends[tp] < from_offset:
                        consumer.seek(*tp, ends[tp])
                with trio.CancelScope() as reading:
                    async with trio.open_nursery() as nursery:
                        # Ctrl-C or SIGTERM ends the reading; what was printed is committed.
                        nursery.start_soon(_cancel_on_signal, reading)
                        while True:
                            want = 1000 if max_events is None else min(1000, max_events - shown)
                            for event in await consumer.getmany(want, timeout=wait):
                                if event.offset < skip.get((event.topic, event.partition), 0):
                                    continue
                                show(event)
                                shown += 1
                            out.flush()
                            counter.update(shown)
                            if max_events is not None and shown >= max_events:
                                break
                            if not follow and _at_end(consumer, ends):
                                break
                        nursery.cancel_scope.cancel()
                if group is not None:
                    await _commit_with_retries(consumer)
        return shown

    # Events going to a file or a pipe, a person watching stderr: count them.
    counter = Progress("consumed", _is_terminal(sys.stderr) and not _is_terminal(out))
    shown = _run(run if subscription is None else run_shared)
    counter.finish()
    if counter.enabled:
        click.echo(f"consumed {shown:,} event(s) from {topic}", err=True)


async def _commit_with_retries(consumer: Any, attempts: int = 5, delay: float = 0.2) -> None:
    """Commit, retrying a retriable failure (a dropped connection the client
    re-makes): committing the same offsets twice is harmless."""
    for attempt in range(1, attempts + 1):
        try:
            await consumer.commit()
            return
        except HeadwaterError as exc:
            if not exc.retriable or attempt == attempts:
                raise
            await trio.sleep(delay * attempt)


async def _cancel_on_signal(scope: trio.CancelScope) -> None:
    """Cancel ``scope`` at the first SIGINT or SIGTERM (then stop listening,
    so a second Ctrl-C interrupts whatever comes next). Signals can only be
    caught on the main thread; elsewhere (a CLI run from a thread) it waits
    for nothing."""
    if threading.current_thread() is not threading.main_thread():
        return
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            scope.cancel()
            return


def _at_end(consumer: Any, ends: dict[tuple[str, int], int]) -> bool:
    for tp in consumer.assignment():
        position = consumer.position(*tp)
        if position is None or position < ends.get(tp, 0):
            return False
    return True


# --------------------------------------------------------------------------
# groups and tree


@main.group()
def groups() -> None:
    """List consumer groups and show their lag."""


@groups.command("list")
@json_option
@client_options
def groups_list(target: Target, as_json: bool) -> None:
    """List every consumer group with its state, members and total lag."""

    async def run() -> list[Any]:
        async with target.client() as client:
            out = []
            for name in sorted(await client.list_groups()):
                try:
                    out.append(await client.describe_group(name))
                except UnknownGroupError:
                    continue  # removed since it was listed
            return out

    described = _run(run)
    summaries: list[dict[str, Any]] = [
        {
            "group": d.name,
            "state": f"share ({d.mode})",
            "members": len(d.consumers),
            "topics": [d.topic],
            "total_lag": sum(p.backlog for p in d.partitions),
        }
        if isinstance(d, ShareDescription)
        else {
            "group": d.group,
            "state": d.state,
            "members": len(d.members),
            "topics": sorted(set(d.topics) | {p.topic for p in d.partitions}),
            "total_lag": sum(p.lag for p in d.partitions),
        }
        for d in described
    ]
    _print_list(
        summaries,
        as_json,
        "no consumer groups yet",
        ["GROUP", "STATE", "MEMBERS", "TOPICS", "LAG"],
        lambda g: [
            g["group"],
            g["state"],
            g["members"],
            ", ".join(map(str, g["topics"])),
            g["total_lag"],
        ],
    )


@groups.command("describe")
@click.argument("group")
@json_option
@client_options
def groups_describe(target: Target, group: str, as_json: bool) -> None:
    """Show a group's members, committed offsets (with their metadata) and lag
    per partition."""

    async def run() -> Any:
        async with target.client() as client:
            return await client.describe_group(group)

    d = _run(run)
    if isinstance(d, ShareDescription):
        _describe_share(d, as_json)
        return
    owners = {(tp.topic, tp.partition): m.member_id for m in d.members for tp in m.assignment}
    parts = [
        {
            "topic": p.topic,
            "partition": p.partition,
            "committed": p.committed,
            "end_offset": p.end_offset,
            "lag": p.lag,
            "owner": owners.get((p.topic, p.partition)),
            "metadata": p.metadata,
        }
        for p in d.partitions
    ]
    if as_json:
        _emit_json(
            {
                "group": d.group,
                "state": d.state,
                "generation": d.generation,
                "topics": list(d.topics),
                "members": [
                    {
                        "member_id": m.member_id,
                        "client_id": m.client_id,
                        **({"instance_id": m.instance_id} if m.instance_id is not None else {}),
                    }
                    for m in d.members
                ],
                "partitions": parts,
                "total_lag": sum(p["lag"] for p in parts),
            }
        )
        return
    click.echo(
        f"group {d.group}: {d.state}, generation {d.generation}, "
        f"{len(d.members)} member(s), total lag {sum(p['lag'] for p in parts):,}"
    )
    rows = [
        [p["topic"], p["partition"], p["committed"], p["end_offset"], p["lag"], p["owner"] or "-"]
        for p in parts
    ]
    headers = ["TOPIC", "PARTITION", "COMMITTED", "END", "LAG", "OWNER"]
    if any(p["metadata"] for p in parts):  # the text stored with commit(metadata=...)
        headers.append("METADATA")
        for row, p in zip(rows, parts, strict=True):
            row.append(p["metadata"] or "-")
    click.echo(_table(headers, rows))


@main.group()
def transactions() -> None:
    """Inspect transactional producers: list, describe."""


def _txn_dict(t: Any) -> dict[str, Any]:
    return {
        "transactional_id": t.transactional_id,
        "producer_id": t.producer_id,
        "epoch": t.epoch,
        "state": t.state,
        "timeout": t.timeout,
        "partitions": [f"{tp.topic}/{tp.partition}" for tp in t.partitions],
        "pending_partitions": [f"{tp.topic}/{tp.partition}" for tp in t.pending_partitions],
        "groups": list(t.groups),
    }


@transactions.command("list")
@json_option
@client_options
def transactions_list(target: Target, as_json: bool) -> None:
    """List every transactional id with its producer id, epoch and state."""

    async def run() -> list[Any]:
        async with target.client() as client:
            return list(await client.list_transactions())

    found = [_txn_dict(t) for t in _run(run)]
    _print_list(
        found,
        as_json,
        "no transactional producers yet",
        ["TRANSACTIONAL ID", "PRODUCER", "EPOCH", "STATE", "TIMEOUT"],
        lambda t: [t["transactional_id"], t["producer_id"], t["epoch"], t["state"], t["timeout"]],
    )


@transactions.command("describe")
@click.argument("transactional_id")
@json_option
@client_options
def transactions_describe(target: Target, transactional_id: str, as_json: bool) -> None:
    """Show one transactional id: producer, state, and the partitions and
    groups of its transaction (with markers still to write)."""

    async def run() -> Any:
        async with target.client() as client:
            return await client.describe_transaction(transactional_id)

    t = _txn_dict(_run(run))
    if as_json:
        _emit_json(t)
        return
    click.echo(
        f"transaction {t['transactional_id']}: {t['state']}, producer {t['producer_id']} "
        f"epoch {t['epoch']}, timeout {t['timeout']:g}s"
    )
    pending = set(t["pending_partitions"])
    rows = [[tp, "pending" if tp in pending else "-"] for tp in t["partitions"]]
    rows += [[f"group {g}", "-"] for g in t["groups"]]
    if rows:
        click.echo(_table(["IN TRANSACTION", "MARKER"], rows))


# --------------------------------------------------------------------------
# run and tables: stream processing jobs


@main.command("run")
@click.argument("job_file", metavar="JOB.py", type=click.Path(dir_okay=False))
@click.option(
    "--url",
    default=None,
    metavar="URL",
    help="Broker to run against. Default: the --url given before the command, else "
    "$HEADWATER_URL, else an embedded broker on --data-dir.",
)
@click.option(
    "--instance",
    default=0,
    show_default=True,
    type=click.IntRange(0, 999_999),
    help="This copy's instance: its static group member id and transactional id "
    "<job>.<instance>. Copies of one job use different instances.",
)
@click.option("--job", "job_name", default=None, help="The Job to run (its name or variable).")
@click.option(
    "--data-dir",
    default="./headwater-data",
    show_default=True,
    help="Embedded mode: the broker's data directory (locked while it runs).",
)
@click.option(
    "--port",
    default=None,
    type=click.IntRange(0, 65535),
    help="Embedded mode: also serve the client protocol on this port (0: a free one).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Embedded mode: address.")
@click.option(
    "--session-timeout",
    default=10.0,
    show_default=True,
    type=click.FloatRange(0.1, 3600),
    help="Seconds a dead copy holds its partitions (a restarted copy is admitted then).",
)
@click.option(
    "--restore-timeout",
    default=600.0,
    show_default=True,
    type=click.FloatRange(0.001),
    help="Seconds a task's state may take to restore from its changelog.",
)
@click.option(
    "--batch",
    "batch_events",
    default=1000,
    show_default=True,
    type=click.IntRange(1),
    help="Most events per batch (one transaction each with exactly_once).",
)
@click.option(
    "--token", envvar="HEADWATER_TOKEN", default=None, help="Token (or $HEADWATER_TOKEN)."
)
@click.option("--token-file", type=click.Path(dir_okay=False), default=None, help="Read the token.")
@click.option("--tls", is_flag=True, default=False, help="Use TLS (system CAs).")
@click.option(
    "--tls-ca", type=click.Path(dir_okay=False), default=None, help="Trust this CA (PEM)."
)
@_log_options
def run(
    job_file: str,
    url: str | None,
    instance: int,
    job_name: str | None,
    data_dir: str,
    port: int | None,
    host: str,
    session_timeout: float,
    restore_timeout: float,
    batch_events: int,
    token: str | None,
    token_file: str | None,
    tls: bool,
    tls_ca: str | None,
    log_format: str,
    log_level: str,
) -> None:
    """Run a stream-processing job (a module defining one headwater.processing.Job).

    Against the broker at --url / $HEADWATER_URL, or else an embedded broker
    on --data-dir (it holds the directory's lock; --port also serves the
    client protocol). Start copies with different --instance values to share
    the work; a copy restarted after a crash takes its partitions back.
    Ctrl-C or SIGTERM stops it cleanly (exit 130 / 143).
    """
    from headwater.processing._cli import RunTarget, run_command
    from headwater.processing._runner import RunConfig

    configure_logging(log_format, level=log_level)
    context = click.get_current_context(silent=True)
    before = context.find_root().params.get("url") if context is not None else None
    chosen = url or before or os.environ.get("HEADWATER_URL") or None
    tls_setting: Any = tls_ca if tls_ca else (True if tls else None)
    secret = _token(token, token_file)
    target = RunTarget(chosen, data_dir, port, host, secret, tls_setting)
    try:
        config = RunConfig(
            instance=instance,
            session_timeout=session_timeout,
            restore_timeout=restore_timeout,
            batch_events=batch_events,
            wait_for_topics=True,
        )
    except HeadwaterError as exc:
        _fail(f"{exc.message} [{exc.code}]", EXIT_USAGE)

    def say(line: str) -> None:
        click.echo(f"headwater run: {line}", err=True)

    code = _guard(
        lambda: run_command(
            job_file,
            job_name,
            target,
            config,
            lambda: _open_client(chosen or DEFAULT_URL, secret, tls_setting),
            say,
            quiet_broker=log_level == "info",
        )
    )
    sys.exit(code)


@main.group()
def tables() -> None:
    """Read the tables of stream-processing jobs."""


@tables.command("get")
@click.argument("job")
@click.argument("table")
@click.argument("key")
@click.option("--key-json", is_flag=True, help="KEY is JSON (a number, a list...), not text.")
@json_option
@client_options
def tables_get(
    target: Target, job: str, table: str, key: str, key_json: bool, as_json: bool
) -> None:
    """Print the committed value of KEY in TABLE of JOB (read from the
    table's changelog through the broker, read_committed; windowed tables
    print one line per window)."""
    from headwater.processing._cli import print_table_value, table_get

    async def run() -> Any:
        async with target.client() as client:
            return await table_get(client, job, table, key, key_json=key_json)

    print_table_value(_run(run), as_json)


def _describe_share(d: ShareDescription, as_json: bool) -> None:
    """Print a share subscription: per partition backlog, in-flight,
    waiting, acked, redelivered and dead-lettered counts."""
    parts = [
        {
            "partition": p.partition,
            "ack_floor": p.ack_floor,
            "end_offset": p.end_offset,
            "backlog": p.backlog,
            "in_flight": p.in_flight,
            "waiting": p.waiting,
            "acked": p.acked,
            "redelivered": p.redelivered,
            "dead_lettered": p.dead_lettered,
        }
        for p in d.partitions
    ]
    totals = {
        k: sum(int(p[k]) for p in parts)
        for k in ("backlog", "in_flight", "waiting", "acked", "redelivered", "dead_lettered")
    }
    if as_json:
        _emit_json(
            {
                "subscription": d.name,
                "kind": "share",
                "topic": d.topic,
                "mode": d.mode,
                "dead_letter_topic": d.dead_letter_topic,
                "consumers": list(d.consumers),
                "partitions": parts,
                **{f"total_{k}": v for k, v in totals.items()},
            }
        )
        return
    click.echo(
        f"share subscription {d.name} of {d.topic}: {d.mode}, {len(d.consumers)} consumer(s), "
        f"backlog {totals['backlog']:,}, in flight {totals['in_flight']:,}, "
        f"redelivered {totals['redelivered']:,}, dead-lettered {totals['dead_lettered']:,} "
        f"(to {d.dead_letter_topic})"
    )
    headers = ["PARTITION", "ACK FLOOR", "END", "BACKLOG", "IN FLIGHT", "WAITING", "ACKED"]
    headers += ["REDELIVERED", "DEAD-LETTERED"]
    click.echo(_table(headers, [list(p.values()) for p in parts]))


_STATE_COLOURS = {
    "running": "green",
    "starting": "yellow",
    "restarting": "yellow",
    "stopping": "yellow",
    "stopped": "bright_black",
    "failed": "red",
}
_STATE = re.compile(r"(\[\w+\] )(\w+)")


def color_tree(text: str) -> str:
    """Colour the states (and restarts, failures) of a rendered tree; click
    strips the colours when the output is not a terminal."""
    out = []
    for line in text.splitlines():
        line = _STATE.sub(
            lambda m: m.group(1) + click.style(m.group(2), fg=_STATE_COLOURS.get(m.group(2))),
            line,
            count=1,
        )
        line = re.sub(r"(restarts=\d+)", lambda m: click.style(m.group(1), fg="yellow"), line)
        line = re.sub(r"(last_failure=.*)$", lambda m: click.style(m.group(1), fg="red"), line)
        out.append(line)
    return "\n".join(out)


def tree_summary(root: ActorSnapshot) -> str:
    """One line under the tree: how many nodes, in which states, restarts."""
    nodes = root.walk()
    states: dict[str, int] = {}
    for node in nodes:
        states[node.state] = states.get(node.state, 0) + 1
    by_state = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
    restarts = sum(node.restarts for node in nodes)
    return f"{len(nodes)} nodes ({by_state}), {restarts} restart(s)"


@main.command()
@json_option
@client_options
def tree(target: Target, as_json: bool) -> None:
    """Draw the live supervision tree of the server, or of an application's
    actors listener with --url headwater+actors://HOST:PORT (serve_actors)."""

    async def run() -> Any:
        if target.url.startswith(ACTORS_SCHEME):
            async with _open_actors(target) as (client, _host):
                return (await client.tree(target.url)).as_dict()
        async with target.client() as client:
            return await client.tree()

    root = _run(run)
    if as_json:
        _emit_json(root)
        return
    try:
        snapshot = ActorSnapshot.from_dict(root)
        click.echo(color_tree(snapshot.render()))  # colours only on a terminal
        click.echo(tree_summary(snapshot))
    except (KeyError, TypeError, AttributeError) as exc:
        _fail(f"the server sent a tree this client cannot draw ({exc})", EXIT_SERVER)


# --------------------------------------------------------------------------
# repair


@main.command()
@click.option("--data-dir", default="./headwater-data", show_default=True, help="Where data lives.")
@click.option("--topic", default=None, help="Only this topic.")
@click.option("--partition", type=int, default=None, help="Only this partition (needs --topic).")
@click.option("--yes", "-y", is_flag=True, help="Repair; without it, only report.")
@json_option
def repair(
    data_dir: str, topic: str | None, partition: int | None, yes: bool, as_json: bool
) -> None:
    """Find damaged records in a stopped broker's data directory; with --yes,
    drop them.

    Only the damaged records go: the offsets they held become a gap that
    readers skip, and every valid record after the damage keeps its offset.
    Without --yes nothing is changed and the exit status is 1 if anything is
    damaged. Stop the broker first.
    """
    from headwater.broker._repair import repair_data_dir

    async def run() -> Any:
        return await trio.to_thread.run_sync(
            lambda: repair_data_dir(data_dir, topic=topic, partition=partition, apply=yes)
        )

    results = _run(run)
    damaged = [r for r in results if not r.report.clean]
    if as_json:
        _emit_json(
            [
                {
                    "topic": r.topic,
                    "partition": r.partition,
                    "repaired": r.report.applied and not r.report.clean,
                    "gaps": [list(g) for g in r.report.gaps],
                    "damages": [attrs.asdict(d) for d in r.report.damages],
                }
                for r in results
            ]
        )
    else:
        for r in damaged:
            verb = "repaired" if yes else "damaged"
            click.echo(f"{r.topic}/{r.partition}: {verb}")
            for d in r.report.damages:
                click.echo(f"  {d.describe()}")
        checked = f"{len(results)} partition(s) checked"
        if not damaged:
            click.echo(f"{checked}: no damage found")
        elif yes:
            click.echo(f"{checked}: {len(damaged)} repaired")
        else:
            click.echo(
                f"{checked}: {len(damaged)} damaged; nothing was changed. "
                "Run again with --yes to drop the damaged records"
            )
    if damaged and not yes:
        sys.exit(EXIT_SERVER)


# --------------------------------------------------------------------------
# actors: an application's actors listener (serve_actors)

ACTORS_SCHEME = "headwater+actors://"
DEFAULT_ACTORS_URL = "headwater+actors://127.0.0.1:7701"


@asynccontextmanager
async def _open_actors(target: Target) -> AsyncIterator[tuple[Any, str]]:
    """An actor client connected to the listener at ``target.url``, and the
    ``host:port`` it reached. Failing to connect raises :class:`_NotConnected`
    (a broker's port is a :class:`~headwater.WrongListenerError`, exit 2)."""
    from headwater.actors import open_actor_client
    from headwater.actors._wire import parse_listener_url
    from headwater.client._tcp import _ssl_context
    from headwater.transport import MessageRegistry

    try:
        host, port = parse_listener_url(target.url)
        context = _ssl_context(target.tls, False)
    except HeadwaterError as exc:
        raise _NotConnected(exc, EXIT_USAGE) from exc
    async with open_actor_client(
        MessageRegistry("headwater-cli"), token=target.token, ssl_context=context, keepalive=None
    ) as client:
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                await client.tree(target.url)  # connects, checks the listener's kind
        except trio.TooSlowError:
            raise _NotConnected(
                ConnectionLostError(f"no answer from {target.url} within {CONNECT_TIMEOUT}s"),
                EXIT_CONNECTION,
            ) from None
        except HeadwaterError as exc:
            code = EXIT_USAGE if isinstance(exc, UsageError) else EXIT_CONNECTION
            if isinstance(exc, AuthenticationError | ConnectionLostError):
                code = EXIT_CONNECTION
            raise _NotConnected(exc, code) from exc
        yield client, f"{host}:{port}"


def actors_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--url (an actors listener), --token, --token-file, --tls, --tls-ca."""

    @click.option(
        "--url",
        envvar="HEADWATER_ACTORS_URL",
        default=DEFAULT_ACTORS_URL,
        show_default=True,
        help="Actors listener (serve_actors) to use (or $HEADWATER_ACTORS_URL).",
    )
    @click.option(
        "--token", envvar="HEADWATER_TOKEN", default=None, help="Token (or $HEADWATER_TOKEN)."
    )
    @click.option(
        "--token-file", type=click.Path(dir_okay=False), default=None, help="Read the token."
    )
    @click.option("--tls", is_flag=True, default=False, help="Use TLS (system CAs).")
    @click.option(
        "--tls-ca", type=click.Path(dir_okay=False), default=None, help="Trust this CA (PEM)."
    )
    def wrapper(
        url: str,
        token: str | None,
        token_file: str | None,
        tls: bool,
        tls_ca: str | None,
        **kwargs: Any,
    ) -> Any:
        tls_setting: Any = tls_ca if tls_ca else (True if tls else None)
        return fn(Target(url, _token(token, token_file), tls_setting), **kwargs)

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


@main.group()
def actors() -> None:
    """Poke an application's actors (its serve_actors listener): kill, inspect.

    The tree of such an application: headwater tree --url headwater+actors://HOST:PORT.
    """


def _actor_url(target: Target, host_port: str, path: str) -> str:
    clean = "/" + path.strip("/")
    if clean == "/":
        raise click.UsageError("give an actor path like /workers/echo")
    return f"headwater://{host_port}{clean}"


@actors.command("kill")
@click.argument("path")
@click.option("--reason", default="killed from the command line", show_default=True)
@json_option
@actors_options
def actors_kill(target: Target, path: str, reason: str, as_json: bool) -> None:
    """Crash the actor at PATH on purpose; its supervisor applies its policy
    (restart, give up, ...). Watch it with headwater tree --url ..."""

    async def run() -> str:
        async with _open_actors(target) as (client, host_port):
            url = _actor_url(target, host_port, path)
            await client.kill(url, reason)
            return url

    url = _run(run)
    if as_json:
        _emit_json({"killed": "/" + path.strip("/"), "url": url})
    else:
        click.echo(f"killed {'/' + path.strip('/')}")


@actors.command("inspect")
@click.argument("path")
@json_option
@actors_options
def actors_inspect(target: Target, path: str, as_json: bool) -> None:
    """Show what the actor at PATH says of itself (its inspect(): by default
    its public attributes), read between two of its messages."""

    async def run() -> Any:
        async with _open_actors(target) as (client, host_port):
            ref = await client.lookup(_actor_url(target, host_port, path))
            return await ref.inspect(timeout=CONNECT_TIMEOUT)

    shown = _run(run)
    if as_json:
        _emit_json(shown)
    elif isinstance(shown, dict):
        width = max((len(str(k)) for k in shown), default=0)
        for key, value in shown.items():
            click.echo(f"{str(key).ljust(width)}  {value}")
    else:
        click.echo(str(shown))


# --------------------------------------------------------------------------
# bench


def _bench_progress(label: str) -> Callable[[int, int, str], None]:
    """The callback that draws and moves a progress bar on stderr."""
    state: dict[str, Any] = {"bar": None}

    def progress(done: int, total: int, what: str) -> None:
        bar = state["bar"]
        if bar is None:
            bar = state["bar"] = click.progressbar(
                length=total, label=label, file=sys.stderr, show_pos=True, width=30
            )
            bar.__enter__()
        bar.label = f"{label}: {what}"[:70].ljust(70)
        bar.update(done - bar.pos)
        if done >= total:
            bar.__exit__(None, None, None)

    return progress


def _bench_table(rows: list[dict[str, Any]]) -> str:
    figures = [r for r in rows if r.get("metric") != "skipped"]
    body = []
    for r in figures:
        value = r["value"]
        shown = f"{value:,.2f}" if isinstance(value, float) and value < 100 else f"{value:,.0f}"
        spread = r.get("spread_pct")
        body.append(
            [
                r.get("target", ""),
                r["case"],
                r["metric"],
                shown,
                r.get("unit", ""),
                "" if spread is None else f"±{spread:.0f}%",
            ]
        )
    return _table(["TARGET", "CASE", "METRIC", "VALUE", "UNIT", "SPREAD"], body)


@main.command()
@click.option("--quick", is_flag=True, help="The short version (a few minutes with peers).")
@click.option(
    "--local",
    is_flag=True,
    help="Headwater alone, embedded and over TCP (no NATS/Redis needed).",
)
@click.option(
    "--write-docs",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write the peer tables into this markdown file (e.g. docs/benchmarks.md).",
)
@json_option
def bench(quick: bool, local: bool, write_docs: str | None, as_json: bool) -> None:
    """Measure Headwater beside NATS JetStream and Redis Streams on this machine.

    Runs the shared peer benchmark (../shared/bench, or $HEADWATER_PEER_BENCH):
    the same produce, consume and latency workload against Headwater (TCP and
    embedded, durability always and interval) and the peers (most durable and
    default settings), three interleaved rounds, and prints the medians and
    the ratios (ratio_vs_best_peer, ratio_p99_vs_best_peer). Without the
    peers (or with --local) it measures Headwater alone.
    """
    from headwater import bench as hwbench

    rows: list[dict[str, Any]] = []
    if not local:
        progress = _bench_progress("peers")
        rows = hwbench.run_peers(quick, progress if _is_terminal(sys.stderr) else None)
        if rows and rows[0].get("case") == "all" and rows[0].get("metric") == "skipped":
            click.echo(
                f"note: {rows[0].get('why', 'peers unavailable')}; measuring Headwater alone",
                err=True,
            )
            rows = []
            local = True
        elif write_docs:
            machine = hwbench.machine_facts(hwbench.find_bench_dir())
            command = "headwater bench" + (" --quick" if quick else "")
            hwbench.write_markdown(write_docs, rows, machine, command)
    if local:
        progress = _bench_progress("headwater")
        rows = list(hwbench.run_local(quick, progress if _is_terminal(sys.stderr) else None))
    if as_json:
        for row in rows:
            _emit_json(row)
        return
    for row in rows:
        if row.get("metric") == "skipped":
            click.echo(f"skipped {row['case']}: {row.get('why', '')}", err=True)
    click.echo(_bench_table(rows))
