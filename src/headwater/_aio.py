"""How errors leave Headwater's nurseries (the lowest layer: no Trio needed).

Headwater's one rule: a public context manager that owns a nursery raises the
error itself, not an ``ExceptionGroup`` of one, so ``except
headwater.UnknownTopicError`` catches it. Groups of several errors stay groups.
Every layer (actors, journal, broker, client) uses these two helpers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["unwrap_group", "unwrapping_groups"]


@contextlib.contextmanager
def unwrapping_groups() -> Iterator[None]:
    """Re-raise a lone exception out of (nested) single-member exception groups.

    Headwater's one rule for errors leaving nurseries: users see the error,
    not a group of one. Groups of several stay groups. The lone error keeps
    its own ``__cause__`` and traceback, so an error raised in the ``async
    with`` body comes out as the very object the body raised.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        lone = unwrap_group(group)
        if lone is group:
            raise
        raise lone from lone.__cause__


def unwrap_group(exc: BaseException) -> BaseException:
    """Return the lone exception inside (nested) single-member exception groups."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
