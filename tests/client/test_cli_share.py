"""`headwater consume --subscription` and `groups describe` of a share subscription."""

from __future__ import annotations

import json

from .test_cli import Run, run  # noqa: F401 - the fixture


def test_consume_with_subscription_acks_and_describe_counts(run: Run) -> None:  # noqa: F811
    """--ack acknowledges what it printed: a second consume prints nothing new;
    without --ack events go back; groups describe shows the counts."""
    run("topics", "create", "jobs", "-p", "2")
    run("produce", "jobs", input="".join(f"{i}\n" for i in range(10)))
    peek = run("consume", "jobs", "--subscription", "work", "--max", "4")
    assert 4 == len(peek.output.splitlines())
    first = run("consume", "jobs", "--subscription", "work", "--ack", "--max", "6")
    rest = run("consume", "jobs", "--subscription", "work", "--ack")
    printed = first.output.splitlines() + rest.output.splitlines()
    assert [str(i) for i in range(10)] == sorted(printed, key=int)
    assert "" == run("consume", "jobs", "--subscription", "work", "--ack").output
    described = json.loads(run("groups", "describe", "work", "--json").output)
    assert ("share", "jobs", "shared", "jobs.work.dlq") == (
        described["kind"],
        described["topic"],
        described["mode"],
        described["dead_letter_topic"],
    )
    assert (0, 0, 10, 4, 0) == (
        described["total_backlog"],
        described["total_in_flight"],
        described["total_acked"],
        described["total_redelivered"],
        described["total_dead_lettered"],
    )
    text = run("groups", "describe", "work").output
    assert text.startswith("share subscription work of jobs: shared, 0 consumer(s), backlog 0")
    listed = run("groups", "list").output
    assert "share (shared)" in listed
    bad = run("consume", "jobs", "--ack")
    assert 0 != bad.exit_code
    assert "--ack acknowledges events of a --subscription" in bad.output
