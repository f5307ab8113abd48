"""Imports only ever point down DESIGN.md's layer order (DECISIONS #31).

Every module under ``src/headwater`` is parsed (not imported) and every
import in it is checked, including imports inside functions and under
``TYPE_CHECKING``: a module may import its own layer or a lower one, never a
higher one. Layers, top to bottom::

    cli (with the package root, __main__, testing, bench)
    processing
    client
    front ends (the Headwater server, kafka, web)
    cluster
    broker
    journal
    actors, supervision
    transport
    _protocol, _errors, _logging, _aio, _stats

The stored batch format (``Event``, the payload codec, key hashing) lives in
``headwater.journal._batch``, below the broker that stores and compacts it.
``Broker.connect()`` builds its embedded client through a factory that the
package root installs, so the broker never imports the client.

The one exception is listed in ``ALLOWED`` with its reason.
"""

from __future__ import annotations

import ast
import pathlib

SRC = pathlib.Path(__file__).resolve().parents[2] / "src"

LAYERS: list[tuple[str, tuple[str, ...]]] = [  # top to bottom; a module's
    # layer is its longest matching prefix
    ("cli", ("headwater.__main__", "headwater.cli", "headwater.testing", "headwater.bench")),
    ("processing", ("headwater.processing",)),
    ("client", ("headwater.client",)),
    ("front ends", ("headwater.broker._server", "headwater.kafka", "headwater.web")),
    ("cluster", ("headwater.cluster",)),
    ("broker", ("headwater.broker",)),
    ("journal", ("headwater.journal",)),
    ("actors, supervision", ("headwater.actors", "headwater.supervision")),
    ("transport", ("headwater.transport",)),
    (
        "base",
        (
            "headwater._protocol",
            "headwater._errors",
            "headwater._logging",
            "headwater._aio",
            "headwater._stats",
        ),
    ),
]
#: Package facades that re-export a higher layer sit with it: the root
#: re-exports everything; headwater.broker's __init__ re-exports the server.
FACADES = {"headwater": "cli", "headwater.broker": "front ends"}

#: (importing module, imported module) pairs allowed to point up, with why.
ALLOWED: dict[tuple[str, str], str] = {
    ("headwater.actors._persistent", "headwater.journal._files"): (
        "PersistentActor keeps its state in a state journal (DESIGN principle 6); "
        "the journal never imports the actor runtime. To move under journal/ with "
        "the actors work"
    ),
    ("headwater.actors._persistent", "headwater.journal._state"): "as above",
}


def layer_of(module: str) -> int:
    """Index in LAYERS (0 is the top) of ``module``'s layer."""
    names = [name for name, _prefixes in LAYERS]
    if module in FACADES:
        return names.index(FACADES[module])
    best, best_len = -1, -1
    for index, (_name, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    assert best >= 0, f"{module} is in no layer; add it to LAYERS"
    return best


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(name: str) -> bool:
    base = SRC.joinpath(*name.split("."))
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def imports_of(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line, module) for every headwater module ``path`` imports."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    return imports_in(path.read_text(), package)


def imports_in(source: str, package: str) -> list[tuple[int, str]]:
    """(line, module) for every headwater module imported anywhere in
    ``source`` (a module of ``package``): top level, functions, classes."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                out.append((node.lineno, sub if is_module(sub) else source))
    return [(line, m) for line, m in out if m == "headwater" or m.startswith("headwater.")]


def upward_imports() -> list[str]:
    found = []
    for path in sorted(SRC.joinpath("headwater").rglob("*.py")):
        importer = module_name(path)
        for line, imported in imports_of(path):
            if layer_of(imported) < layer_of(importer) and (importer, imported) not in ALLOWED:
                found.append(
                    f"{path.relative_to(SRC)}:{line}: {importer} "
                    f"({LAYERS[layer_of(importer)][0]}) imports {imported} "
                    f"({LAYERS[layer_of(imported)][0]})"
                )
    return found


def test_imports_only_point_down_the_layers() -> None:
    """No module imports one from a higher layer (see the module docstring)."""
    assert [] == upward_imports()


def test_the_check_sees_imports_inside_functions() -> None:
    """A planted upward import inside a method is caught (the test can fail),
    relative or absolute."""
    planted = (
        "class Broker:\n"
        "    def connect(self):\n"
        "        from headwater.client._client import Client\n"
        "        from ..client import _channel\n"
    )
    found = imports_in(planted, "headwater.broker")
    assert [(3, "headwater.client._client"), (4, "headwater.client._channel")] == found
    assert all(layer_of(m) < layer_of("headwater.broker._broker") for _line, m in found)
