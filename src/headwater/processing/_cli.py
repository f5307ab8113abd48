"""What ``headwater run`` and ``headwater tables get`` do (the click commands
in :mod:`headwater.cli` only parse options and call these).

``run`` loads a job module (:func:`load_job`), picks a broker (DECISIONS #26:
the command's ``--url``, the group's ``--url``, ``$HEADWATER_URL``; with none
of them it opens an *embedded* broker on ``--data-dir``, holding its lock,
and serves the client protocol when given ``--port``), says which mode it
chose on stderr, and runs one copy of the job (:func:`~headwater.processing._runner.run_job`)
until SIGINT or SIGTERM, which stop it cleanly (leave the group, abort an
open batch, close the broker) with exit status 130 or 143.

``tables get`` reads a table's committed changelog partition through the
broker (read_committed) and prints the latest value of one key.
"""

from __future__ import annotations

import json
import logging
import runpy
import signal
import sys
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import attrs
import trio

from headwater._errors import ConfigError, HeadwaterError, NotFoundError, UnknownTopicError
from headwater.client import Client
from headwater.processing._runner import RunConfig, open_job_runner

__all__ = ["RunTarget", "load_job", "print_table_value", "run_command", "table_get"]


def load_job(path: str, name: str | None = None) -> Any:
    """Run the module at ``path`` and return its :class:`~headwater.processing.Job`:
    the only one it defines at module level, or the one named ``name`` (its
    job name or its variable). Raises :class:`~headwater.ConfigError` when
    there is none, several, or the file cannot be run."""
    from headwater.processing._job import Job

    try:
        namespace = runpy.run_path(path, run_name="__headwater_job__")
    except FileNotFoundError:
        raise ConfigError(f"no job file {path!r}: give the path of a Python module") from None
    except HeadwaterError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"running {path} failed: {type(exc).__qualname__}: {exc}; fix the module"
        ) from exc
    jobs = {var: value for var, value in namespace.items() if isinstance(value, Job)}
    if name is not None:
        chosen = [j for var, j in jobs.items() if name in (var, j.name)]
        if not chosen:
            known = ", ".join(sorted({j.name for j in jobs.values()})) or "none"
            raise ConfigError(f"{path} defines no job named {name!r} (jobs: {known})")
        return chosen[0]
    unique = list({id(j): j for j in jobs.values()}.values())
    if len(unique) != 1:
        found = ", ".join(sorted(j.name for j in unique)) or "none"
        raise ConfigError(
            f"{path} must define exactly one Job at module level (found: {found}); "
            "name one with --job NAME"
        )
    return unique[0]


@attrs.frozen
class RunTarget:
    """Where ``run`` gets its broker: ``url`` (``None``: embedded on
    ``data_dir``, serving the client protocol on ``host``:``port`` when
    ``port`` is given), and how to connect (``token``, ``tls``)."""

    url: str | None
    data_dir: str = "./headwater-data"
    port: int | None = None
    host: str = "127.0.0.1"
    token: str | None = None
    tls: Any = None


@asynccontextmanager
async def _broker_client(
    target: RunTarget,
    say: Callable[[str], None],
    open_remote: Callable[[], AbstractAsyncContextManager[Client]],
) -> AsyncIterator[Client]:
    if target.url is not None:
        async with open_remote() as client:
            say(f"connected to {target.url} (remote mode: --url / $HEADWATER_URL is set)")
            yield client
        return
    from headwater.broker import ServerConfig, open_broker, open_server

    async with open_broker(target.data_dir) as broker:
        if target.port is None:
            say(
                f"embedded broker on {target.data_dir} (no --url or $HEADWATER_URL given; "
                "add --port P to let other programs reach it)"
            )
            async with broker.connect() as client:
                yield client
            return
        config = ServerConfig(data_dir=target.data_dir, host=target.host, port=target.port)
        async with open_server(broker, config) as server:
            say(
                f"embedded broker on {target.data_dir}, serving the client protocol on "
                f"headwater://{target.host}:{server.port} (no --url or $HEADWATER_URL given)"
            )
            async with broker.connect() as client:
                yield client


async def _signals(scope: trio.CancelScope, got: list[int]) -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            got.append(signum)
            scope.cancel()
            return


def run_command(
    path: str,
    job_name: str | None,
    target: RunTarget,
    config: RunConfig,
    open_remote: Callable[[], AbstractAsyncContextManager[Client]],
    say: Callable[[str], None],
    *,
    quiet_broker: bool = False,
) -> int:
    """``headwater run``: load the job, run it until SIGINT/SIGTERM; return
    the exit status (130 / 143 after a signal). Errors are raised (typed) for
    the CLI to print. ``quiet_broker``: the embedded broker's and the actors'
    info lines are not shown (the job's are), only their warnings."""
    job = load_job(path, job_name)
    if quiet_broker:
        for name in ("headwater.supervision", "headwater.broker", "headwater.server"):
            logging.getLogger(name).setLevel(logging.WARNING)
    got: list[int] = []

    async def main() -> None:
        # A signal stops the job only: it leaves its group and aborts its
        # open batch while the (embedded) broker is still up, then the
        # broker closes cleanly.
        async with (
            _broker_client(target, say, open_remote) as client,
            trio.open_nursery() as nursery,
        ):
            stop = trio.CancelScope()
            nursery.start_soon(_signals, stop, got)
            with stop:
                async with open_job_runner(job, client, config):
                    say(
                        f"running job {job.name!r} as instance {config.instance} "
                        f"({job.processing}); Ctrl-C stops it"
                    )
                    await trio.sleep_forever()
            nursery.cancel_scope.cancel()

    trio.run(main)
    if got:
        name = signal.Signals(got[0]).name
        say(f"stopped by {name}: every committed batch is kept; run again to resume")
        return 130 if got[0] == signal.SIGINT else 143
    return 0


def _parse_key(text: str, as_json: bool) -> Any:
    if not as_json:
        return text
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"--key-json {text!r} is not JSON: {exc}") from None
    return tuple(value) if isinstance(value, list) else value


async def table_get(
    client: Client, job: str, table: str, key_text: str, *, key_json: bool = False
) -> dict[str, Any]:
    """Read ``table`` of ``job`` at ``key`` from its committed changelog
    (``<job>-<table>-changelog``, read_committed, the key's partition):
    ``{"job", "table", "key", "partition", "value"}`` for a table, with
    ``"windows": [[start, end, value], ...]`` instead of ``"value"`` for a
    windowed one. A missing key raises :class:`~headwater.NotFoundError`."""
    from headwater.processing._job import _table_info
    from headwater.processing._serde import hashable, loads

    key = _parse_key(key_text, key_json)
    changelog = f"{job}-{table}-changelog"
    try:
        description = await client.describe_topic(changelog)
    except UnknownTopicError:
        raise UnknownTopicError(
            f"job {job!r} has no table {table!r} here (no topic {changelog!r}): check the "
            "names (`headwater topics list` shows <job>-<table>-changelog topics)"
        ) from None
    info = _table_info(table, changelog, description.topic.partitions, False)
    partition = info.partition_of(key)
    wanted = info.key_to_bytes(key)
    end_info = description.partitions[partition]
    end = end_info.last_stable_offset if end_info.last_stable_offset >= 0 else end_info.next_offset
    plain: Any = _MISSING
    windows: dict[tuple[float, float], Any] = {}
    if end > end_info.earliest_offset:
        async with client.consumer(
            changelog, start="earliest", deserializer="bytes", max_wait=0.1
        ) as consumer:
            consumer.assign([(changelog, partition)])
            with trio.fail_after(60):
                while (consumer.position(changelog, partition) or 0) < end:
                    for event in await consumer.getmany(max_events=5000, timeout=0.2):
                        if event.offset >= end:
                            break
                        raw = event.key if isinstance(event.key, bytes) else b""
                        if raw == wanted:
                            plain = _MISSING if event.value is None else loads(event.value)
                            continue
                        decoded = hashable(loads(raw)) if raw else None
                        if isinstance(decoded, tuple) and len(decoded) == 3 and decoded[0] == key:
                            span = (decoded[1], decoded[2])
                            if event.value is None:
                                windows.pop(span, None)
                            else:
                                value = loads(event.value)
                                windows[span] = (
                                    value[0] if isinstance(value, list) and value else value
                                )
    result: dict[str, Any] = {"job": job, "table": table, "key": key, "partition": partition}
    if plain is not _MISSING:
        result["value"] = plain
        return result
    if windows:
        result["windows"] = [[s, e, v] for (s, e), v in sorted(windows.items())]
        return result
    raise NotFoundError(
        f"key {key!r} is not in table {table!r} of job {job!r} (committed changelog "
        f"{changelog} partition {partition}); keys are text unless you give --key-json"
    )


_MISSING: Any = object()


def print_table_value(result: dict[str, Any], as_json: bool) -> None:
    """Print what :func:`table_get` found."""
    if as_json:
        sys.stdout.write(json.dumps(result, default=repr) + "\n")
        return
    if "value" in result:
        sys.stdout.write(f"{_text(result['value'])}\n")
        return
    for start, end, value in result["windows"]:
        sys.stdout.write(f"[{start}, {end})\t{_text(value)}\n")


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
