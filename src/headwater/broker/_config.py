"""Topic configuration: name rules and validated, frozen settings.

A topic name is 1 to 249 characters from ``[A-Za-z0-9._-]`` and is neither
``"."`` nor ``".."`` (Kafka's rules; the name becomes a directory name). The
settings are checked once, when the topic is created, and then live in a
frozen :class:`TopicConfig` that the registry persists with :meth:`TopicConfig.to_dict`.
"""

from __future__ import annotations

import re
from typing import Any, Literal, cast

import attrs

from headwater._errors import ConfigError, InvalidArgument, InvalidTopicName
from headwater._protocol import CreateTopic, TopicInfo

__all__ = [
    "DURABILITIES",
    "MAX_PARTITIONS",
    "MAX_TOPIC_NAME_LENGTH",
    "TopicConfig",
    "validate_group_name",
    "validate_topic_name",
]

MAX_TOPIC_NAME_LENGTH = 249
MAX_PARTITIONS = 1000
DURABILITIES = ("always", "interval", "never")
DEFAULT_TOMBSTONE_GRACE_MS = 24 * 3600 * 1000
_LEGAL = re.compile(r"[A-Za-z0-9._-]+")

Durability = Literal["always", "interval", "never"]


def _validate_name(kind: str, name: object, error: type[InvalidArgument]) -> str:
    if not isinstance(name, str):
        raise error(f"a {kind} name must be a str, not {type(name).__qualname__}")
    if not name:
        raise error(f"a {kind} name cannot be empty")
    if len(name) > MAX_TOPIC_NAME_LENGTH:
        raise error(
            f"{kind} name {name[:20]!r}... is {len(name)} characters; "
            f"the limit is {MAX_TOPIC_NAME_LENGTH}"
        )
    if name in (".", ".."):
        raise error(f"{name!r} is not a valid {kind} name")
    if not _LEGAL.fullmatch(name):
        bad = sorted({c for c in name if not _LEGAL.fullmatch(c)})
        raise error(
            f"{kind} name {name!r} contains {''.join(bad)!r}; use only ASCII letters "
            "(A-Z, a-z), digits, '.', '_' and '-'"
        )
    return name


def validate_topic_name(name: object) -> str:
    """Return ``name`` if it is a legal topic name, else raise
    :class:`~headwater.InvalidTopicName` saying which rule it breaks."""
    return _validate_name("topic", name, InvalidTopicName)


def validate_group_name(name: object) -> str:
    """Return ``name`` if it is a legal consumer group name (the same rules as
    topic names: it names a directory), else raise
    :class:`~headwater.InvalidArgument` saying which rule it breaks."""
    return _validate_name("group", name, InvalidArgument)


def _optional_non_negative(setting: str, value: object) -> int | None:
    if value is None:
        return None
    if type(value) is not int or value < 0:
        raise ConfigError(f"{setting} must be None (unlimited) or an int >= 0, not {value!r}")
    return value


@attrs.frozen
class TopicConfig:
    """A topic's validated settings.

    ``retention_ms``/``retention_bytes``: ``None`` keeps events forever / at
    any size. ``compacted`` keeps at least the latest event per key, and drops
    a key whose latest value is a tombstone after ``tombstone_grace_ms``.
    ``durability`` is ``"always"`` (fsync before acknowledging),
    ``"interval"`` or ``"never"``.
    """

    name: str
    partitions: int = 1
    retention_ms: int | None = None
    retention_bytes: int | None = None
    compacted: bool = False
    durability: Durability = "always"
    tombstone_grace_ms: int = DEFAULT_TOMBSTONE_GRACE_MS

    @classmethod
    def create(
        cls,
        name: object,
        *,
        partitions: object = 1,
        retention_ms: object = None,
        retention_bytes: object = None,
        compacted: object = False,
        durability: object = None,
        tombstone_grace_ms: object = DEFAULT_TOMBSTONE_GRACE_MS,
        default_durability: Durability = "always",
    ) -> TopicConfig:
        """Validate every setting and build the config. A bad name raises
        :class:`~headwater.InvalidTopicName`; any other bad setting
        :class:`~headwater.ConfigError` naming it and its allowed range."""
        topic = validate_topic_name(name)
        if type(partitions) is not int or not 1 <= partitions <= MAX_PARTITIONS:
            raise ConfigError(
                f"partitions for topic {topic!r} must be an int in 1..{MAX_PARTITIONS}, "
                f"not {partitions!r}"
            )
        if type(compacted) is not bool:
            raise ConfigError(f"compacted must be True or False, not {compacted!r}")
        chosen = default_durability if durability is None else durability
        if chosen not in DURABILITIES:
            raise ConfigError(f"durability must be one of {DURABILITIES}, not {chosen!r}")
        grace = _optional_non_negative("tombstone_grace_ms", tombstone_grace_ms)
        return cls(
            name=topic,
            partitions=partitions,
            retention_ms=_optional_non_negative("retention_ms", retention_ms),
            retention_bytes=_optional_non_negative("retention_bytes", retention_bytes),
            compacted=compacted,
            durability=cast("Durability", chosen),
            tombstone_grace_ms=DEFAULT_TOMBSTONE_GRACE_MS if grace is None else grace,
        )

    @classmethod
    def from_request(
        cls, request: CreateTopic, default_durability: Durability = "always"
    ) -> TopicConfig:
        """Validate a :class:`~headwater._protocol.CreateTopic` request."""
        return cls.create(
            request.name,
            partitions=request.partitions,
            retention_ms=request.retention_ms,
            retention_bytes=request.retention_bytes,
            compacted=request.compacted,
            durability=request.durability,
            default_durability=default_durability,
        )

    def to_info(self) -> TopicInfo:
        """The protocol's view of this config."""
        return TopicInfo(
            self.name,
            self.partitions,
            self.retention_ms,
            self.retention_bytes,
            self.compacted,
            self.durability,
        )

    def to_dict(self) -> dict[str, Any]:
        """A CBOR-encodable dict, for the registry's journal."""
        return attrs.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TopicConfig:
        """Rebuild (and re-validate) a config persisted by :meth:`to_dict`."""
        return cls.create(
            data["name"],
            partitions=data["partitions"],
            retention_ms=data["retention_ms"],
            retention_bytes=data["retention_bytes"],
            compacted=data["compacted"],
            durability=data["durability"],
            tombstone_grace_ms=data.get("tombstone_grace_ms", DEFAULT_TOMBSTONE_GRACE_MS),
        )
