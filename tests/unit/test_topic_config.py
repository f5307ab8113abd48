"""Topic names and TopicConfig validation."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from headwater import ConfigError, InvalidTopicName
from headwater._protocol import CreateTopic, TopicInfo
from headwater.broker import TopicConfig, validate_topic_name


@pytest.mark.parametrize("name", ["orders", "a", "A.b_c-9", "x" * 249, "..."])
def test_valid_names(name):
    """Kafka-legal names are accepted as they are."""
    assert name == validate_topic_name(name)


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("", "empty"),
        (".", "not a valid"),
        ("..", "not a valid"),
        ("x" * 250, "250 characters; the limit is 249"),
        ("a b", "contains ' '"),
        ("a/b", "contains '/'"),
        ("caf\u00e9", "contains"),
        (3, "not int"),
    ],
)
def test_invalid_names(name, match):
    """Each broken rule raises InvalidTopicName saying which."""
    with pytest.raises(InvalidTopicName, match=match):
        validate_topic_name(name)


@given(st.text(min_size=1, max_size=260))
def test_name_rule_matches_the_regex(name):
    """A name passes exactly when it is 1..249 legal characters and not . or .."""
    legal = (
        len(name) <= 249
        and name not in (".", "..")
        and all(c.isascii() and (c.isalnum() or c in "._-") for c in name)
    )
    try:
        validate_topic_name(name)
    except InvalidTopicName:
        assert not legal
    else:
        assert legal


def test_defaults_and_round_trip():
    """Defaults, the protocol view, and a CBOR round trip through to_dict."""
    cfg = TopicConfig.create("orders", partitions=3, retention_ms=60_000)
    assert TopicInfo("orders", 3, 60_000, None, False, "always") == cfg.to_info()
    assert cfg == TopicConfig.from_dict(cbor2.loads(cbor2.dumps(cfg.to_dict())))
    req = CreateTopic("logs", partitions=2, compacted=True, durability=None)
    assert ("interval", True) == (
        TopicConfig.from_request(req, default_durability="interval").durability,
        TopicConfig.from_request(req).compacted,
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"partitions": 0}, "1..1000"),
        ({"partitions": 1001}, "not 1001"),
        ({"partitions": True}, "partitions"),
        ({"retention_ms": -1}, "retention_ms"),
        ({"retention_bytes": 1.5}, "retention_bytes"),
        ({"compacted": 1}, "compacted"),
        ({"durability": "sometimes"}, "'sometimes'"),
        ({"tombstone_grace_ms": -5}, "tombstone_grace_ms"),
    ],
)
def test_bad_settings(kwargs, match):
    """Each bad setting raises ConfigError naming it."""
    with pytest.raises(ConfigError, match=match):
        TopicConfig.create("t", **kwargs)
