"""Where one event's end-to-end latency goes, stage by stage (issue 17).

The latency workload of the peers bench (one 100 B event every 1 ms, the
producer awaits each acknowledgement, a consumer records receive - send),
with a timestamp (``time.monotonic_ns``, one clock for every process of the
machine) at each stage of each event. The stages are taken by wrapping
functions from this script only (nothing stays in the hot path):

producer side   send call, [frame written], [server frame read], partition
                actor receives, staged, fsync start, fsync end, hand-back on
                the loop, durable wait returns, [ack written], [client ack
                read], ack wake (``send`` returns);
consumer side   subscription woken (the long poll's ``wait_for_data``),
                fetch read done, [push frame written], [consumer frame
                read], handed to the caller (``getmany`` returns).

Bracketed stages exist over TCP only (a real ``headwater serve`` process,
wrapped the same way; producer and consumer use one connection each, as
the peers bench's two processes). Embedded runs producer, consumer and
broker on one loop. Each stage is reported as the time since the previous
one (median and p99 over the events), plus what the slowest 1% share
(garbage collections, slow fsyncs, the thread hand-off), and each
process's CPU time and Trio task steps per event, by task (steps do not
move with the machine's load as times do: on a shared machine they are the
figure to compare between two versions).

    PYTHONPATH=src python benchmarks/latency_stages.py [--mode both|tcp|embedded]
        [--count 3000] [--rate 1000] [--json out.json]
"""

from __future__ import annotations

import argparse
import atexit
import gc
import itertools
import json
import os
import runpy
import shutil
import struct
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

HDR = struct.Struct(">qq")  # (sequence, send time ns)

Record = tuple[str, int, int, int]  # (stage, t_ns, lo offset, hi offset); -1 = no offset
RECORDS: list[Record] = []
LAST_FETCH = [-1, -1]  # the offsets the last fetch returned (a push carries them)
_now = time.monotonic_ns


def _mark(stage: str, lo: int = -1, hi: int = -1) -> None:
    RECORDS.append((stage, _now(), lo, hi))


# ------------------------------------------------------------------ patches


def _wrap_sync(owner: Any, name: str, after: Callable[..., None]) -> None:
    orig = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = orig(*args, **kwargs)
        after(result, *args, **kwargs)
        return result

    setattr(owner, name, wrapper)


def _wrap_before(owner: Any, name: str, before: Callable[..., None]) -> None:
    orig = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        before(*args, **kwargs)
        return orig(*args, **kwargs)

    setattr(owner, name, wrapper)


def _wrap_async(owner: Any, name: str, after: Callable[..., None]) -> None:
    orig = getattr(owner, name)

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = await orig(*args, **kwargs)
        after(result, *args, **kwargs)
        return result

    setattr(owner, name, wrapper)


def install_broker_patches() -> None:
    """Stages inside the broker (embedded, or the ``serve`` process)."""
    from headwater._protocol import Fetch, Produce
    from headwater.broker import _actors, _service
    from headwater.journal import _async, _log

    def actor_handle_before(self: Any, message: Any) -> None:
        if type(message) is _actors.AppendBatch:
            _mark("actor receives")

    orig_handle = _actors.PartitionActor.handle

    async def handle(self: Any, message: Any) -> Any:
        actor_handle_before(self, message)
        return await orig_handle(self, message)

    _actors.PartitionActor.handle = handle  # type: ignore[method-assign]

    _wrap_sync(
        _async.AsyncLog,
        "write",
        lambda h, *a, **k: _mark("staged", h.base_offset, h.next_offset),
    )

    orig_run_sync = _log.Log.run_sync

    def run_sync(self: Any, work: Any, *args: Any, **kwargs: Any) -> Any:
        _mark("fsync start", 0, work.target_offset)
        try:
            return orig_run_sync(self, work, *args, **kwargs)
        finally:
            _mark("fsync end", 0, work.target_offset)

    _log.Log.run_sync = run_sync  # type: ignore[method-assign]

    def outcome_before(self: Any, outcome: Any) -> None:
        if outcome.work is not None:
            _mark("hand-back on loop", 0, outcome.work.target_offset)

    _wrap_before(_async.AsyncLog, "_outcome", outcome_before)

    orig_wait_durable = _async.AsyncLog.wait_durable

    async def wait_durable(self: Any, end_offset: int, generation: int, **kw: Any) -> None:
        await orig_wait_durable(self, end_offset, generation, **kw)
        _mark("durable wait returns", end_offset - 1, end_offset)

    _async.AsyncLog.wait_durable = wait_durable  # type: ignore[method-assign]

    orig_wait_for_data = _async.AsyncLog.wait_for_data

    async def wait_for_data(self: Any, offset: int) -> None:
        await orig_wait_for_data(self, offset)
        _mark("subscription woken", offset, self.visible_end)

    _async.AsyncLog.wait_for_data = wait_for_data  # type: ignore[method-assign]

    orig_service_handle = _service.BrokerService.handle

    async def service_handle(self: Any, request: Any, **kwargs: Any) -> Any:
        if type(request) is Produce:
            _mark("service takes produce")
        result = await orig_service_handle(self, request, **kwargs)
        if type(request) is Fetch and result.records:
            _mark("fetch read done", request.offset, result.next_offset)
            LAST_FETCH[:] = [request.offset, result.next_offset]
        elif type(request) is Produce:
            _mark("produce answered", result.base_offset, result.base_offset + 1)
        return result

    _service.BrokerService.handle = service_handle  # type: ignore[method-assign]


def install_connection_patches(side: str) -> None:
    """Frame stages of the sans-IO connections (``side`` is "server" or "client")."""
    import trio

    from headwater.transport import _connection as c

    pending: list[tuple[str, int, int]] = []  # labels of frames handed to the next send_all
    produce_ids: set[tuple[int, int]] = set()  # (connection, request id)

    if side == "client":

        def sent(request_id: int, self: Any, op: str, *a: Any, **k: Any) -> None:
            if op == "produce":
                produce_ids.add((id(self), request_id))
                self._hw_labels = [*getattr(self, "_hw_labels", []), ("frame written", -1, -1)]

        _wrap_sync(c.ClientConnection, "send_request", sent)

        def event(ev: Any, self: Any) -> None:
            if isinstance(ev, c.ResponseReceived) and (id(self), ev.id) in produce_ids:
                produce_ids.discard((id(self), ev.id))
                _mark("client ack read")
            elif isinstance(ev, c.PushReceived) and ev.kind == "fetch":
                _mark("consumer frame read")

        _wrap_sync(c.ClientConnection, "next_event", event)
    else:

        def request(ev: Any, self: Any) -> None:
            if isinstance(ev, c.RequestReceived) and ev.op == "produce":
                produce_ids.add((id(self), ev.id))
                _mark("server frame read")

        _wrap_sync(c.ServerConnection, "next_event", request)

        def responded(_r: Any, self: Any, request_id: int, *a: Any, **k: Any) -> None:
            if (id(self), request_id) in produce_ids:
                produce_ids.discard((id(self), request_id))
                self._hw_labels = [*getattr(self, "_hw_labels", []), ("ack written", -1, -1)]

        _wrap_sync(c.ServerConnection, "send_response", responded)

        def pushed(_r: Any, self: Any, kind: str, *a: Any, **k: Any) -> None:
            if kind == "fetch":
                label = ("push written", *LAST_FETCH)
                self._hw_labels = [*getattr(self, "_hw_labels", []), label]

        _wrap_sync(c.ServerConnection, "send_push", pushed)

    def to_send(_data: bytes, self: Any) -> None:
        labels = getattr(self, "_hw_labels", None)
        if labels:
            pending.extend(labels)
            self._hw_labels = []

    _wrap_sync(c._Connection, "data_to_send", to_send)
    orig_send_all = trio.SocketStream.send_all

    async def send_all(self: Any, data: Any) -> None:
        labels = pending[:]
        pending.clear()
        await orig_send_all(self, data)
        for label in labels:
            _mark(*label)

    trio.SocketStream.send_all = send_all  # type: ignore[method-assign]


def install_gc_marks() -> None:
    def callback(phase: str, info: dict[str, Any]) -> None:
        _mark(f"gc {phase}", info["generation"], -1)

    gc.callbacks.append(callback)


# --------------------------------------------------------------- the workload


async def workload(client_for: Callable[[], Any], count: int, rate: int, same: bool) -> list[Any]:
    """Send ``count`` events at ``rate``/s awaiting each ack; returns
    (sequence, sent ns, ack ns, offset) per event. Consumer stages are marked."""
    import trio

    from headwater.client import Client

    events: list[tuple[int, int, int, int]] = []
    tail = os.urandom(100 - HDR.size)
    async with client_for() as pclient:
        await pclient.create_topic("lat", partitions=1)
        cm: Any = _same(pclient) if same else client_for()
        async with cm as cclient:
            assert isinstance(cclient, Client)
            async with (
                pclient.producer(serializer="bytes", linger=0.0) as producer,
                cclient.consumer(["lat"], start="earliest", deserializer="bytes") as consumer,
                trio.open_nursery() as nursery,
            ):
                await producer.partitions_of("lat")
                await consumer.getmany(1, timeout=0.01)
                got = 0

                async def send() -> None:
                    start = trio.current_time()
                    for i in range(count):
                        await trio.sleep_until(start + i / rate)
                        t = _now()
                        ev = await producer.send("lat", HDR.pack(i, t) + tail)
                        events.append((i, t, _now(), ev.offset))

                steps = _StepCounter()
                trio.lowlevel.add_instrument(steps)
                cpu = time.process_time()
                nursery.start_soon(send)
                with trio.move_on_after(count / rate * 3 + 30):
                    while got < count:
                        batch = await consumer.getmany(1000, timeout=0.2)
                        if batch:
                            _mark("handed to caller", batch[0].offset, batch[-1].offset + 1)
                            got += len(batch)
                COST["cpu_us_per_event"] = (time.process_time() - cpu) * 1e6 / count
                COST["task_steps_per_event"] = steps.steps / count
                COST["task_steps_by_task"] = steps.per_event(count)
                trio.lowlevel.remove_instrument(steps)
                nursery.cancel_scope.cancel()
    return events


COST: dict[str, Any] = {}
"""CPU time and Trio task steps per event of the last workload (this process)."""


class _StepCounter:
    """Trio task steps, in all and by task (the last part of its name)."""

    def __init__(self) -> None:
        self.steps = 0
        self.by_task: dict[str, int] = defaultdict(int)

    def before_task_step(self, task: Any) -> None:
        self.steps += 1
        self.by_task[str(task.name).rsplit(".", 1)[-1]] += 1

    def per_event(self, count: int) -> dict[str, float]:
        """Steps per event by task, the busiest first (a step count does not
        move with the machine's load, as times do: compare it across runs)."""
        ranked = sorted(self.by_task.items(), key=lambda kv: -kv[1])
        return {name: round(n / count, 2) for name, n in ranked[:8] if n / count >= 0.05}


class _same:
    def __init__(self, client: Any) -> None:
        self.client = client

    async def __aenter__(self) -> Any:
        return self.client

    async def __aexit__(self, *exc: object) -> None:
        return None


# --------------------------------------------------------------- the analysis

PRODUCER = [
    "frame written",
    "server frame read",
    "service takes produce",
    "actor receives",
    "staged",
    "fsync start",
    "fsync end",
    "hand-back on loop",
    "durable wait returns",
    "produce answered",
    "ack written",
    "client ack read",
]
CONSUMER = [
    "subscription woken",
    "fetch read done",
    "push written",
    "consumer frame read",
    "handed to caller",
]


def assign(events: list[tuple[int, int, int, int]], records: list[Record]) -> list[dict[str, int]]:
    """Per event, the time of each stage: the first record covering the
    event's offset where the stage knows one; else the next unused record
    inside the producer's send..ack window (two processes' marks of one
    frame may come in either order, so a window, not a chain)."""
    by_stage: dict[str, list[Record]] = defaultdict(list)
    for r in sorted(records, key=lambda r: r[1]):
        by_stage[r[0]].append(r)
    # The k-th fetch push read by the consumer is the k-th one written.
    written = [r for r in by_stage.get("push written", []) if r[2] >= 0]
    read = by_stage.get("consumer frame read", [])
    by_stage["consumer frame read"] = [
        (r[0], r[1], w[2], w[3]) for r, w in zip(read, written, strict=False)
    ]
    out: list[dict[str, int]] = []
    cursor: dict[str, int] = defaultdict(int)
    for _i, sent, acked, offset in events:
        t: dict[str, int] = {"send call": sent}
        for stage in [*PRODUCER, *CONSUMER]:
            rs = by_stage.get(stage, [])
            k = cursor[stage]
            while k < len(rs) and rs[k][1] < sent:
                k += 1
            cursor[stage] = k
            while k < len(rs) and rs[k][2] >= 0 and not rs[k][2] <= offset < rs[k][3]:
                k += 1
            if k == len(rs) or (stage in PRODUCER and rs[k][1] > acked):
                continue
            t[stage] = rs[k][1]
            if rs[k][2] < 0:  # an offset-less mark belongs to one event only
                cursor[stage] = k + 1
        t["ack wake"] = acked
        out.append(t)
    return out


def summarize(mode: str, events: list[Any], records: list[Record]) -> dict[str, Any]:
    rows = assign(events, records)
    order = ["send call", *PRODUCER, "ack wake"]
    stages: dict[str, dict[str, float]] = {}

    def stat(name: str, values: list[float]) -> None:
        if values:
            values.sort()
            stages[name] = {
                "p50_us": values[len(values) // 2],
                "p99_us": values[min(len(values) - 1, int(len(values) * 0.99))],
                "n": len(values),
            }

    def chain(names: list[str], start: str) -> None:
        for name in names:
            deltas = []
            for t in rows:
                if name not in t:
                    continue
                prev = max(
                    (
                        t[s]
                        for s in [start, *names[: names.index(name)]]
                        if s in t and t[s] <= t[name]
                    ),
                    default=None,
                )
                if prev is not None:
                    deltas.append((t[name] - prev) / 1000)
            stat(name, deltas)

    chain(order[1:], "send call")
    chain(CONSUMER, "fsync end")
    e2e = [(t["handed to caller"] - t["send call"]) / 1000 for t in rows if "handed to caller" in t]
    stat("END TO END (send call -> handed to caller)", e2e)
    stat(
        "ack round trip (send call -> ack wake)",
        [(t["ack wake"] - t["send call"]) / 1000 for t in rows],
    )
    slow = _tail(rows, records)
    return {
        "mode": mode,
        "events": len(events),
        "stages": stages,
        "slowest_1pct": slow,
        "client_process": dict(COST),
    }


def _tail(rows: list[dict[str, int]], records: list[Record]) -> dict[str, Any]:
    """What the slowest 1% of events share."""
    done = [t for t in rows if "handed to caller" in t]
    if not done:
        return {}
    done.sort(key=lambda t: t["handed to caller"] - t["send call"])
    slow = done[-max(1, len(done) // 100) :]
    gcs = [(r[1], r[2]) for r in records if r[0] == "gc start"]
    gc_ends = [r[1] for r in records if r[0] == "gc stop"]
    n_gc = 0
    for t in slow:
        lo, hi = t["send call"], t["handed to caller"]
        if any(lo <= s <= hi for s, _g in gcs) or any(lo <= e <= hi for e in gc_ends):
            n_gc += 1
    worst: dict[str, int] = defaultdict(int)
    for t in slow:
        keys = [k for k in ["send call", *PRODUCER, "ack wake", *CONSUMER] if k in t]
        keys.sort(key=lambda k: t[k])
        gaps = [(t[b] - t[a], b) for a, b in itertools.pairwise(keys)]
        if gaps:
            worst[max(gaps)[1]] += 1
    starts = sorted(r[1] for r in records if r[0] == "gc start")
    stops = sorted(r[1] for r in records if r[0] == "gc stop")
    pauses = sorted((b - a) / 1000 for a, b in zip(starts, stops, strict=False) if b >= a)
    return {
        "gc_pause_us": {
            "n": len(pauses),
            "p50": round(pauses[len(pauses) // 2]) if pauses else 0,
            "max": round(pauses[-1]) if pauses else 0,
        },
        "count": len(slow),
        "e2e_us": [round((t["handed to caller"] - t["send call"]) / 1000) for t in slow],
        "with_gc": n_gc,
        "biggest_stage": dict(sorted(worst.items(), key=lambda kv: -kv[1])),
        "gc_collections": len(gcs),
    }


def print_summary(s: dict[str, Any]) -> None:
    print(f"\n== {s['mode']}: {s['events']} events ==")
    print(f"{'stage (time since the previous one)':<46}{'p50 us':>9}{'p99 us':>9}{'n':>7}")
    for name, v in s["stages"].items():
        print(f"{name:<46}{v['p50_us']:>9.0f}{v['p99_us']:>9.0f}{v['n']:>7}")
    print("slowest 1%:", json.dumps(s["slowest_1pct"]))
    print("client process:", json.dumps(s["client_process"]))
    if "server_process" in s:
        print("server process:", json.dumps(s["server_process"]))


# ------------------------------------------------------------------- driving


def run_embedded(base: str, count: int, rate: int) -> dict[str, Any]:
    import trio

    from headwater.bench._local import embedded

    install_broker_patches()
    RECORDS.clear()
    gc.collect()
    events = trio.run(workload, lambda: embedded(os.path.join(base, "emb")), count, rate, True)
    return summarize("embedded", events, list(RECORDS))


def run_tcp(base: str, count: int, rate: int) -> dict[str, Any]:
    import trio

    from headwater.client._tcp import connect
    from headwater.testing._process import server_process

    install_connection_patches("client")
    out = os.path.join(base, "server-stages.json")
    wrapper = [sys.executable, os.path.abspath(__file__), "--server-stages", out]
    RECORDS.clear()
    with server_process(os.path.join(base, "srv"), "--durability", "always", wrapper=wrapper) as p:
        gc.collect()
        events = trio.run(workload, lambda: connect(p.url), count, rate, False)
        p.stop()
    with open(out) as f:
        dumped = json.load(f)
    server = [tuple(r) for r in dumped["records"]]
    result = summarize("tcp", events, list(RECORDS) + server)  # type: ignore[arg-type]
    result["server_process"] = {
        "cpu_us_per_event": dumped["cpu_s"] * 1e6 / count,
        "task_steps_per_event": dumped["steps"] / count,
        "task_steps_by_task": {k: round(v / count, 2) for k, v in dumped["by_task"].items()},
        "note": "whole process life (start-up and stop included)",
    }
    return result


def serve_wrapped(out: str, argv: list[str]) -> None:
    """Run ``argv`` (``python -m headwater serve ...``) with the stage marks,
    writing them to ``out`` when the process exits."""
    install_broker_patches()
    install_connection_patches("server")
    install_gc_marks()

    import trio

    steps = _StepCounter()
    run = trio.run

    def counted_run(*args: Any, **kwargs: Any) -> Any:
        kwargs["instruments"] = [*kwargs.get("instruments", ()), steps]
        return run(*args, **kwargs)

    trio.run = counted_run  # type: ignore[assignment]

    def dump() -> None:
        with open(out, "w") as f:
            by_task = {k: v for k, v in steps.by_task.items() if v >= 100}
            dump = {"records": RECORDS, "steps": steps.steps, "by_task": by_task}
            json.dump({**dump, "cpu_s": time.process_time()}, f)

    atexit.register(dump)
    assert argv[1:3] == ["-m", "headwater"], argv
    sys.argv = ["headwater", *argv[3:]]
    runpy.run_module("headwater", run_name="__main__")


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--server-stages":
        serve_wrapped(sys.argv[2], sys.argv[3:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=["both", "tcp", "embedded"], default="both")
    ap.add_argument("--count", type=int, default=3000)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--json", help="write the summaries here too")
    args = ap.parse_args()
    install_gc_marks()
    base = tempfile.mkdtemp(prefix="hw-stages-", dir=os.environ.get("TMPDIR", "/tmp"))
    results = []
    try:
        if args.mode in ("both", "tcp"):
            results.append(run_tcp(base, args.count, args.rate))
            print_summary(results[-1])
        if args.mode in ("both", "embedded"):
            results.append(run_embedded(base, args.count, args.rate))
            print_summary(results[-1])
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
