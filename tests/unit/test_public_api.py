"""The curated public API: every public name is exported once and documented."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import headwater
from headwater import _errors

PACKAGES = ["headwater"] + [
    f"headwater.{info.name}"
    for info in pkgutil.iter_modules(headwater.__path__)
    if info.ispkg and not info.name.startswith("_")
]


@pytest.mark.parametrize("package", PACKAGES)
def test_all_names_exported_once_and_documented(package: str) -> None:
    """Each name in ``__all__`` exists, appears once and has a docstring."""
    module = importlib.import_module(package)
    names = list(getattr(module, "__all__", []))
    assert len(names) == len(set(names)), f"duplicates in {package}.__all__"
    for name in names:
        obj = getattr(module, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), f"{package}.{name} has no docstring"


def test_every_error_is_exported_from_top_level() -> None:
    """Every HeadwaterError subclass defined in _errors is reachable as headwater.X."""
    for name in _errors.__all__:
        obj = getattr(_errors, name)
        if inspect.isclass(obj):
            assert getattr(headwater, name) is obj


def test_error_codes_are_unique_and_round_trip() -> None:
    """Each error class has its own stable code, and the code maps back to it."""
    classes = [getattr(_errors, n) for n in _errors.__all__ if inspect.isclass(getattr(_errors, n))]
    codes = [cls.code for cls in classes]
    assert len(codes) == len(set(codes))
    for cls in classes:
        assert _errors.error_class_for_code(cls.code) is cls
    assert _errors.error_class_for_code("from_the_future") is headwater.HeadwaterError


def test_protocol_doc_lists_every_error_code_and_operation() -> None:
    """docs/protocol.md names every error code and every client operation, so
    a client written from it in another language misses nothing."""
    import inspect
    import pathlib

    import headwater._errors as errors
    from headwater.transport import OP_NAMES

    doc = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
    codes = {
        cls.code
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.HeadwaterError)
    }
    missing = sorted(c for c in codes | OP_NAMES if f"`{c}`" not in doc)
    assert [] == missing
