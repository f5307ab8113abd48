"""How the console shows stored bytes (sans-IO)."""

from __future__ import annotations

import cbor2

from headwater.web import render_bytes


def test_each_kind_is_recognised() -> None:
    """CBOR items decode (bytes inside as hex), UTF-8 JSON and text stay text,
    anything else is hex, None is a tombstone."""
    cases = [
        (None, "null", "null (tombstone)"),
        (cbor2.dumps({"id": 7, "blob": b"\x01\x02"}), "cbor", '{"id": 7, "blob": "h\'0102\'"}'),
        (cbor2.dumps("<script>alert(1)</script>"), "cbor", "<script>alert(1)</script>"),
        (b'{"a": 1}', "json", '{"a": 1}'),
        (b"hello world", "text", "hello world"),
        (b"7", "json", "7"),  # one digit is a JSON number, not the CBOR int -24
        (b"\xff\x00\x10", "bytes", "ff 00 10"),
    ]
    assert [(kind, text) for _, kind, text in cases] == [
        (render_bytes(data)["kind"], render_bytes(data)["text"]) for data, _, _ in cases
    ]


def test_long_values_are_cut_and_say_their_size() -> None:
    """Values beyond MAX_SHOWN_BYTES are cut, and the text gives the full size."""
    shown = render_bytes(b"\xff" * 5000)
    assert ("bytes", 5000) == (shown["kind"], shown["size"])
    assert shown["text"].endswith("… (5000 bytes)")
    assert 4096 * 3 - 1 + len(" … (5000 bytes)") == len(shown["text"])
