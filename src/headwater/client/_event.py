"""The :class:`Event` a consumer reads and the types of its parts: defined in
:mod:`headwater.journal._batch` (the stored batch format); re-exported here."""

from __future__ import annotations

from headwater.journal._batch import Event as Event
from headwater.journal._batch import Headers as Headers
from headwater.journal._batch import Key as Key

__all__ = ["Event", "Headers", "Key"]
