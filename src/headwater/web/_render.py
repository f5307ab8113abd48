"""How the console shows stored bytes (sans-IO, no Trio).

A value is shown decoded where that is safe and exact: CBOR (the producer's
default serializer) when the bytes are one whole CBOR item, else UTF-8 text
(pretty JSON when it parses), else hex. Byte strings inside CBOR are shown as
hex (``h'00ff'``). The result is plain text: the browser puts it in the page
with ``textContent``, never as HTML, so event content is never executed.
"""

from __future__ import annotations

import io
import json
import math
from typing import Any

import cbor2

__all__ = ["MAX_SHOWN_BYTES", "render_bytes"]

MAX_SHOWN_BYTES = 4096
"""Bytes of one value shown; longer values are cut (and say so)."""


def _plain(item: Any, depth: int = 0) -> Any:
    """``item`` with bytes as hex strings and everything else JSON-friendly."""
    if depth > 32:
        return "…"
    if isinstance(item, bytes | bytearray | memoryview):
        return f"h'{bytes(item).hex()}'"
    if isinstance(item, str | bool | int) or item is None:
        return item
    if isinstance(item, float):
        return item if math.isfinite(item) else repr(item)
    if isinstance(item, dict):
        return {str(_plain(k, depth + 1)): _plain(v, depth + 1) for k, v in item.items()}
    if isinstance(item, list | tuple | set | frozenset):
        return [_plain(v, depth + 1) for v in item]
    return repr(item)


def _cbor(data: bytes) -> tuple[bool, Any]:
    stream = io.BytesIO(data)
    try:
        item = cbor2.CBORDecoder(stream).decode()
    except Exception:
        return False, None
    if stream.tell() != len(data):
        return False, None  # trailing bytes: not one CBOR item
    return True, item


def render_bytes(data: bytes | None) -> dict[str, Any]:
    """``{"kind": ..., "text": ...}`` for the console: kind is ``null``
    (a tombstone), ``cbor``, ``json``, ``text`` or ``bytes`` (hex)."""
    if data is None:
        return {"kind": "null", "text": "null (tombstone)", "size": 0}
    size = len(data)
    cut = data[:MAX_SHOWN_BYTES]
    more = f" … ({size} bytes)" if size > MAX_SHOWN_BYTES else ""
    if size <= MAX_SHOWN_BYTES:
        ok, item = _cbor(data)
        if ok and not (isinstance(item, int) and size == 1 and data[:1].isalnum()):
            if isinstance(item, str):
                text = item
            else:
                text = json.dumps(_plain(item), ensure_ascii=False, indent=None)
            return {"kind": "cbor", "text": text, "size": size}
    try:
        text = cut.decode("utf-8")
    except UnicodeDecodeError:
        return {"kind": "bytes", "text": cut.hex(" ") + more, "size": size}
    if text.isprintable() or all(c.isprintable() or c in "\n\r\t" for c in text):
        try:
            parsed = json.loads(text)
        except ValueError:
            return {"kind": "text", "text": text + more, "size": size}
        return {"kind": "json", "text": json.dumps(parsed, ensure_ascii=False), "size": size}
    return {"kind": "bytes", "text": cut.hex(" ") + more, "size": size}
