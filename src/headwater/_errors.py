"""The one exception tree of Headwater.

Every error a user (or a remote client) can see is a subclass of
:class:`HeadwaterError`. Each class has a stable ``code`` that the wire protocol
carries, and a docstring that says when it happens and what to do about it.

Errors are named by who is at fault, following Trio's habit:

* ``UsageError`` and its children: *you* called something wrongly (bad
  argument, unknown name, value too large). Fix the call; nothing was written.
* ``ClosedError``: *you* (or your program) closed the thing you then used.
* ``BrokenError`` and its children: the *peer, the disk or a part of the system*
  broke. The operation may be retried once the cause is gone.
* ``HeadwaterTimeoutError``: an operation did not finish in the time you allowed.

Never classify an error by its message text: catch the class, or compare
``code``.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "ServerBusyError",
    "ActorError",
    "ActorFailed",
    "ActorKilled",
    "ActorNotFound",
    "ActorRestarted",
    "ActorStopped",
    "AuthenticationError",
    "BrokenError",
    "ClosedError",
    "ConfigError",
    "ConnectionLostError",
    "CorruptionError",
    "DataDirError",
    "DataDirLockedError",
    "DiskFullError",
    "EventTooLarge",
    "FsyncFailedError",
    "HeadwaterError",
    "HeadwaterTimeoutError",
    "IllegalTransitionError",
    "InvalidArgument",
    "InvalidTopicName",
    "LinkedExit",
    "LockLostError",
    "LocalProtocolError",
    "MailboxFull",
    "NotFoundError",
    "OffsetOutOfRangeError",
    "OutOfOrderSequenceError",
    "ProducerFencedError",
    "ConcurrentTransactionsError",
    "InvalidTransactionStateError",
    "TransactionTimedOutError",
    "UnknownTransactionalIdError",
    "UnstableOffsetError",
    "MemberInstanceInUseError",
    "ChangelogMissingError",
    "ProtocolError",
    "RemoteProtocolError",
    "SerializationError",
    "StaleGenerationError",
    "InconsistentGroupProtocolError",
    "StorageError",
    "SubscriptionBusyError",
    "SubscriptionConflictError",
    "SupervisorGaveUp",
    "TopicExistsError",
    "UnknownGroupError",
    "UnknownMemberError",
    "UnknownPartitionError",
    "UnknownTopicError",
    "UnsupportedVersionError",
    "UsageError",
    "WrongListenerError",
    "error_class_for_code",
]


class HeadwaterError(Exception):
    """Base class of every error Headwater raises on purpose.

    Catch this to handle any Headwater failure. ``code`` is a stable string
    carried by the wire protocol; ``retriable`` says whether the same operation
    may succeed if simply tried again later.
    """

    code: ClassVar[str] = "headwater_error"
    retriable: ClassVar[bool] = False

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


# --------------------------------------------------------------------------
# "You did it": usage errors. Nothing was written or changed.


class UsageError(HeadwaterError):
    """A call was made wrongly. Read the message, fix the call; nothing changed."""

    code = "usage_error"


class InvalidArgument(UsageError, ValueError):
    """An argument has the wrong type or value (the message names it and the
    allowed range). Nothing was written; fix the argument and call again."""

    code = "invalid_argument"


class ConfigError(InvalidArgument):
    """A configuration value is invalid or inconsistent. The message names the
    setting and what it accepts."""

    code = "config_error"


class NotFoundError(UsageError, LookupError):
    """The named thing (actor, topic, group, partition) does not exist. Check the
    name, or create the thing first."""

    code = "not_found"


class IllegalTransitionError(UsageError):
    """An operation is not allowed in the current lifecycle state of the object
    (for example starting a child that is already running). The message names
    the state and the operation."""

    code = "illegal_transition"


class ClosedError(HeadwaterError):
    """The object was closed (by this program) and cannot be used any more.
    Open a new one."""

    code = "closed"


class HeadwaterTimeoutError(HeadwaterError, TimeoutError):
    """An operation did not complete within the timeout the caller gave. The
    operation may or may not have taken effect; retry if it is idempotent, or
    raise the timeout."""

    code = "timeout"
    retriable = True


# --------------------------------------------------------------------------
# "It broke": the peer, the disk or an internal part failed.


class BrokenError(HeadwaterError):
    """A peer, the disk or an internal part failed. The message says which; the
    operation can often be retried once the cause is fixed."""

    code = "broken"
    retriable = True


class StorageError(BrokenError):
    """The storage layer failed (I/O error). Acknowledged data is safe; the
    failed operation was not acknowledged and may be retried."""

    code = "storage_error"


class FsyncFailedError(StorageError):
    """An fsync failed. Every append waiting on it failed and was *not*
    acknowledged; the log was reopened from what is on disk. Check the disk
    (``dmesg``), then retry."""

    code = "fsync_failed"


class DiskFullError(StorageError):
    """The disk (or the file system quota) is full. Earlier data is still
    readable; free some space (or lower retention) and retry: the log accepts
    appends again without a restart."""

    code = "disk_full"


class CorruptionError(StorageError):
    """Stored data failed its checksum somewhere other than the tail of a log.
    Nothing was silently dropped. The message names the file and the byte
    position; restore the file, or run ``headwater repair`` on the stopped
    broker's data directory (``Log.open(..., repair=True)`` in code), which
    drops only the damaged records and leaves their offsets as a gap. A broker
    partition that cannot open for this reason is parked as ``failed`` and
    answers every request with this error; the rest of the broker serves."""

    code = "corruption"
    retriable = False


class DataDirError(StorageError):
    """The data directory cannot be used: the path is a file (or lies under
    one), the file system is read-only, or access is denied. ``path`` is the
    directory and the message carries the OS error. Nothing was written; point
    the broker (``--data-dir``) at a writable directory."""

    code = "data_dir_error"
    retriable = False

    def __init__(self, message: str = "", *, path: str = "") -> None:
        super().__init__(message)
        self.path = path


class DataDirLockedError(DataDirError):
    """Another broker holds the data directory (two brokers on one directory
    would each truncate the other's acknowledged events). ``path`` names the
    directory and ``pid`` the holder's process id (``None`` if it could not be
    read). Stop the other broker, or use another directory. The lock is the
    kernel's (``flock``): it goes when its process dies, even by ``kill -9``."""

    code = "data_dir_locked"

    def __init__(self, message: str = "", *, path: str = "", pid: int | None = None) -> None:
        super().__init__(message, path=path)
        self.pid = pid


# --------------------------------------------------------------------------
# Actors and supervision.


class ActorError(HeadwaterError):
    """Base class of errors raised by the actor runtime."""

    code = "actor_error"


class ActorNotFound(ActorError, NotFoundError):
    """No actor is registered at the given path. Check the path (``system.tree()``
    prints every live path)."""

    code = "actor_not_found"


class ActorStopped(ActorError, ClosedError):
    """The actor was stopped for good (or never started) and will not come back.
    Messages to it are refused at once rather than hanging."""

    code = "actor_stopped"


class ActorRestarted(ActorError, BrokenError):
    """The actor crashed and was restarted while your message was still in its
    old mailbox; the message was dropped. Resend it if it is safe to do so."""

    code = "actor_restarted"
    retriable = True


class ActorFailed(ActorError):
    """The actor raised an exception that is not a :class:`HeadwaterError`
    while handling your ``ask``. ``error_type`` and ``error_message`` carry the
    original exception's type name and message (the same locally and
    remotely)."""

    code = "actor_failed"

    def __init__(self, message: str = "", *, error_type: str = "", error_message: str = "") -> None:
        super().__init__(message)
        self.error_type = error_type
        self.error_message = error_message


class ActorKilled(ActorError, BrokenError):
    """The actor was killed on purpose (``system.kill(path)`` or
    ``Broker.kill(path)``, an experiment or test hook). Its supervisor treats
    this as a crash and decides whether to restart it."""

    code = "actor_killed"


class MailboxFull(ActorError, BrokenError):
    """``tell_nowait`` found the actor's bounded mailbox full. Use ``await
    tell()`` to wait for room (backpressure), or drop the message."""

    code = "mailbox_full"
    retriable = True


class SupervisorGaveUp(ActorError, BrokenError):
    """A supervisor exceeded its restart intensity (more than ``max_restarts``
    crashes within ``within`` seconds of running time, backoff left out) and
    stopped. ``child`` names the child whose crash exceeded it and
    ``restarts`` counts that child's own restarts in the window;
    ``__cause__`` is its failure. The supervisor's own supervisor decides
    what happens next; at the root, the actor system stops with this error.
    Find and fix the cause named in the message (or give the child
    ``on_give_up="fail"`` to park it instead of giving up)."""

    code = "supervisor_gave_up"
    retriable = False

    def __init__(self, message: str = "", *, child: str = "", restarts: int = 0) -> None:
        super().__init__(message)
        self.child = child
        self.restarts = restarts


class LinkedExit(ActorError, BrokenError):
    """An actor failed because an actor linked to it (``ctx.link``) exited
    with a reason other than ``"normal"`` (failed, killed or unreachable),
    and it does not trap exits. Its supervisor treats this as a crash. To
    receive such exits as ``Exit`` messages instead, set ``ctx.trap_exits =
    True``."""

    code = "linked_exit"


class WrongListenerError(UsageError):
    """The URL reaches the wrong kind of Headwater listener: a broker's client
    port where an application's actors listener (``serve_actors``,
    ``headwater+actors://host:port``) was expected, or the other way round.
    Check the port: the broker's client port serves topics and ``headwater
    tree``; the actors port serves ``headwater tree --url
    headwater+actors://...`` and ``headwater actors kill|inspect``."""

    code = "wrong_listener"


# --------------------------------------------------------------------------
# Protocol.


class ProtocolError(HeadwaterError):
    """A frame or message violated the Headwater protocol."""

    code = "protocol_error"


class LocalProtocolError(ProtocolError, UsageError):
    """*This* side tried to send something the protocol does not allow (too
    large a frame, a type the codec cannot encode). Nothing was sent."""

    code = "local_protocol_error"


class RemoteProtocolError(ProtocolError, BrokenError):
    """The *peer* sent something the protocol does not allow (garbage, an
    oversized length prefix, an unknown version). The connection is closed."""

    code = "remote_protocol_error"
    retriable = False


class UnsupportedVersionError(ProtocolError):
    """The two sides share no protocol version. ``supported`` lists the
    versions the refusing side speaks (the message names them too); upgrade the
    older side. The connection is closed."""

    code = "unsupported_version"
    retriable = False

    def __init__(self, message: str = "", *, supported: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.supported = supported


class ConnectionLostError(BrokenError):
    """The peer went away (reset, EOF in the middle of a frame or with requests
    in flight, or a broken stream). Requests in flight may or may not have taken
    effect: retry idempotent ones on a new connection."""

    code = "connection_lost"
    retriable = True


class ServerBusyError(BrokenError):
    """The server refused the connection or the request because it is at its
    connection limit or shutting down. Retry later (the client reconnects with
    backoff by itself) or raise the server's ``--max-connections``."""

    code = "server_busy"
    retriable = True


class AuthenticationError(HeadwaterError):
    """The server refused the credentials (or none were given). Check the
    token or TLS settings."""

    code = "authentication_failed"


# --------------------------------------------------------------------------
# Broker: topics, partitions, producers and consumer groups.


class UnknownTopicError(NotFoundError):
    """The named topic does not exist (never created, or deleted). The message
    names it. Create it with ``create_topic`` first, or check the spelling."""

    code = "unknown_topic"


class UnknownPartitionError(NotFoundError):
    """The partition number is not in ``0 .. partitions - 1`` for the topic.
    The message names the topic, the number and the partition count."""

    code = "unknown_partition"


class UnknownGroupError(NotFoundError):
    """The named consumer group does not exist (no member ever joined it and it
    has no committed offsets). Check the name, or join the group first."""

    code = "unknown_group"


class TopicExistsError(UsageError):
    """``create_topic`` named a topic that already exists. Nothing changed; use
    the existing topic, or delete it first."""

    code = "topic_exists"


class OffsetOutOfRangeError(InvalidArgument):
    """An offset is negative or past the partition's end (or before its earliest
    retained offset). The message names the offset and the valid range; seek to
    ``"earliest"`` or ``"latest"``, or to an offset inside the range."""

    code = "offset_out_of_range"


class InvalidTopicName(InvalidArgument):
    """A topic name is empty, longer than 249 characters, ``"."`` or ``".."``, or
    uses a character outside ``[A-Za-z0-9._-]``. Nothing was created; rename."""

    code = "invalid_topic_name"


class EventTooLarge(InvalidArgument):
    """One event (key + value + headers, encoded) exceeds the configured maximum
    size. The message names the size and the limit. Nothing was written: split
    the value, or raise ``max_event_bytes``."""

    code = "event_too_large"


class SerializationError(InvalidArgument):
    """The producer's serializer cannot encode a value (or key/header) of this
    type; the message names the type and the serializer. Nothing was written:
    convert the value, or pass a serializer that handles it."""

    code = "serialization_error"


class StaleGenerationError(UsageError):
    """A commit or heartbeat carried an old group generation: the group has
    rebalanced since this member last joined, so its assignment may have moved.
    Nothing was committed; rejoin the group (the consumer does this by itself)
    and commit only for partitions it still owns."""

    code = "stale_generation"


class InconsistentGroupProtocolError(UsageError):
    """A member tried to join a group whose live members speak another group
    protocol (Headwater consumers and Kafka consumers cannot share a group).
    Nothing changed; use another group name, or wait until the group is empty."""

    code = "inconsistent_group_protocol"


class UnknownMemberError(NotFoundError):
    """The group coordinator does not know this member id (it left, or missed its
    session timeout and was removed). Nothing was committed; join the group
    again to get a new member id."""

    code = "unknown_member"


class OutOfOrderSequenceError(UsageError):
    """A producer batch's sequence number is not the next one the partition
    expects (a gap: an earlier batch was lost, or producer state was reset).
    Nothing was written. The producer cannot safely continue with this id:
    start a new producer; events since the last acknowledged batch may need
    resending."""

    code = "out_of_order_sequence"


class ProducerFencedError(ClosedError):
    """A newer producer with the same producer id (a higher epoch) has started,
    so this one is a zombie and its batch was refused. Nothing was written; close
    this producer and use the newer one."""

    code = "producer_fenced"


class TransactionTimedOutError(ClosedError):
    """The broker aborted this producer's transaction because it stayed open
    longer than its ``transaction_timeout``; nothing in it was committed and
    this producer's epoch is fenced. Start a new producer with the same
    transactional id and redo the work (raise the timeout if it was too short)."""

    code = "transaction_timed_out"


class InvalidTransactionStateError(UsageError):
    """The transaction is not in a state where this operation is allowed (for
    example committing when no transaction is open, or committing a
    transaction that was aborted). Nothing was changed; the message says which
    state it is in."""

    code = "invalid_transaction_state"


class ConcurrentTransactionsError(HeadwaterError):
    """The previous transaction of this transactional id is still being
    completed (its commit or abort markers are being written). Nothing was
    changed; retry shortly (the client does this by itself)."""

    code = "concurrent_transactions"
    retriable = True


class UnstableOffsetError(HeadwaterError):
    """A transaction holds offsets for this partition of the group that are
    not committed or aborted yet, so its committed offset is not known.
    Nothing was read; retry shortly (the consumer does this by itself)."""

    code = "unstable_offset"
    retriable = True


class MemberInstanceInUseError(UsageError):
    """Another live member of the group holds this ``group_instance_id``
    (static membership: ``headwater run --instance N``): it still heartbeats,
    so this member was refused and nothing changed. Stop the other copy, or
    give this one another instance id. A copy restarted after a crash is
    admitted once the dead copy's session ends (the message says within how
    many seconds), so retrying is right for a restart (retriable)."""

    code = "member_instance_in_use"
    retriable = True


class ChangelogMissingError(StorageError):
    """A stream-processing job's changelog topic (``<job>-<store>-changelog``)
    is gone while the job's group has committed input offsets: starting would
    rebuild its tables empty and resume the input where it stopped, so every
    count would be silently wrong. Nothing was processed. Restore the topic
    (from a backup), or start over on purpose under a new job name (or after
    deleting the group's offsets)."""

    code = "changelog_missing"
    retriable = False


class UnknownTransactionalIdError(NotFoundError):
    """No producer has used this transactional id on this broker (or its state
    expired). Check the id; ``headwater transactions list`` shows the known ones."""

    code = "unknown_transactional_id"


class LockLostError(UsageError):
    """An ack, nack, reject or extend named an event this consumer of a share
    subscription does not hold: never delivered to it, or its lock (the
    subscription's ``ack_timeout``) expired and the event went back to be
    delivered again. Nothing changed for that event; it will be (or was)
    redelivered, so make processing idempotent or extend slow jobs in time."""

    code = "lock_lost"


class SubscriptionConflictError(UsageError):
    """A share subscription request conflicts with what exists: the name is a
    consumer group (or a group name is a share subscription; they share one
    namespace), or the topic, mode or settings differ from the subscription's
    (fixed when it was created). Use another name, or the existing settings."""

    code = "subscription_conflict"


class SubscriptionBusyError(UsageError):
    """An ``exclusive`` share subscription already has a live consumer, so a
    second one is refused. Close the first, wait for its session to expire,
    or use mode ``shared``."""

    code = "subscription_busy"


class PipelineError(ConfigError):
    """A stream-processing pipeline is built wrongly: a window without a
    positive size, a negative grace, a session window over an aggregate with no
    ``merge``, a join of streams whose inputs are not co-partitioned, two stores
    with one name. Raised while the pipeline is built or when its topology is
    made, before any event is read. The message names the operator and the fix."""

    code = "pipeline_error"


class ProcessingError(HeadwaterError):
    """A stream-processing job with ``on_error="stop"`` stopped because a user
    function (or a deserializer) raised on an event. The message names the job,
    the operator, and the event's topic, partition and offset; ``__cause__`` is
    the original exception. Fix the function or the data (or choose
    ``on_error="dead_letter"``) and run the job again: nothing of the failed
    batch was committed, so it is processed again."""

    code = "processing_error"

    def __init__(
        self,
        message: str = "",
        *,
        job: str = "",
        operator: str = "",
        topic: str = "",
        partition: int = -1,
        offset: int = -1,
    ) -> None:
        super().__init__(message)
        self.job = job
        self.operator = operator
        self.topic = topic
        self.partition = partition
        self.offset = offset


def _all_subclasses(cls: type[HeadwaterError]) -> list[type[HeadwaterError]]:
    found: list[type[HeadwaterError]] = []
    stack = [cls]
    while stack:
        current = stack.pop()
        found.append(current)
        stack.extend(current.__subclasses__())
    return found


def error_class_for_code(code: str) -> type[HeadwaterError]:
    """Return the :class:`HeadwaterError` subclass whose ``code`` is ``code``.

    Unknown codes map to :class:`HeadwaterError` itself, so that a newer peer's
    error still arrives as a ``HeadwaterError``.
    """
    for cls in _all_subclasses(HeadwaterError):
        if cls.__dict__.get("code") == code:
            return cls
    return HeadwaterError
