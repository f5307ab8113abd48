"""headwater.processing: stream processing on Headwater topics.

Build a :class:`Job` from streams (``job.stream(topic)``) with ``map``,
``filter``, ``flat_map``, ``key_by``/``group_by``, ``foreach``, ``branch``,
``merge`` and ``to``; aggregate into tables (``count``, ``reduce``,
``aggregate``) or event-time windows (:func:`tumbling`, :func:`hopping`,
:func:`sliding`, :func:`session`); join streams with tables and with
streams. Run it with ``headwater run job.py``; test it with
:class:`TestDriver`. The :class:`Topology`/:class:`Task` seam is what the
runner drives. See docs/processing.md.
"""

from __future__ import annotations

from headwater.processing._driver import TestDriver as TestDriver
from headwater.processing._job import Job as Job
from headwater.processing._job import Stream as Stream
from headwater.processing._job import Table as Table
from headwater.processing._job import WindowedStream as WindowedStream
from headwater.processing._job import WindowedTable as WindowedTable
from headwater.processing._serde import Windowed as Windowed
from headwater.processing._task import InRecord as InRecord
from headwater.processing._task import InternalTopic as InternalTopic
from headwater.processing._task import OutRecord as OutRecord
from headwater.processing._task import TableInfo as TableInfo
from headwater.processing._task import Task as Task
from headwater.processing._task import TaskId as TaskId
from headwater.processing._task import TaskStatistics as TaskStatistics
from headwater.processing._task import Topology as Topology
from headwater.processing._windows import Hopping as Hopping
from headwater.processing._windows import Session as Session
from headwater.processing._windows import Sliding as Sliding
from headwater.processing._windows import Tumbling as Tumbling
from headwater.processing._windows import hopping as hopping
from headwater.processing._windows import session as session
from headwater.processing._windows import sliding as sliding
from headwater.processing._windows import tumbling as tumbling

__all__ = [
    "Job",
    "Stream",
    "Table",
    "WindowedStream",
    "WindowedTable",
    "Windowed",
    "tumbling",
    "hopping",
    "sliding",
    "session",
    "Tumbling",
    "Hopping",
    "Sliding",
    "Session",
    "TestDriver",
    "Topology",
    "Task",
    "TaskId",
    "TaskStatistics",
    "InRecord",
    "OutRecord",
    "InternalTopic",
    "TableInfo",
]

# The runner behind `headwater run` (processing-run's part; appended).
from headwater.processing._runner import JobRunner as JobRunner
from headwater.processing._runner import RunConfig as RunConfig
from headwater.processing._runner import RunStats as RunStats
from headwater.processing._runner import open_job_runner as open_job_runner
from headwater.processing._runner import run_job as run_job

__all__ += ["JobRunner", "RunConfig", "RunStats", "open_job_runner", "run_job"]
