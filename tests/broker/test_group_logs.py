"""The group actor logs joins, leaves and rebalances at info, with numbers."""

from __future__ import annotations

import pytest
import trio

from headwater import UnknownTopicError
from headwater.broker import open_broker
from headwater.journal import SimulatedFileSystem
from headwater.testing import capture_logs


async def test_join_and_leave_are_logged(autojump_clock: trio.abc.Clock) -> None:
    """A consumer joining then leaving a group gives member_joined, rebalanced
    and member_left lines naming the group, the member and the counts."""
    with capture_logs() as logs:
        async with (
            open_broker("/data", fs=SimulatedFileSystem()) as broker,
            broker.connect() as client,
        ):
            await client.create_topic("orders", partitions=3)
            async with client.producer() as producer:
                await producer.send("orders", 1)
            async with client.consumer("orders", group="billing") as consumer:
                async for _event in consumer:
                    break
    group_lines = [e for e in logs if e.get("group") == "billing" and e["log_level"] == "info"]
    joined = next(e for e in group_lines if e["event"] == "group_member_joined")
    rebalanced = next(e for e in group_lines if e["event"] == "group_rebalanced")
    left = next(e for e in group_lines if e["event"] == "group_member_left")
    assert (1, ["orders"]) == (joined["members"], joined["topics"])
    assert (1, 3) == (rebalanced["members"], rebalanced["partitions"])
    assert {joined["member_id"]: 3} == rebalanced["assignment"]
    assert (joined["member_id"], 0) == (left["member_id"], left["members"])


async def test_each_request_is_logged_at_debug(autojump_clock: trio.abc.Clock) -> None:
    """Every request gives one debug line with its operation and outcome."""
    with capture_logs() as logs:
        async with (
            open_broker("/data", fs=SimulatedFileSystem()) as broker,
            broker.connect() as client,
        ):
            await client.create_topic("orders", partitions=1)
            with pytest.raises(UnknownTopicError):
                await client.delete_topic("ghost")
    requests = [(e["op"], e["failed"], e["log_level"]) for e in logs if e["event"] == "request"]
    assert [("create_topic", False, "debug"), ("delete_topic", True, "debug")] == requests
