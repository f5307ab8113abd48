"""Client-side cost of the batch payload: encode and decode µs per event.

Compares, for 1,000-event batches of 100 B and 1 KiB values (16-byte keys, one
header):

* ``cbor_columns``: Headwater's format (``headwater.journal._batch``), columnar
  CBOR ``[1, deltas, keys, values(, headers)]``;
* ``cbor_rows``: one CBOR array of compact per-event arrays
  ``[ts_delta, key, value(, headers)]``;
* ``kafka_v2``: Kafka RecordBatch v2 *records* (zigzag varints) in pure Python.

Also the rest of the producer's client path per event (``client_path``): CBOR
serialization of a small dict, murmur2 partitioning, accumulator append+drain.

Decode always produces :class:`headwater.client.Event` objects, as a consumer
needs. Figures: ``encode_us_per_event``, ``decode_us_per_event``,
``bytes_per_event`` per case, and ``ratio_kafka_v2_vs_cbor_columns`` per size.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import cbor2

from headwater.client import Accumulator, AccumulatorConfig, Partitioner, get_serializer
from headwater.journal._batch import Event, PendingEvent, decode_events, encode_events

BATCH = 1000
BASE_TS = 1_764_000_000_000


def make_events(value_size: int, seed: int = 1) -> list[PendingEvent]:
    """A seeded batch: 16-byte keys, ``value_size``-byte values, one header."""
    rng = random.Random(seed)
    return [
        (
            BASE_TS + i,
            rng.randbytes(16),
            rng.randbytes(value_size),
            (("trace", rng.randbytes(8)),),
        )
        for i in range(BATCH)
    ]


# ---------------------------------------------------------------- cbor rows


def cbor_rows_encode(events: list[PendingEvent]) -> bytes:
    """Row CBOR: one array of per-event arrays ``[ts_delta, key, value(, headers)]``."""
    base = events[0][0]
    rows: list[list[Any]] = []
    for ts, key, value, headers in events:
        if headers:
            rows.append([ts - base, key, value, [x for pair in headers for x in pair]])
        else:
            rows.append([ts - base, key, value])
    return cbor2.dumps([1, rows])


def cbor_rows_decode(payload: bytes, base_offset: int, base_ts: int) -> list[Event]:
    """Decode the row layout into events."""
    _, rows = cbor2.loads(payload)
    out: list[Event] = []
    for i, row in enumerate(rows):
        headers: tuple[tuple[str, bytes], ...] = ()
        if len(row) == 4:
            flat = row[3]
            headers = tuple(zip(flat[::2], flat[1::2], strict=True))
        out.append(Event("t", 0, base_offset + i, base_ts + row[0], row[1], row[2], headers))
    return out


# ---------------------------------------------------------------- kafka v2


def _varint(out: bytearray, n: int) -> None:
    n = (n << 1) ^ (n >> 63)  # zigzag
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = 0
    result = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            break
        shift += 7
    return (result >> 1) ^ -(result & 1), pos


def kafka_v2_encode(events: list[PendingEvent]) -> bytes:
    """Kafka RecordBatch v2 records (without the 61-byte batch header)."""
    base = events[0][0]
    out = bytearray()
    for i, (ts, key, value, headers) in enumerate(events):
        body = bytearray(b"\x00")  # attributes
        _varint(body, ts - base)
        _varint(body, i)
        if key is None:
            _varint(body, -1)
        else:
            kb = key.encode() if isinstance(key, str) else key
            _varint(body, len(kb))
            body += kb
        if value is None:
            _varint(body, -1)
        else:
            _varint(body, len(value))
            body += value
        _varint(body, len(headers))
        for name, hval in headers:
            nb = name.encode()
            _varint(body, len(nb))
            body += nb
            _varint(body, len(hval))
            body += hval
        _varint(out, len(body))
        out += body
    return bytes(out)


def kafka_v2_decode(payload: bytes, base_offset: int, base_ts: int) -> list[Event]:
    """Decode Kafka v2 records into events."""
    out: list[Event] = []
    pos = 0
    end = len(payload)
    rv = _read_varint
    while pos < end:
        _length, pos = rv(payload, pos)
        pos += 1  # attributes
        dt, pos = rv(payload, pos)
        od, pos = rv(payload, pos)
        klen, pos = rv(payload, pos)
        key: bytes | None = None
        if klen >= 0:
            key = payload[pos : pos + klen]
            pos += klen
        vlen, pos = rv(payload, pos)
        value: bytes | None = None
        if vlen >= 0:
            value = payload[pos : pos + vlen]
            pos += vlen
        hcount, pos = rv(payload, pos)
        headers: list[tuple[str, bytes]] = []
        for _ in range(hcount):
            nlen, pos = rv(payload, pos)
            name = payload[pos : pos + nlen].decode()
            pos += nlen
            hlen, pos = rv(payload, pos)
            headers.append((name, payload[pos : pos + hlen]))
            pos += hlen
        out.append(Event("t", 0, base_offset + od, base_ts + dt, key, value, tuple(headers)))
    return out


# ---------------------------------------------------------------- harness


def cbor_columns_decode(payload: bytes, base_offset: int, base_ts: int) -> list[Event]:
    """Headwater's decoder with the benchmark's topic/partition."""
    return decode_events(
        payload, topic="t", partition=0, base_offset=base_offset, base_timestamp=base_ts
    )


CODECS: dict[str, tuple[Callable[[list[PendingEvent]], bytes], Callable[..., list[Event]]]] = {
    "cbor_columns": (encode_events, cbor_columns_decode),
    "cbor_rows": (cbor_rows_encode, cbor_rows_decode),
    "kafka_v2": (kafka_v2_encode, kafka_v2_decode),
}


def _best_of(fn: Callable[[], Any], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure(codec: str, value_size: int, repeats: int) -> dict[str, float]:
    """Best-of-``repeats`` encode/decode µs per event and bytes per event."""
    enc, dec = CODECS[codec]
    events = make_events(value_size)
    payload = enc(events)
    decoded = dec(payload, 0, BASE_TS)
    assert [e.value for e in decoded] == [e[2] for e in events], codec
    return {
        "encode_us_per_event": _best_of(lambda: enc(events), repeats) / BATCH * 1e6,
        "decode_us_per_event": _best_of(lambda: dec(payload, 0, BASE_TS), repeats) / BATCH * 1e6,
        "bytes_per_event": len(payload) / BATCH,
    }


def client_path(value_size: int, repeats: int) -> dict[str, float]:
    """µs per event of the rest of the producer's client path, for 1,000 events:
    CBOR-serialize a small dict, choose a partition by a 16-byte key (murmur2),
    and append to the accumulator then drain (which encodes the payload)."""
    events = make_events(value_size)
    serializer = get_serializer("cbor")
    values = [{"id": i, "blob": e[2]} for i, e in enumerate(events)]

    def serialize() -> None:
        for v in values:
            serializer.serialize(v)

    def partition() -> None:
        part = Partitioner()
        for e in events:
            part.choose("t", e[1], 12)

    def accumulate() -> None:
        acc = Accumulator(AccumulatorConfig(max_batch_events=BATCH, linger=1.0))
        for ts, key, value, headers in events:
            acc.append("t", 0, ts, key, value, headers, 0.0)
        acc.drain(0.0, force=True)

    return {
        "serialize_cbor_us_per_event": _best_of(serialize, repeats) / BATCH * 1e6,
        "partition_murmur2_us_per_event": _best_of(partition, repeats) / BATCH * 1e6,
        "append_drain_us_per_event": _best_of(accumulate, repeats) / BATCH * 1e6,
    }


def run(quick: bool) -> Iterator[dict[str, Any]]:
    """Yield the codec figures (see the module docstring)."""
    repeats = 5 if quick else 30
    units = {"encode_us_per_event": "us", "decode_us_per_event": "us", "bytes_per_event": "B"}
    for size, label in ((100, "100B"), (1024, "1KiB")):
        results: dict[str, dict[str, float]] = {}
        # Interleave the codecs so machine noise hits them alike.
        for _ in range(2):
            for codec in CODECS:
                figures = measure(codec, size, repeats)
                prev = results.get(codec)
                results[codec] = (
                    figures if prev is None else {k: min(v, prev[k]) for k, v in figures.items()}
                )
        for codec, figures in results.items():
            for metric, value in figures.items():
                yield {
                    "bench": "codec",
                    "case": f"{codec}/{label}",
                    "metric": metric,
                    "value": round(value, 3),
                    "unit": units[metric],
                }
        for metric, value in client_path(size, repeats).items():
            yield {
                "bench": "codec",
                "case": f"client_path/{label}",
                "metric": metric,
                "value": round(value, 3),
                "unit": "us",
            }
        for metric in ("encode_us_per_event", "decode_us_per_event"):
            yield {
                "bench": "codec",
                "case": f"kafka_v2_vs_cbor_columns/{label}",
                "metric": f"ratio_{metric.split('_')[0]}",
                "value": round(results["kafka_v2"][metric] / results["cbor_columns"][metric], 2),
                "unit": "x",
            }
