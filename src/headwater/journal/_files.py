"""The file layer every journal goes through: real files, or a simulated disk.

Theory of operation
-------------------
``kill -9`` does not test fsync: the kernel still writes the page cache after
the process dies. Power loss has to be simulated *below* the journal. So the
journal never calls ``os`` directly; it calls a :class:`FileSystem`:

* :class:`RealFileSystem` is the ``os`` module (``O_APPEND`` files, ``pread``,
  ``fsync``, directory fsync for new, removed and renamed entries).
* :class:`SimulatedFileSystem` keeps, per file, the bytes as they are and the
  bytes as of the last ``fsync``; per directory, the entries as they are and as
  of the last directory fsync. :meth:`SimulatedFileSystem.crash` is a power
  loss: every file goes back to its synced bytes (optionally keeping a torn
  prefix of what was written after), and files created, removed or renamed
  since the last directory fsync are undone. Hooks inject faults: a failing
  fsync (``EIO``), a full disk (``ENOSPC``, with a partial write), and a crash
  after the k-th operation, so a test can sweep the crash point over a workload.

Both are synchronous. Under Trio, the async log runs the real one's slow calls
in a worker thread and the simulated one inline (DECISIONS #1).
"""

from __future__ import annotations

import errno
import fcntl
import os
import random
from collections.abc import Callable, Sequence
from typing import Protocol

import attrs

__all__ = [
    "write_file_atomically",
    "FileSystem",
    "LockHeld",
    "PowerLoss",
    "RealFileSystem",
    "SimulatedFileSystem",
]


class FileSystem(Protocol):
    """The operations the journal needs. Handles are opaque ints."""

    blocking: bool
    """True when calls may block on a real disk (run them in a thread)."""

    def open(self, path: str) -> int:
        """Open (creating if missing) for appending writes and positional reads."""
        ...

    def write(self, handle: int, data: bytes | bytearray | memoryview) -> None:
        """Append all of ``data``; on error some prefix may have been written."""
        ...

    def pread(self, handle: int, size: int, offset: int) -> bytes:
        """Read up to ``size`` bytes at ``offset``."""
        ...

    def size(self, handle: int) -> int:
        """Current size of the open file."""
        ...

    def fsync(self, handle: int) -> None:
        """Make the file's bytes durable."""
        ...

    def truncate(self, handle: int, size: int) -> None:
        """Cut the file to ``size`` bytes."""
        ...

    def close(self, handle: int) -> None:
        """Close the handle."""
        ...

    def fsync_dir(self, path: str) -> None:
        """Make the directory's entries (creates, removes, renames) durable."""
        ...

    def listdir(self, path: str) -> list[str]:
        """Names in a directory."""
        ...

    def exists(self, path: str) -> bool:
        """Whether ``path`` exists."""
        ...

    def makedirs(self, path: str) -> None:
        """Create a directory and its parents (no error if it exists); the
        ones it creates are durable when it returns (parents fsynced)."""
        ...

    def remove(self, path: str) -> None:
        """Remove a file."""
        ...

    def rmtree(self, path: str) -> None:
        """Remove a directory and everything in it."""
        ...

    def rename(self, src: str, dst: str) -> None:
        """Rename atomically, replacing ``dst``."""
        ...

    def lock(self, path: str) -> int:
        """Take the exclusive lock named by ``path`` without waiting, and
        record this process's id in it. The lock lasts until :meth:`close` of
        the returned handle, or the death of the process (even ``kill -9``).
        Raises :class:`LockHeld` when another holder has it."""
        ...

    def writev(self, handle: int, buffers: Sequence[bytes | bytearray | memoryview]) -> None:
        """Append all of ``buffers``, in order, as few system calls as
        possible (one gather write); on error some prefix may have been
        written."""
        ...

    def overwrite(self, handle: int, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` at the start of the file in place (a small
        fixed-size file such as the checkpoint; no truncation, bytes past
        ``len(data)`` are kept)."""
        ...


class LockHeld(BlockingIOError):
    """:meth:`FileSystem.lock` found the lock taken; ``pid`` is the holder's
    process id as recorded in the lock (``None`` if unreadable)."""

    def __init__(self, path: str, pid: int | None) -> None:
        super().__init__(errno.EWOULDBLOCK, "locked by another process", path)
        self.pid = pid


_nowait_reads = [hasattr(os, "RWF_NOWAIT") and hasattr(os, "preadv")]
"""Whether ``RealFileSystem.pread_cached`` may try ``RWF_NOWAIT`` reads."""


class RealFileSystem:
    """The real disk, through the ``os`` module."""

    blocking = True

    def open(self, path: str) -> int:
        """See :class:`FileSystem`."""
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)

    def write(self, handle: int, data: bytes | bytearray | memoryview) -> None:
        """See :class:`FileSystem`."""
        view = memoryview(data)
        while view:
            written = os.write(handle, view)
            view = view[written:]

    def pread(self, handle: int, size: int, offset: int) -> bytes:
        """See :class:`FileSystem`."""
        return os.pread(handle, size, offset)

    def pread_cached(self, handle: int, size: int, offset: int) -> bytes | bytearray | None:
        """:meth:`pread` from the page cache only (``preadv`` with
        ``RWF_NOWAIT``): ``None`` when some of the bytes would have to come
        from the disk, or where the kernel or file system cannot say (then
        a worker thread reads them). A short result may mean the same."""
        if not _nowait_reads[0]:
            return None
        buffer = bytearray(size)
        try:
            n = os.preadv(handle, [buffer], offset, os.RWF_NOWAIT)
        except BlockingIOError:
            return None
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                _nowait_reads[0] = False  # not here: always use the thread
                return None
            raise
        del buffer[n:]
        return buffer

    def size(self, handle: int) -> int:
        """See :class:`FileSystem`."""
        return os.fstat(handle).st_size

    def fsync(self, handle: int) -> None:
        """See :class:`FileSystem`."""
        os.fsync(handle)

    def truncate(self, handle: int, size: int) -> None:
        """See :class:`FileSystem`."""
        os.ftruncate(handle, size)

    def close(self, handle: int) -> None:
        """See :class:`FileSystem`."""
        os.close(handle)

    def fsync_dir(self, path: str) -> None:
        """See :class:`FileSystem`."""
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def listdir(self, path: str) -> list[str]:
        """See :class:`FileSystem`."""
        return os.listdir(path)

    def exists(self, path: str) -> bool:
        """See :class:`FileSystem`."""
        return os.path.exists(path)

    def makedirs(self, path: str) -> None:
        """See :class:`FileSystem`. Each directory it creates is made
        durable (its parent fsynced): files created in it and fsynced
        must not vanish with it after a power loss."""
        missing: list[str] = []
        p = os.path.abspath(path)
        while not os.path.isdir(p):
            missing.append(p)
            parent = os.path.dirname(p)
            if parent == p:
                break
            p = parent
        os.makedirs(path, exist_ok=True)
        for created in reversed(missing):
            try:
                self.fsync_dir(os.path.dirname(created))
            except PermissionError:
                pass  # a parent we may write but not read: nothing more to do

    def remove(self, path: str) -> None:
        """See :class:`FileSystem`."""
        os.remove(path)

    def rmtree(self, path: str) -> None:
        """See :class:`FileSystem`."""
        import shutil

        shutil.rmtree(path)

    def rename(self, src: str, dst: str) -> None:
        """See :class:`FileSystem`."""
        os.replace(src, dst)

    def lock(self, path: str) -> int:
        """See :class:`FileSystem`: ``flock(LOCK_EX | LOCK_NB)`` on the file
        (created if missing), which the kernel drops when the process dies.
        ``flock`` locks belong to the open file, so a second ``lock`` of the
        same path in the same process is refused too."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = _parse_pid(os.pread(fd, 32, 0))
            finally:
                os.close(fd)
            raise LockHeld(path, holder) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def writev(self, handle: int, buffers: Sequence[bytes | bytearray | memoryview]) -> None:
        """See :class:`FileSystem`: ``os.writev`` in chunks of at most
        ``_IOV_MAX`` buffers, resumed after a short write."""
        if len(buffers) <= _IOV_MAX:  # the usual case: all of it in one call
            written = os.writev(handle, buffers)
            if written == sum(map(len, buffers)):
                return
        else:
            written = 0
        views = [memoryview(b) for b in buffers]
        while True:
            while written:
                first = views[0]
                if written >= len(first):
                    written -= len(first)
                    views.pop(0)
                else:
                    views[0] = first[written:]
                    written = 0
            while views and not len(views[0]):
                views.pop(0)
            if not views:
                return
            written = os.writev(handle, views[:_IOV_MAX])

    def overwrite(self, handle: int, data: bytes | bytearray | memoryview) -> None:
        """See :class:`FileSystem`: ``pwrite`` at 0 (``O_APPEND`` is cleared
        on the handle first, else Linux would append)."""
        flags = fcntl.fcntl(handle, fcntl.F_GETFL)
        if flags & os.O_APPEND:
            fcntl.fcntl(handle, fcntl.F_SETFL, flags & ~os.O_APPEND)
        view = memoryview(data)
        position = 0
        while position < len(view):
            position += os.pwrite(handle, view[position:], position)


_IOV_MAX = 512
"""Buffers per ``writev`` call (Linux's limit is 1024)."""


def _parse_pid(data: bytes) -> int | None:
    try:
        return int(data.strip() or b"x")
    except ValueError:
        return None


class PowerLoss(Exception):
    """Raised by every operation of a :class:`SimulatedFileSystem` once its
    scheduled crash point passed: the machine is "off" until :meth:`crash`."""


@attrs.define(eq=False)
class _SimFile:
    data: bytearray = attrs.field(factory=bytearray)
    synced: bytes = b""
    # Bytes appended since the last fsync form the "tail" a crash may tear.


def _parent(path: str) -> str:
    return os.path.dirname(path.rstrip("/")) or "/"


class SimulatedFileSystem:
    """An in-memory disk that can lose power (see the module docstring).

    Paths are plain strings; directories must be created with :meth:`makedirs`.
    """

    blocking = False

    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(seed)
        self._files: dict[str, _SimFile] = {}
        self._dirs: set[str] = {"/"}
        # The namespace as of the last directory fsyncs: path -> file object.
        self._durable_files: dict[str, _SimFile] = {}
        self._durable_dirs: set[str] = {"/"}
        self._handles: dict[int, tuple[str, _SimFile]] = {}
        # Locks (see lock()): held path -> handle, in memory only, no file.
        self._locks: dict[str, int] = {}
        self._next_handle = 3
        self.ops = 0
        self._crash_after: int | None = None
        self._fail_fsyncs = 0
        self._disk_full = False
        self.fsyncs = 0
        self.fsync_hook: Callable[[str], None] | None = None
        """Called with the file's path as each fsync starts (a simulation
        lands a kill while an fsync is in flight through it)."""

    # -- fault hooks -------------------------------------------------------

    def crash_after(self, ops: int | None) -> None:
        """Make every operation after the next ``ops`` raise :class:`PowerLoss`."""
        self._crash_after = None if ops is None else self.ops + ops

    def fail_next_fsyncs(self, n: int = 1) -> None:
        """Make the next ``n`` fsyncs fail with ``EIO`` (their bytes stay unsynced)."""
        self._fail_fsyncs = n

    def set_disk_full(self, full: bool) -> None:
        """While full, writes store a prefix and raise ``ENOSPC``."""
        self._disk_full = full

    def crash(self, *, torn: bool = False, process_only: bool = False) -> None:
        """Power loss: keep only synced bytes and durable directory entries.

        With ``torn``, a file whose unsynced bytes extend its synced ones keeps a
        random prefix of them (a torn write). Open handles become invalid.

        With ``process_only``, the machine stays up and only the process
        dies (``kill -9``): every byte written stays (the page cache), and
        only handles and locks go. After :meth:`crash_after` this is a kill
        between two file operations.
        """
        if not process_only:
            self._lose_unsynced(torn)
        self._handles.clear()
        self._locks.clear()  # the crash ended every process holding one
        self._crash_after = None
        self._fail_fsyncs = 0
        self._disk_full = False

    def _lose_unsynced(self, torn: bool) -> None:
        # An entry survives only if every directory above it does (a
        # directory removed and its parent fsynced takes its files along).
        dirs = {d for d in self._durable_dirs if self._durable_chain(d)}
        files: dict[str, _SimFile] = {}
        for path, f in self._durable_files.items():
            if _parent(path) not in dirs:
                continue
            data = bytearray(f.synced)
            if torn and len(f.data) > len(f.synced) and f.data.startswith(f.synced):
                extra = len(f.data) - len(f.synced)
                data += f.data[len(f.synced) : len(f.synced) + self._rng.randrange(extra + 1)]
            files[path] = _SimFile(data=data, synced=bytes(data))
        self._files = files
        self._durable_files = dict(files)
        self._durable_dirs = dirs
        self._dirs = set(dirs)

    def _durable_chain(self, path: str) -> bool:
        while path != "/":
            if path not in self._durable_dirs:
                return False
            path = _parent(path)
        return True

    # -- operations ----------------------------------------------------------

    def _op(self) -> None:
        self.ops += 1
        if self._crash_after is not None and self.ops > self._crash_after:
            raise PowerLoss(f"simulated power loss at operation {self.ops}")

    def _file(self, handle: int) -> _SimFile:
        try:
            return self._handles[handle][1]
        except KeyError:
            raise OSError(errno.EBADF, "bad simulated file handle") from None

    def _need_dir(self, path: str) -> None:
        if _parent(path) not in self._dirs:
            raise FileNotFoundError(errno.ENOENT, "no such directory", _parent(path))

    def open(self, path: str) -> int:
        """See :class:`FileSystem`."""
        self._op()
        self._need_dir(path)
        f = self._files.get(path)
        if f is None:
            f = self._files[path] = _SimFile()
        handle = self._next_handle
        self._next_handle += 1
        self._handles[handle] = (path, f)
        return handle

    def write(self, handle: int, data: bytes | bytearray | memoryview) -> None:
        """See :class:`FileSystem`."""
        self._op()
        f = self._file(handle)
        if self._disk_full:
            f.data += bytes(data)[: len(data) // 2]
            raise OSError(errno.ENOSPC, "No space left on device (simulated)")
        f.data += data

    def writev(self, handle: int, buffers: Sequence[bytes | bytearray | memoryview]) -> None:
        """See :class:`FileSystem` (one operation, like one ``writev``)."""
        self.write(handle, b"".join(buffers))

    def overwrite(self, handle: int, data: bytes | bytearray | memoryview) -> None:
        """See :class:`FileSystem`. Under a full disk nothing changes and
        ``ENOSPC`` is raised."""
        self._op()
        f = self._file(handle)
        if self._disk_full and len(data) > len(f.data):
            raise OSError(errno.ENOSPC, "No space left on device (simulated)")
        f.data[: len(data)] = data

    def pread(self, handle: int, size: int, offset: int) -> bytes:
        """See :class:`FileSystem`."""
        self._op()
        return bytes(self._file(handle).data[offset : offset + size])

    def size(self, handle: int) -> int:
        """See :class:`FileSystem`."""
        return len(self._file(handle).data)

    def fsync(self, handle: int) -> None:
        """See :class:`FileSystem`."""
        self._op()
        f = self._file(handle)
        if self.fsync_hook is not None:
            self.fsync_hook(self._handles[handle][0])
        if self._fail_fsyncs:
            self._fail_fsyncs -= 1
            raise OSError(errno.EIO, "Input/output error (simulated fsync failure)")
        f.synced = bytes(f.data)
        self.fsyncs += 1

    def truncate(self, handle: int, size: int) -> None:
        """See :class:`FileSystem`."""
        self._op()
        f = self._file(handle)
        del f.data[size:]

    def close(self, handle: int) -> None:
        """See :class:`FileSystem`."""
        self._handles.pop(handle, None)
        for path, held in list(self._locks.items()):
            if held == handle:
                del self._locks[path]

    def lock(self, path: str) -> int:
        """See :class:`FileSystem`. The simulated lock lives in memory (no
        file is created); :meth:`crash` releases every lock, as a power loss
        ends the processes that held them."""
        if path in self._locks:
            raise LockHeld(path, os.getpid())
        handle = self._next_handle
        self._next_handle += 1
        self._locks[path] = handle
        return handle

    def fsync_dir(self, path: str) -> None:
        """See :class:`FileSystem`."""
        self._op()
        prefix = path.rstrip("/") + "/"
        for p in [p for p in self._durable_files if _parent(p) == path.rstrip("/")]:
            if p not in self._files:
                del self._durable_files[p]
        for p, f in self._files.items():
            if p.startswith(prefix) and _parent(p) == path.rstrip("/"):
                self._durable_files[p] = f
        for d in [d for d in self._durable_dirs if _parent(d) == path.rstrip("/")]:
            if d not in self._dirs:
                self._durable_dirs.discard(d)
        for d in self._dirs:
            if _parent(d) == path.rstrip("/"):
                self._durable_dirs.add(d)

    def listdir(self, path: str) -> list[str]:
        """See :class:`FileSystem`."""
        base = path.rstrip("/")
        names = [p.rsplit("/", 1)[1] for p in self._files if _parent(p) == base]
        names += [d.rsplit("/", 1)[1] for d in self._dirs if d != "/" and _parent(d) == base]
        return sorted(names)

    def exists(self, path: str) -> bool:
        """See :class:`FileSystem`."""
        p = path.rstrip("/") or "/"
        return p in self._files or p in self._dirs

    def makedirs(self, path: str) -> None:
        """See :class:`FileSystem`. New directories are durable at once (the
        journal creates them before any data)."""
        self._op()
        p = path.rstrip("/")
        while p and p not in self._dirs:
            self._dirs.add(p)
            self._durable_dirs.add(p)
            p = _parent(p)

    def remove(self, path: str) -> None:
        """See :class:`FileSystem`."""
        self._op()
        if path not in self._files:
            raise FileNotFoundError(errno.ENOENT, "no such file", path)
        del self._files[path]

    def rmtree(self, path: str) -> None:
        """See :class:`FileSystem`."""
        self._op()
        prefix = path.rstrip("/") + "/"
        for p in [p for p in self._files if p.startswith(prefix)]:
            del self._files[p]
        self._dirs = {d for d in self._dirs if not (d == path.rstrip("/") or d.startswith(prefix))}

    def rename(self, src: str, dst: str) -> None:
        """See :class:`FileSystem`."""
        self._op()
        self._need_dir(dst)
        try:
            self._files[dst] = self._files.pop(src)
        except KeyError:
            raise FileNotFoundError(errno.ENOENT, "no such file", src) from None

    def open_paths(self) -> list[str]:
        """Paths of the files open now, one entry per open handle (a clean
        shutdown leaves none)."""
        return sorted(path for path, _f in self._handles.values())

    def file_bytes(self, path: str) -> bytes:
        """The current bytes of a file (for tests)."""
        return bytes(self._files[path].data)

    def corrupt(self, path: str, position: int, xor: int = 0x01) -> None:
        """Flip bits of one byte of a file, in place and as synced (for tests)."""
        f = self._files[path]
        f.data[position] ^= xor
        if position < len(f.synced):
            synced = bytearray(f.synced)
            synced[position] ^= xor
            f.synced = bytes(synced)

    def set_file_bytes(self, path: str, data: bytes) -> None:
        """Replace a file's bytes, synced (for tests of damaged files)."""
        self._need_dir(path)
        f = self._files.setdefault(path, _SimFile())
        f.data = bytearray(data)
        f.synced = bytes(data)
        self._durable_files[path] = f


def write_file_atomically(
    fs: FileSystem, path: str, chunks: list[bytes] | tuple[bytes, ...]
) -> None:
    """Replace ``path`` with ``chunks``: write a temporary file, fsync it, rename
    it over ``path``. A crash leaves the old or the new file, never a mix. The
    caller fsyncs the directory to make the rename itself durable."""
    tmp = f"{path}.tmp"
    if fs.exists(tmp):
        fs.remove(tmp)
    handle = fs.open(tmp)
    try:
        for chunk in chunks:
            fs.write(handle, chunk)
        fs.fsync(handle)
    finally:
        fs.close(handle)
    fs.rename(tmp, path)


def remove_tree_durably(fs: FileSystem, path: str) -> None:
    """Remove the directory tree at ``path`` (if there) and fsync its parent,
    so the removal survives a power loss once this returns. A kill midway
    can leave part of the tree: callers that create ``path`` again remove
    what is left first (this function, before they create it)."""
    if fs.exists(path):
        fs.rmtree(path)
        fs.fsync_dir(os.path.dirname(path.rstrip("/")) or "/")
