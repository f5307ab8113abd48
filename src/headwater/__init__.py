"""Headwater: an event-streaming broker for Python, built on supervised Trio actors.

The public face of the package. Everything a user needs is importable from here;
the implementation lives in private ``_``-modules and subpackages.
"""

from __future__ import annotations

from typing import Any as _Any

from ._errors import ActorError as ActorError
from ._errors import ActorFailed as ActorFailed
from ._errors import ActorKilled as ActorKilled
from ._errors import ActorNotFound as ActorNotFound
from ._errors import ActorRestarted as ActorRestarted
from ._errors import ActorStopped as ActorStopped
from ._errors import AuthenticationError as AuthenticationError
from ._errors import BrokenError as BrokenError
from ._errors import ChangelogMissingError as ChangelogMissingError
from ._errors import ClosedError as ClosedError
from ._errors import ConcurrentTransactionsError as ConcurrentTransactionsError
from ._errors import ConfigError as ConfigError
from ._errors import ConnectionLostError as ConnectionLostError
from ._errors import CorruptionError as CorruptionError
from ._errors import DataDirError as DataDirError
from ._errors import DataDirLockedError as DataDirLockedError
from ._errors import DiskFullError as DiskFullError
from ._errors import EventTooLarge as EventTooLarge
from ._errors import FsyncFailedError as FsyncFailedError
from ._errors import HeadwaterError as HeadwaterError
from ._errors import HeadwaterTimeoutError as HeadwaterTimeoutError
from ._errors import IllegalTransitionError as IllegalTransitionError
from ._errors import InconsistentGroupProtocolError as InconsistentGroupProtocolError
from ._errors import InvalidArgument as InvalidArgument
from ._errors import InvalidTopicName as InvalidTopicName
from ._errors import InvalidTransactionStateError as InvalidTransactionStateError
from ._errors import LinkedExit as LinkedExit
from ._errors import LocalProtocolError as LocalProtocolError
from ._errors import LockLostError as LockLostError
from ._errors import MailboxFull as MailboxFull
from ._errors import MemberInstanceInUseError as MemberInstanceInUseError
from ._errors import NotFoundError as NotFoundError
from ._errors import OffsetOutOfRangeError as OffsetOutOfRangeError
from ._errors import OutOfOrderSequenceError as OutOfOrderSequenceError
from ._errors import PipelineError as PipelineError
from ._errors import ProcessingError as ProcessingError
from ._errors import ProducerFencedError as ProducerFencedError
from ._errors import ProtocolError as ProtocolError
from ._errors import RemoteProtocolError as RemoteProtocolError
from ._errors import SerializationError as SerializationError
from ._errors import ServerBusyError as ServerBusyError
from ._errors import StaleGenerationError as StaleGenerationError
from ._errors import StorageError as StorageError
from ._errors import SubscriptionBusyError as SubscriptionBusyError
from ._errors import SubscriptionConflictError as SubscriptionConflictError
from ._errors import SupervisorGaveUp as SupervisorGaveUp
from ._errors import TopicExistsError as TopicExistsError
from ._errors import TransactionTimedOutError as TransactionTimedOutError
from ._errors import UnknownGroupError as UnknownGroupError
from ._errors import UnknownMemberError as UnknownMemberError
from ._errors import UnknownPartitionError as UnknownPartitionError
from ._errors import UnknownTopicError as UnknownTopicError
from ._errors import UnknownTransactionalIdError as UnknownTransactionalIdError
from ._errors import UnstableOffsetError as UnstableOffsetError
from ._errors import UnsupportedVersionError as UnsupportedVersionError
from ._errors import UsageError as UsageError
from ._errors import WrongListenerError as WrongListenerError
from ._logging import configure_logging as configure_logging
from .actors import Actor as Actor
from .actors import ActorRef as ActorRef
from .actors import ActorSystem as ActorSystem
from .actors import open_actor_system as open_actor_system
from .broker import Broker as Broker
from .broker._broker import set_embedded_client_factory as _set_embedded_client_factory
from .client import Client as Client
from .client import Event as Event
from .client import LocalChannel as _LocalChannel
from .client import connect as connect
from .supervision import ChildSpec as ChildSpec
from .supervision import SupervisorSpec as SupervisorSpec
from .web import open_broker as open_broker

__version__ = "0.1.0.dev0"

__all__ = [
    # the broker
    "open_broker",
    "configure_logging",
    "connect",
    "Broker",
    "Client",
    "Event",
    # actors and supervision
    "Actor",
    "ActorRef",
    "ActorSystem",
    "ChildSpec",
    "SupervisorSpec",
    "open_actor_system",
    # errors
    "HeadwaterError",
    "UsageError",
    "WrongListenerError",
    "InvalidArgument",
    "ConfigError",
    "NotFoundError",
    "IllegalTransitionError",
    "ClosedError",
    "HeadwaterTimeoutError",
    "BrokenError",
    "StorageError",
    "FsyncFailedError",
    "DiskFullError",
    "CorruptionError",
    "DataDirError",
    "DataDirLockedError",
    "ActorError",
    "ActorNotFound",
    "ActorStopped",
    "ActorRestarted",
    "ActorFailed",
    "ActorKilled",
    "MailboxFull",
    "SupervisorGaveUp",
    "LinkedExit",
    "ProtocolError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "AuthenticationError",
    "UnsupportedVersionError",
    "ConnectionLostError",
    "ServerBusyError",
    "UnknownTopicError",
    "UnknownPartitionError",
    "UnknownGroupError",
    "TopicExistsError",
    "OffsetOutOfRangeError",
    "InvalidTopicName",
    "EventTooLarge",
    "SerializationError",
    "StaleGenerationError",
    "InconsistentGroupProtocolError",
    "UnknownMemberError",
    "OutOfOrderSequenceError",
    "ProducerFencedError",
    "ConcurrentTransactionsError",
    "InvalidTransactionStateError",
    "TransactionTimedOutError",
    "UnknownTransactionalIdError",
    "UnstableOffsetError",
    "MemberInstanceInUseError",
    "ChangelogMissingError",
    "LockLostError",
    "SubscriptionBusyError",
    "PipelineError",
    "ProcessingError",
    "SubscriptionConflictError",
]


def _embedded_client(handle: _Any, **options: _Any) -> Client:
    """The client :meth:`Broker.connect` hands out: the broker sits below the
    client (DESIGN.md's layer order), so this root module wires them."""
    return Client(_LocalChannel(handle), **options)


_set_embedded_client_factory(_embedded_client)
