"""The object store port: whole objects under keys, streamed in and out, visible only once complete.

Two adapters implement it with the same semantics, checked by one contract suite against both: ``s3``
(S3-compatible storage over aiohttp and minio) and ``filesystem`` (a directory, for the embedded mode).

* An ``Upload`` streams an object in with bounded memory and stays invisible under its key until
  ``complete()``; ``abort()`` discards it. Every upload must end with one of the two.
* ``complete()``/``put()`` record the object's SHA-256 and ``stat`` returns it. ``sha256`` is None only when a
  completion was interrupted after the data became visible and before its hash was recorded: treat such an
  object as not stored and write it again (overwriting a key is allowed and idempotent).
* ``read`` is awaited, then iterated: ``async for chunk in await store.read(key)``; the await raises
  ``ObjectNotFound``. Iterate to the end or ``aclose()`` the stream to free its connection or file early.
* Keys are ``/``-separated relative paths; metadata keys are lower-case ASCII names, values printable ASCII,
  so both map losslessly onto HTTP headers.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

READ_CHUNK_BYTES = 1024 * 1024
SIDECAR_SUFFIX = ".meta.json"
"""Reserved: the filesystem adapter keeps metadata beside each object under this suffix."""

_METADATA_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")
_METADATA_VALUE = re.compile(r"[\x20-\x7e]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    metadata: dict[str, str]
    sha256: str | None


class ObjectStoreError(Exception):
    """An object store failure; ``retriable`` says whether the same call may succeed later."""

    retriable = False


class ObjectStoreUnavailable(ObjectStoreError):
    """The store did not answer in time, refused the connection or failed on its side (5xx, disk error)."""

    retriable = True


class ObjectNotFound(ObjectStoreError):
    """No object under the key."""


class Upload(Protocol):
    """An object being written piece by piece, invisible under its key until ``complete()``."""

    async def write(self, data: bytes) -> None:
        """Append data; waits while the store is behind, so memory stays bounded."""
        ...

    async def complete(self, sha256: str) -> ObjectInfo:
        """Make the object visible under its key at once, with its metadata and SHA-256."""
        ...

    async def abort(self) -> None:
        """Discard everything written; idempotent. After ``complete()`` was called it only waits for it."""
        ...


class ObjectStore(Protocol):
    async def ensure_bucket(self) -> None:
        """Create the bucket (S3) or root directory (filesystem) if absent."""
        ...

    def begin(self, key: str, metadata: dict[str, str], size_hint: int | None = None) -> Upload:
        ...

    async def put(self, key: str, data: bytes, metadata: dict[str, str], sha256: str) -> ObjectInfo:
        """Store a small object in one call."""
        ...

    async def stat(self, key: str) -> ObjectInfo | None:
        ...

    async def read(self, key: str) -> ChunkStream:
        """The object's bytes in chunks of at most ``READ_CHUNK_BYTES``; raises ``ObjectNotFound`` here."""
        ...

    async def copy(self, source: str, destination: str, metadata: dict[str, str] | None = None) -> ObjectInfo:
        """Copy bytes and SHA-256 (server-side on S3); ``metadata`` replaces the source's when given."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the object; a missing key is not an error."""
        ...

    async def close(self) -> None:
        ...


def check_key(key: str) -> None:
    """Refuse keys that would escape the root directory, mean different objects on the two adapters, or have a
    path component no file system takes (over 255 bytes)."""
    parts = key.split("/")
    if (
        not key
        or len(key.encode()) > 1024
        or any(len(part.encode()) > 255 for part in parts)
        or any(part in ("", ".", "..") for part in parts)
        or any(ord(char) < 0x20 or ord(char) == 0x7F for char in key)
        or key.endswith(SIDECAR_SUFFIX)
    ):
        raise ValueError(f"invalid object key {key!r}")


def check_metadata(metadata: dict[str, str]) -> None:
    """Refuse metadata that HTTP headers would not carry back unchanged (case, non-ASCII)."""
    for name, value in metadata.items():
        if not _METADATA_NAME.fullmatch(name) or not _METADATA_VALUE.fullmatch(value):
            raise ValueError(f"invalid object metadata {name!r}: {value!r}")


def check_sha256(sha256: str) -> None:
    if not _SHA256.fullmatch(sha256):
        raise ValueError(f"sha256 must be 64 lower-case hex digits, not {sha256!r}")


class ChunkStream(AsyncIterator[bytes]):
    """An object's chunks, each from an awaited read (a blocking one is sent to a thread by its adapter); the
    source is closed when the stream ends, fails, is ``aclose()``d or is dropped, so an abandoned read never
    leaks a connection or file.

    ``first`` is a chunk the adapter read when it opened the object, and ``complete`` says it was the whole
    object: a small object then costs one call (one thread hop for a file, one request for S3), not three (open,
    read, see the end), which is most of what sending it costs."""

    def __init__(self, read_chunk: Callable[[], Awaitable[bytes]], close: Callable[[], None], first: bytes = b"",
                 complete: bool = False) -> None:
        self._read_chunk = read_chunk
        self._close = weakref.finalize(self, close)
        self._first = first
        if complete:
            self._close()

    def __aiter__(self) -> ChunkStream:
        return self

    async def __anext__(self) -> bytes:
        if self._first:
            chunk, self._first = self._first, b""
            return chunk
        if not self._close.alive:
            raise StopAsyncIteration
        try:
            chunk = await self._read_chunk()
        except BaseException:
            self._close()
            raise
        if not chunk:
            self._close()
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        self._close()
