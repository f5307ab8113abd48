"""Testing kit for processing jobs: :class:`TestDriver` (also exported from
:mod:`headwater.processing`)."""

from __future__ import annotations

from headwater.processing._driver import TestDriver as TestDriver

__all__ = ["TestDriver"]
