"""The comparison as a markdown section of ``docs/benchmarks.md``.

:func:`render_markdown` turns :func:`~headwater.bench.run_peers` rows (plus
any other benchmark rows, e.g. the embedded-vs-journal ratio) into tables;
:func:`write_markdown` puts them between ``<!-- peers:begin -->`` and
``<!-- peers:end -->`` in a file, keeping everything else in it.
"""

from __future__ import annotations

import pathlib
import time
from typing import Any

from ._peers import FLOOR_TARGETS, SIZES, TARGETS

BEGIN = "<!-- peers:begin -->"
END = "<!-- peers:end -->"

_SETTINGS = {
    "headwater-tcp-always": "durability `always` (fsync before ack)",
    "headwater-tcp-interval": "durability `interval` (fsync every 200 ms)",
    "headwater-embedded-always": "durability `always`",
    "headwater-embedded-interval": "durability `interval`",
    "nats-always": "file store, `sync_interval: always`",
    "nats-default": "file store, default sync (2 min timer)",
    "redis-always": "AOF `appendfsync always`",
    "redis-default": "AOF `appendfsync everysec`",
    "redis-c-always": "AOF `appendfsync always`",
}


def _num(v: float) -> str:
    if v >= 1000:
        return f"{v / 1000:,.1f}k"
    if v >= 10:
        return f"{v:,.0f}"
    return f"{v:.2f}"


def _cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "—"
    spread = row.get("spread_pct")
    value = f"{row['value']:.2f}" if row.get("unit") == "ms" else _num(row["value"])
    return value + (f" ±{spread / 2:.0f}%" if spread is not None else "")


def render_markdown(rows: list[dict[str, Any]], machine: str, command: str) -> str:
    """The section's markdown (between the markers)."""
    by = {(r["case"], r["metric"]): r for r in rows}
    lines = [
        BEGIN,
        "## Headwater beside NATS JetStream and Redis Streams",
        "",
        (
            f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with `{command}`: "
            "one client process per side, the same payloads and the same loop "
            "(`../shared/bench/peers.py`; Headwater through `headwater.bench.HeadwaterDriver`), "
            "rounds interleaved across targets. Each throughput figure is the median of the "
            "rounds; latency percentiles are those of every round's samples pooled; "
            "`±` is half the spread (max - min) / median of the per-round figures. Throughput "
            "ratios are medians of per-round ratios; latency ratios compare pooled percentiles. "
            "Absolute numbers drift 10-40% between runs on this shared VM: compare within a run."
        ),
        "",
        "Machine:",
        "",
        "```text",
        machine,
        "```",
        "",
        "### Throughput (events/s)",
        "",
        (
            "Produce: N events from one client, time until all are acknowledged "
            "(Headwater `send_nowait` with at most 1,000 unacknowledged; NATS `publish_async` "
            "window 1,000; Redis pipelines of 1,000 XADD). Consume: one new consumer reads all "
            "N back from the start, acknowledging per batch of 1,000 (NATS: per message; "
            "pull = `fetch(1000)`, push = callback)."
        ),
        "",
        (
            "| target | setting | N (100 B) | produce 100 B | produce 1 KiB | consume 100 B"
            " | consume 1 KiB |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    for t in TARGETS:
        cells = []
        n = by.get((f"produce/100B/{t.name}", "events_per_s"), {}).get("count", "—")
        for _, label in SIZES:
            cells.append(_cell(by.get((f"produce/{label}/{t.name}", "events_per_s"))))
        for _, label in SIZES:
            if t.kind == "nats":
                pull = _cell(by.get((f"consume/{label}/pull/{t.name}", "events_per_s")))
                push = _cell(by.get((f"consume/{label}/push/{t.name}", "events_per_s")))
                cells.append(f"push {push}, pull {pull}")
            else:
                cells.append(_cell(by.get((f"consume/{label}/{t.name}", "events_per_s"))))
        lines.append(f"| {t.name} | {_SETTINGS[t.name]} | {n} | " + " | ".join(cells) + " |")
    c = by.get(("produce/100B/redis-c-always", "events_per_s"))
    if c is not None:
        lines.append(
            f"| redis-benchmark (C client, -P 1000) | {_SETTINGS['redis-c-always']} | "
            f"{c.get('count')} | {_cell(c)} | — | — | — |"
        )
    lines += [
        "",
        "### End-to-end latency at 1,000 events/s (100 B, ms)",
        "",
        (
            "The producer waits for each acknowledgement; the consumer records receive - send "
            "(monotonic clock). Peers and Headwater TCP: producer and consumer in two processes; "
            "Headwater embedded: both in one process and one event loop."
        ),
        "",
        "| target | setting | events | p50 | p99 | p99.9 |",
        "|---|---|---|---|---|---|",
    ]
    for t in TARGETS:
        p = [by.get((f"latency/{t.name}", m)) for m in ("p50_ms", "p99_ms", "p999_ms")]
        if all(x is None for x in p):
            continue
        n = next(x for x in p if x is not None).get("count")
        lines.append(
            f"| {t.name} | {_SETTINGS[t.name]} | {n} | " + " | ".join(_cell(x) for x in p) + " |"
        )
    floor = [by.get((f"latency/{name}", "p50_ms")) for name in FLOOR_TARGETS]
    if all(x is not None for x in floor):
        lines.append(
            "| floor | bare round trip of 100 B between two Python processes + one 100 B "
            "write and fsync, medians measured in the same rounds | "
            f"{floor[0].get('count') if floor[0] else ''} | {_cell(floor[2])} "
            f"({_cell(floor[0])} + {_cell(floor[1])}) | — | — |"
        )
    lines += [
        "",
        "### Ratios",
        "",
        (
            "`ratio_vs_best_peer`: Headwater events/s over the best peer's in the same round "
            "(produce: peers in their most durable setting; consume: any peer, any setting). "
            "`ratio_p99_vs_best_peer`: Headwater p99 over the lowest durable peer p99, each of "
            "all rounds' samples pooled (below 1 is better; min - max: the per-round ratios); "
            "`ratio_p50_vs_best_peer` the same for p50; `ratio_p50_vs_floor`: Headwater's "
            "pooled p50 over the floor (round trip + fsync; the median of the rounds). "
            "`ratio_vs_redis_c`: over `redis-benchmark` with fsync always. "
            "`ratio_to_journal`: embedded produce over the journal's raw `Log.append` of "
            "pre-encoded 1,000-event batches (from `bench_broker`)."
        ),
        "",
        "| case | metric | Headwater | vs | ratio | min - max |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if str(r["metric"]).startswith("ratio_"):
            lines.append(
                f"| {r['case']} | {r['metric']} | {r.get('ours', '—')} | {r.get('vs', '—')} | "
                f"{r['value']:.2f} | {r.get('min', r['value']):.2f} - "
                f"{r.get('max', r['value']):.2f} |"
            )
    skipped = [r for r in rows if r["metric"] == "skipped"]
    if skipped:
        lines += ["", "### Not measured", ""]
        lines += [f"- {r['case']}: {r.get('why', '')}" for r in skipped]
    lines.append(END)
    return "\n".join(lines) + "\n"


def write_markdown(
    path: str | pathlib.Path, rows: list[dict[str, Any]], machine: str, command: str
) -> None:
    """Write (or replace) the section in ``path``, keeping the rest of the file."""
    path = pathlib.Path(path)
    section = render_markdown(rows, machine, command)
    old = path.read_text() if path.exists() else "# Benchmarks\n\n"
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        new = head + section + tail
    else:
        new = old.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)
