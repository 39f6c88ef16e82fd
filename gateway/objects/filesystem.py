"""Objects as files under a directory, for the embedded mode: ``<root>/<key>`` with ``<key>.meta.json`` beside it.

Every file is written under a temporary name in its destination directory, fsynced, renamed into place and
the directory fsynced, so a crash leaves the old file or the new one, never a mix. On completion the old
sidecar is removed before the data is renamed and the new sidecar is renamed last, each step made durable
before the next: a sidecar never describes other data, and an interrupted completion leaves an object
without a sidecar (no metadata, ``sha256`` None; see the port). Blocking calls run in threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import stat
import threading
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import BinaryIO, TypeVar

import orjson

from gateway.objects import (
    READ_CHUNK_BYTES,
    SIDECAR_SUFFIX,
    ChunkStream,
    ObjectInfo,
    ObjectNotFound,
    ObjectStoreError,
    ObjectStoreUnavailable,
    check_key,
    check_metadata,
    check_sha256,
)

T = TypeVar("T")
BUFFER_BYTES = 1024 * 1024
"""An upload keeps up to this much in memory before it opens its file."""
_REFUSED_NAMES = frozenset({errno.ENAMETOOLONG, errno.EINVAL, errno.EILSEQ})
"""What the file system says of a name it will never take."""


@contextlib.contextmanager
def translated(key: str) -> Iterator[None]:
    """Disk errors (full, I/O, permissions) are retriable: an operator can fix them under a waiting worker."""
    try:
        yield
    except (IsADirectoryError, NotADirectoryError) as exc:
        raise ObjectStoreError(f"object key {key!r} collides with a directory: {exc}") from exc
    except OSError as exc:
        if exc.errno in _REFUSED_NAMES:  # the same key fails the same way every time: not an outage
            raise ObjectStoreError(f"the file system refuses object key {key!r}: {os.strerror(exc.errno or 0)}") from exc
        raise ObjectStoreUnavailable(f"object store directory failed on {key!r}: {exc}") from exc


class FilesystemObjectStore:
    def __init__(self, root: Path) -> None:
        self._root = root

    def _path(self, key: str) -> Path:
        check_key(key)
        return self._root / key

    async def _call(self, key: str, call: Callable[[], T]) -> T:
        with translated(key):
            return await asyncio.to_thread(call)

    async def ensure_bucket(self) -> None:
        await self._call(str(self._root), partial(self._root.mkdir, parents=True, exist_ok=True))

    def begin(self, key: str, metadata: dict[str, str], size_hint: int | None = None) -> FileUpload:
        """``size_hint`` is not needed: files have no parts to size."""
        check_metadata(metadata)
        return FileUpload(self._root, self._path(key), key, metadata)

    async def put(self, key: str, data: bytes, metadata: dict[str, str], sha256: str) -> ObjectInfo:
        check_sha256(sha256)
        upload = self.begin(key, metadata)
        return await self._call(key, partial(upload.store, lambda file: file.write(data), sha256))

    async def stat(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        return await self._call(key, partial(_stat, path, key))

    async def read(self, key: str) -> ChunkStream:
        path = self._path(key)
        file, first = await self._call(key, partial(_open_object, path, key))
        return ChunkStream(partial(asyncio.to_thread, _read_chunk, file, key), file.close, first,
                           complete=len(first) < READ_CHUNK_BYTES)  # a file reads short only at its end

    async def copy(self, source: str, destination: str, metadata: dict[str, str] | None = None) -> ObjectInfo:
        source_path = self._path(source)
        return await self._call(destination, partial(self._copy, source_path, source, destination, metadata))

    def _copy(self, source_path: Path, source: str, destination: str, metadata: dict[str, str] | None) -> ObjectInfo:
        info = _stat(source_path, source)
        if info is None:
            raise ObjectNotFound(source)
        upload = self.begin(destination, info.metadata if metadata is None else metadata)
        with source_path.open("rb") as original:
            return upload.store(lambda file: _copy_file(original, file), info.sha256)

    async def delete(self, key: str) -> None:
        path = self._path(key)
        await self._call(key, partial(_delete, path))

    async def close(self) -> None:
        """Nothing to release: files are opened per call."""


class FileUpload:
    """A temporary file beside the object's final path; its blocking steps are serialised by a lock, so
    an ``abort()`` after a cancelled ``write()`` waits for the write thread instead of racing it."""

    def __init__(self, root: Path, path: Path, key: str, metadata: dict[str, str]) -> None:
        self._root = root
        self._path = path
        self._key = key
        self._metadata = dict(metadata)
        self._temp = _temp_path(path)
        self._file: BinaryIO | None = None
        self._buffer = bytearray()
        """What was written before the file was opened: a small object is written, synced and renamed in one
        call off the event loop instead of one per write."""
        self._lock = threading.Lock()
        self._state = "open"

    async def write(self, data: bytes) -> None:
        self._check_open()
        if self._file is None and len(self._buffer) + len(data) <= BUFFER_BYTES:
            self._buffer += data
            return
        try:
            with translated(self._key):
                await asyncio.to_thread(self._write, data)
        except BaseException:
            self._state = "failed"
            raise

    async def complete(self, sha256: str) -> ObjectInfo:
        check_sha256(sha256)
        self._check_open()
        self._state = "completing"
        with translated(self._key):
            return await asyncio.to_thread(self._complete, sha256)

    async def abort(self) -> None:
        """After a completion it only removes what a failed one left: a renamed file is no longer temporary."""
        if self._state == "aborted":
            return
        never_written = self._state == "open" and self._file is None
        self._state = "aborted"
        if never_written:  # only buffered: no thread ever touched a file
            self._buffer = bytearray()
            return
        with translated(self._key):
            await asyncio.to_thread(self._discard)

    def store(self, fill: Callable[[BinaryIO], object], sha256: str | None) -> ObjectInfo:
        """Write a whole object in the calling thread (``put`` and ``copy``)."""
        try:
            with self._lock:
                fill(self._open())
            return self._complete(sha256)
        except BaseException:
            self._discard()
            raise

    def _check_open(self) -> None:
        if self._state != "open":
            raise ObjectStoreError(f"upload of {self._key!r} is {self._state}; abort it and start again")

    def _open(self) -> BinaryIO:
        if self._file is None:
            _make_directories(self._temp.parent, self._root)
            self._file = self._temp.open("xb")
            self._file.write(self._buffer)
            self._buffer = bytearray()
        return self._file

    def _write(self, data: bytes) -> None:
        with self._lock:
            self._open().write(data)

    def _complete(self, sha256: str | None) -> ObjectInfo:
        with self._lock:
            file = self._open()
            size = file.tell()
            file.flush()
            os.fsync(file.fileno())
            file.close()
            sidecar = _sidecar_path(self._path)
            with contextlib.suppress(FileNotFoundError):
                sidecar.unlink()
                _fsync_directory(self._path.parent)
            os.replace(self._temp, self._path)
            _fsync_directory(self._path.parent)
            _write_atomically(sidecar, orjson.dumps({"metadata": self._metadata, "sha256": sha256}))
        return ObjectInfo(self._key, size, dict(self._metadata), sha256)

    def _discard(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                with contextlib.suppress(FileNotFoundError):
                    self._temp.unlink()


def _stat(path: Path, key: str) -> ObjectInfo | None:
    try:
        status = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not stat.S_ISREG(status.st_mode):
        return None
    try:
        sidecar = orjson.loads(_sidecar_path(path).read_bytes())
    except FileNotFoundError:
        return ObjectInfo(key, status.st_size, {}, None)
    return ObjectInfo(key, status.st_size, sidecar["metadata"], sidecar["sha256"])


def _open_object(path: Path, key: str) -> tuple[BinaryIO, bytes]:
    """The open file and its first chunk."""
    try:
        file = path.open("rb")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise ObjectNotFound(key) from None
    try:
        return file, file.read(READ_CHUNK_BYTES)
    except BaseException:
        file.close()
        raise


def _read_chunk(file: BinaryIO, key: str) -> bytes:
    with translated(key):
        return file.read(READ_CHUNK_BYTES)


def _copy_file(source: BinaryIO, target: BinaryIO) -> None:
    while chunk := source.read(READ_CHUNK_BYTES):
        target.write(chunk)


def _delete(path: Path) -> None:
    """Data first: a sidecar left behind by a crash is ignored by ``stat`` and replaced by the next write."""
    for victim in (path, _sidecar_path(path)):
        with contextlib.suppress(FileNotFoundError):
            victim.unlink()
    _fsync_directory(path.parent)


def _sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR_SUFFIX)


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")


def _write_atomically(path: Path, data: bytes) -> None:
    """A temporary file that could not be written (the disk is full) is removed, not left to pile up."""
    temp = _temp_path(path)
    try:
        with temp.open("xb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise
    _fsync_directory(path.parent)


def _make_directories(directory: Path, root: Path) -> None:
    """Create missing directories below the root, each made durable in its parent."""
    missing = []
    while directory != root and not directory.is_dir():
        missing.append(directory)
        directory = directory.parent
    for created in reversed(missing):
        with contextlib.suppress(FileExistsError):
            created.mkdir()
        _fsync_directory(created.parent)


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
