"""S3-compatible object storage: what every instance costs (its PutObject, the commitment's and forwarding's
reads, stat and delete) over aiohttp on the event loop; multipart uploads, copies and the bucket through the
minio SDK with every blocking call in a thread off the loop.

Almost every instance fits one part, so its object is one PutObject: sent from the loop (SigV4 signed here,
payload unsigned: the SHA-256 the gateway checks is its own, re-read by the commitment's verification) it
costs neither a thread hop nor minio's and urllib3's per-request work, which were a sixth of the whole
gateway's CPU in the end-to-end profile, nor minio's extra SHA-256 pass over every byte to sign it. Reads
likewise: one GET whose first megabyte comes with the answer, streamed on from the loop.

The SHA-256 is kept as the object tag ``sha256``: S3 takes metadata only when an upload starts, and a streamed
object's hash is known only at its end. ``put`` and ``copy`` send the tag with the object itself; a streamed
``Upload`` tags the object right after its multipart upload completes, so an object whose completion was
interrupted in between has ``sha256`` None (see the port). Metadata travels as ``x-amz-meta-*`` headers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import hashlib
import hmac
import io
import queue
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from functools import partial
from typing import BinaryIO, NoReturn, TypeVar, cast
from urllib.parse import quote

import aiohttp
import urllib3
from minio import Minio
from minio.commonconfig import REPLACE, ComposeSource, CopySource, Tags
from minio.error import InvalidResponseError, S3Error, ServerError

from gateway.objects import (
    READ_CHUNK_BYTES,
    ChunkStream,
    ObjectInfo,
    ObjectNotFound,
    ObjectStoreError,
    ObjectStoreUnavailable,
    check_key,
    check_metadata,
    check_sha256,
)
from gateway.settings import S3Settings

T = TypeVar("T")
MiB = 1024 * 1024
PART_SIZE = 8 * MiB
"""minio holds up to four parts' worth at once while streaming (the part in flight, the next one being read,
its one-byte look-ahead concatenation and slice), so 8 MiB parts keep an upload near 32 MiB plus its queue;
10,000 of them still take 78 GiB, and ``size_hint`` grows them beyond that."""
PIECE_BYTES = MiB
"""Writes are queued in pieces of at most this size, so the queue's length bounds its bytes."""
MAX_PARTS = 10_000
COPY_OBJECT_LIMIT = 5 * 1024**3
"""Largest source CopyObject accepts; larger objects are copied part by part (UploadPartCopy)."""
SHA256_TAG = "sha256"
META_PREFIX = "x-amz-meta-"


def http_client(connect_timeout: float, read_timeout: float, retries: int) -> urllib3.PoolManager:
    """minio's own client waits 5 minutes and retries 5 times; the worker retries with back-off instead."""
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
        retries=urllib3.Retry(
            total=retries, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504), raise_on_status=False
        ),
        maxsize=16,
        cert_reqs="CERT_REQUIRED",
    )


def translate(exc: BaseException, key: str) -> ObjectStoreError | None:
    """The port's error for a minio or urllib3 failure, or None for anything else."""
    if isinstance(exc, S3Error):
        if exc.code == "NoSuchKey":
            return ObjectNotFound(key)
        if exc.response.status >= 500:
            return ObjectStoreUnavailable(f"S3 failed on {key!r}: {exc.code} {exc.message}")
        return ObjectStoreError(f"S3 refused {key!r}: {exc.code} {exc.message}")
    if isinstance(exc, ServerError | InvalidResponseError | urllib3.exceptions.HTTPError | OSError):
        return ObjectStoreUnavailable(f"S3 unavailable for {key!r}: {exc}")
    return None


@contextlib.contextmanager
def translated(key: str) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        error = translate(exc, key)
        if error is None:
            raise
        raise error from exc


class _Http:
    """The requests every instance makes (PutObject, GetObject, HeadObject, tagging, DeleteObject) over aiohttp
    on the event loop, signed with AWS Signature Version 4 (header form, UNSIGNED-PAYLOAD)."""

    def __init__(self, settings: S3Settings, connect_timeout: float, read_timeout: float) -> None:
        assert settings.endpoint is not None
        self._host = settings.endpoint
        self._base = f"{'https' if settings.secure else 'http'}://{settings.endpoint}/{quote(settings.bucket)}/"
        self._path = f"/{quote(settings.bucket)}/"
        self._access = settings.access_key.get_secret_value() if settings.access_key else ""
        self._secret = settings.secret_key.get_secret_value() if settings.secret_key else ""
        self._region = settings.region or "us-east-1"
        self._signing_day, self._signing_key = "", b""
        self._timeout = aiohttp.ClientTimeout(sock_connect=connect_timeout, sock_read=read_timeout)
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def put(self, key: str, data: bytes, metadata: dict[str, str], sha256: str) -> None:
        headers = {META_PREFIX + name: value for name, value in metadata.items()}
        headers["x-amz-tagging"] = f"{SHA256_TAG}={sha256}"
        headers["content-type"] = "application/octet-stream"
        await _body(await self.send("PUT", key, headers, data=data), key)

    async def send(self, method: str, key: str, headers: dict[str, str] | None = None, query: str = "",
                   data: bytes | None = None) -> aiohttp.ClientResponse:
        """The response to ``method`` on ``key``, its body still to be read or released; what S3 refuses is
        raised as the port's error (404: ``ObjectNotFound``)."""
        encoded = quote(key, safe="/~")
        headers = dict(headers or {})
        if self._access:
            headers = self._signed(method, self._path + encoded, query, headers)
        if self._session is None or self._loop is not asyncio.get_running_loop():  # a session lives on one loop
            self._session = aiohttp.ClientSession(timeout=self._timeout, skip_auto_headers=("Content-Type",),
                                                  read_bufsize=READ_CHUNK_BYTES)
            self._loop = asyncio.get_running_loop()
        url = self._base + encoded + (f"?{query}" if query else "")
        try:
            response = await self._session.request(method, url, headers=headers,
                                                    data=None if data is None else _Body(data))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _unavailable(key, exc) from exc
        if response.status < 300:
            return response
        body = b""
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
            body = await response.read()
        response.release()
        code = _xml_text(body, "Code") or str(response.status)
        text = f"{code} {_xml_text(body, 'Message')}".strip()
        if response.status == 404 and code in ("NoSuchKey", "404"):
            raise ObjectNotFound(key)
        if response.status >= 500 or response.status in (408, 429):
            raise ObjectStoreUnavailable(f"S3 failed on {key!r}: {text}")
        raise ObjectStoreError(f"S3 refused {key!r}: {text}")

    def _signed(self, method: str, path: str, query: str, headers: dict[str, str]) -> dict[str, str]:
        now = datetime.now(UTC)
        stamp, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        headers = {name.lower(): value.strip() for name, value in headers.items()} | {
            "host": self._host, "x-amz-date": stamp, "x-amz-content-sha256": "UNSIGNED-PAYLOAD"}
        names = sorted(headers)
        canonical = "\n".join([method, path, query, *(f"{name}:{headers[name]}" for name in names), "",
                               ";".join(names), "UNSIGNED-PAYLOAD"])
        scope = f"{day}/{self._region}/s3/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        if self._signing_day != day:  # the derived key changes once a day
            signing = f"AWS4{self._secret}".encode()
            for part in (day, self._region, "s3", "aws4_request"):
                signing = hmac.digest(signing, part.encode(), "sha256")
            self._signing_day, self._signing_key = day, signing
        signature = hmac.new(self._signing_key, to_sign.encode(), "sha256").hexdigest()
        headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={self._access}/{scope}, "
                                    f"SignedHeaders={';'.join(names)}, Signature={signature}")
        return headers

    async def close(self) -> None:
        if self._session is not None and self._loop is asyncio.get_running_loop():
            await self._session.close()
        self._session = None


def _unavailable(key: str, exc: BaseException) -> ObjectStoreUnavailable:
    """An aiohttp request that failed on the way: no connection, a timeout, a body cut short."""
    return ObjectStoreUnavailable(f"S3 unavailable for {key!r}: {type(exc).__name__} {exc}")


async def _body(response: aiohttp.ClientResponse, key: str) -> bytes:
    try:
        return await response.read()
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise _unavailable(key, exc) from exc
    finally:
        response.release()


async def _read_chunk(response: aiohttp.ClientResponse, key: str) -> bytes:
    """What has arrived (a socket read's worth: at most the session's ``read_bufsize``, which bounds what a
    stream holds), b"" at the end; taken as it came, not joined into larger chunks."""
    try:
        return await response.content.readany()
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise _unavailable(key, exc) from exc


def _release(response: aiohttp.ClientResponse) -> None:
    """Back to the pool when read to the end, closed otherwise; at exit the loop may be gone."""
    with contextlib.suppress(RuntimeError):
        response.release()


def _tag(body: bytes, name: str) -> str | None:
    """A tag's value in a GetObjectTagging answer."""
    for tag in body.split(b"<Tag>")[1:]:
        if _xml_text(tag, "Key") == name:
            return _xml_text(tag, "Value") or None
    return None


class _Body(aiohttp.payload.Payload):
    """An object's bytes, written a piece at a time so that the writer's flow control applies between pieces
    (aiohttp's bytes payload writes them in one go and warns above 1 MiB)."""

    _value: bytes

    def __init__(self, data: bytes) -> None:
        super().__init__(data, content_type="application/octet-stream")
        self._size = len(data)

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        raise TypeError("an object's bytes are not text")

    async def as_bytes(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return self._value

    async def write(self, writer: aiohttp.abc.AbstractStreamWriter) -> None:
        view = memoryview(self._value)
        for offset in range(0, len(view), PIECE_BYTES):
            await writer.write(view[offset:offset + PIECE_BYTES])


def _xml_text(body: bytes, tag: str) -> str:
    """A field of S3's XML error, without parsing what a misbehaving peer may send as XML."""
    start = body.find(f"<{tag}>".encode())
    end = body.find(f"</{tag}>".encode(), start)
    return body[start + len(tag) + 2:end].decode(errors="replace")[:200] if 0 <= start < end else ""


class S3ObjectStore:
    def __init__(
        self,
        settings: S3Settings,
        *,
        connect_timeout_seconds: float = 5.0,
        read_timeout_seconds: float = 60.0,
        retries: int = 2,
        part_size: int = PART_SIZE,
        idle_timeout_seconds: float = 600.0,
    ) -> None:
        if not settings.endpoint:
            raise ValueError("S3 endpoint is not set")
        self._bucket = settings.bucket
        self._region = settings.region
        self._part_size = part_size
        self._idle_timeout = idle_timeout_seconds
        self._pool = http_client(connect_timeout_seconds, read_timeout_seconds, retries)
        self._client = Minio(
            settings.endpoint,
            access_key=settings.access_key.get_secret_value() if settings.access_key else None,
            secret_key=settings.secret_key.get_secret_value() if settings.secret_key else None,
            secure=settings.secure,
            region=settings.region,
            http_client=self._pool,
        )
        self._http = _Http(settings, connect_timeout_seconds, read_timeout_seconds)

    async def _call(self, key: str, call: Callable[[], T]) -> T:
        with translated(key):
            return await asyncio.to_thread(call)

    async def ensure_bucket(self) -> None:
        await self._call(self._bucket, self._ensure_bucket)

    def _ensure_bucket(self) -> None:
        if self._client.bucket_exists(self._bucket):
            return
        try:
            self._client.make_bucket(self._bucket, location=self._region)
        except S3Error as exc:
            if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    def begin(self, key: str, metadata: dict[str, str], size_hint: int | None = None) -> S3Upload:
        """``size_hint`` grows the part size for objects that would not fit S3's 10,000 parts."""
        check_key(key)
        check_metadata(metadata)
        part_size = self._part_size
        if size_hint is not None and size_hint > part_size * MAX_PARTS:
            part_size = -(-size_hint // (MAX_PARTS * MiB)) * MiB
        return S3Upload(self._client, self._http, self._bucket, key, metadata, part_size, self._idle_timeout)

    async def put(self, key: str, data: bytes, metadata: dict[str, str], sha256: str) -> ObjectInfo:
        check_key(key)
        check_metadata(metadata)
        check_sha256(sha256)
        if len(data) > self._part_size:
            await self._call(key, partial(
                self._client.put_object, self._bucket, key, io.BytesIO(data), len(data),
                metadata=_headers(metadata), tags=_tags(sha256), part_size=self._part_size, num_parallel_uploads=1,
            ))
        else:
            await self._http.put(key, data, metadata, sha256)
        return ObjectInfo(key, len(data), dict(metadata), sha256)

    async def stat(self, key: str) -> ObjectInfo | None:
        check_key(key)
        try:
            head = await self._http.send("HEAD", key)
            head.release()
            tags = await _body(await self._http.send("GET", key, query="tagging="), key)
        except ObjectNotFound:
            return None
        metadata = {
            name.lower().removeprefix(META_PREFIX): value
            for name, value in head.headers.items()
            if name.lower().startswith(META_PREFIX)
        }
        return ObjectInfo(key, head.content_length or 0, metadata, _tag(tags, SHA256_TAG))

    async def read(self, key: str) -> ChunkStream:
        check_key(key)
        response = await self._http.send("GET", key)
        read_chunk = partial(_read_chunk, response, key)
        try:
            first = await read_chunk()
        except BaseException:
            response.close()
            raise
        return ChunkStream(read_chunk, partial(_release, response), first, complete=response.content.at_eof())

    async def copy(self, source: str, destination: str, metadata: dict[str, str] | None = None) -> ObjectInfo:
        check_key(source)
        check_key(destination)
        if metadata is not None:
            check_metadata(metadata)
        info = await self.stat(source)
        if info is None:
            raise ObjectNotFound(source)
        target = ObjectInfo(destination, info.size, dict(info.metadata if metadata is None else metadata),
                            info.sha256)
        tags = _tags(info.sha256) if info.sha256 else None
        if info.size <= COPY_OBJECT_LIMIT:
            copy: Callable[[], object] = partial(
                self._client.copy_object, self._bucket, destination, CopySource(self._bucket, source),
                metadata=_headers(target.metadata), tags=tags, metadata_directive=REPLACE, tagging_directive=REPLACE,
            )
        else:
            copy = partial(
                self._client.compose_object, self._bucket, destination, [ComposeSource(self._bucket, source)],
                metadata=_headers(target.metadata), tags=tags,
            )
        await self._call(destination, copy)
        return target

    async def delete(self, key: str) -> None:
        check_key(key)
        with contextlib.suppress(ObjectNotFound):
            await _body(await self._http.send("DELETE", key), key)

    async def close(self) -> None:
        await self._http.close()
        self._pool.clear()


def _headers(metadata: dict[str, str]) -> dict[str, str | list[str] | tuple[str]]:
    return {META_PREFIX + name: value for name, value in metadata.items()}


def _tags(sha256: str) -> Tags:
    tags = Tags(for_object=True)
    tags[SHA256_TAG] = sha256
    return tags


class _Signal(enum.Enum):
    EOF = enum.auto()
    ABORT = enum.auto()


class _Aborted(ObjectStoreError):
    """Raised inside minio's read so that it aborts its multipart upload."""


class _PieceReader:
    """The file-like object minio reads parts from: pieces from the queue until EOF, abort or idleness."""

    def __init__(self, pieces: queue.Queue[memoryview | _Signal], idle_timeout: float,
                 taken: Callable[[], None]) -> None:
        self._pieces = pieces
        self._idle_timeout = idle_timeout
        self._taken = taken
        self._pending = memoryview(b"")
        self._eof = False

    def read(self, size: int) -> bytes:
        chunks = []
        while size > 0 and not self._eof:
            if not self._pending:
                try:
                    item = self._pieces.get(timeout=self._idle_timeout)
                except queue.Empty:
                    raise _Aborted(f"nothing written for {self._idle_timeout:.0f}s") from None
                self._taken()
                if item is _Signal.ABORT:
                    raise _Aborted("aborted")
                if item is _Signal.EOF:
                    self._eof = True
                    break
                self._pending = item
            chunk = self._pending[:size]
            self._pending = self._pending[len(chunk):]
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)


class S3Upload:
    """An object that fits one part is kept in memory and sent at ``complete()`` as one PutObject carrying its
    tag; a larger one becomes one ``put_object`` of unknown length run by minio in its own thread, fed from a
    bounded queue: a multipart upload part by part (one at a time), which minio aborts when our reader raises.
    The queue holds one part, so the writer keeps going while a part is sent; memory stays near five parts
    (see ``PART_SIZE``). The thread is a daemon so that an upload never ended cannot hold up shutdown; it
    gives up after ``idle_timeout`` without writes.
    """

    def __init__(self, client: Minio, http: _Http, bucket: str, key: str, metadata: dict[str, str], part_size: int,
                 idle_timeout: float) -> None:
        self._client = client
        self._http = http
        self._bucket = bucket
        self._key = key
        self._metadata = dict(metadata)
        self._part_size = part_size
        self._idle_timeout = idle_timeout
        self._pieces: queue.Queue[memoryview | _Signal] = queue.Queue(maxsize=max(1, part_size // PIECE_BYTES))
        self._buffer = bytearray()
        """Written before the upload thread started: an object that fits one part never starts it."""
        self._buffer_limit = min(part_size, self._pieces.maxsize * PIECE_BYTES)
        """What fits one part and, when the thread starts after all, the queue."""
        self._whole: asyncio.Future[None] | None = None
        self._space = asyncio.Event()
        self._done: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._size = 0
        self._state = "open"

    async def write(self, data: bytes) -> None:
        self._check_open()
        if self._thread is None and len(self._buffer) + len(data) <= self._buffer_limit:
            self._buffer += data
            self._size += len(data)
            return
        self._start()
        view = memoryview(data if isinstance(data, bytes) else bytes(data))
        try:
            for offset in range(0, len(view), PIECE_BYTES):
                await self._put(view[offset:offset + PIECE_BYTES])
        except BaseException:
            self._state = "failed"
            raise
        self._size += len(view)

    async def complete(self, sha256: str) -> ObjectInfo:
        check_sha256(sha256)
        self._check_open()
        self._state = "completing"
        if self._thread is None:
            return await self._put_whole(sha256)
        self._start()
        await self._put(_Signal.EOF)
        try:
            await asyncio.wrap_future(self._done)
        except Exception:
            self._raise_failure()
        with translated(self._key):
            await asyncio.to_thread(self._client.set_object_tags, self._bucket, self._key, _tags(sha256))
        return ObjectInfo(self._key, self._size, dict(self._metadata), sha256)

    async def _put_whole(self, sha256: str) -> ObjectInfo:
        """Everything fitted one part: a single PutObject with its tag, from the loop."""
        data, self._buffer = bytes(self._buffer), bytearray()
        whole: asyncio.Future[None] = asyncio.ensure_future(
            self._http.put(self._key, data, self._metadata, sha256))
        self._whole = whole
        await asyncio.shield(whole)  # cancelled, the request still ends: abort() waits for it
        return ObjectInfo(self._key, self._size, dict(self._metadata), sha256)

    async def abort(self) -> None:
        if self._state == "aborted":
            return
        self._buffer = bytearray()
        completing, self._state = self._state == "completing", "aborted"
        if self._whole is not None:
            with contextlib.suppress(Exception):
                await self._whole
        if self._thread is None:
            return
        if not completing:
            with contextlib.suppress(queue.Empty):
                while True:
                    self._pieces.get_nowait()
            self._pieces.put_nowait(_Signal.ABORT)
        # The thread's own failure was already raised by write() or complete(), or is moot now; a multipart
        # upload S3 could not abort stays invisible and is left to the bucket's lifecycle rule.
        with contextlib.suppress(Exception):
            await asyncio.wrap_future(self._done)

    def _check_open(self) -> None:
        if self._state != "open":
            raise ObjectStoreError(f"upload of {self._key!r} is {self._state}; abort it and start again")

    def _start(self) -> None:
        if self._thread is None:
            self._loop = asyncio.get_running_loop()
            self._done.set_running_or_notify_cancel()  # cancelling an await on it must not cancel the upload
            buffered, self._buffer = bytes(self._buffer), bytearray()
            for offset in range(0, len(buffered), PIECE_BYTES):  # the queue holds a part: it fits
                self._pieces.put_nowait(memoryview(buffered)[offset:offset + PIECE_BYTES])
            self._thread = threading.Thread(target=self._upload, name=f"s3-upload {self._key}", daemon=True)
            self._thread.start()

    async def _put(self, item: memoryview | _Signal) -> None:
        """Queue an item without blocking the loop: wait for the reader to take one when the queue is full."""
        while True:
            if self._done.done():
                self._raise_failure()
            try:
                self._pieces.put_nowait(item)
                return
            except queue.Full:
                self._space.clear()
                if self._pieces.full():
                    await self._space.wait()

    def _raise_failure(self) -> NoReturn:
        failure = self._done.exception() or ObjectStoreError(f"upload of {self._key!r} has already ended")
        if isinstance(failure, ObjectStoreError):
            raise failure
        raise translate(failure, self._key) or ObjectStoreError(f"upload of {self._key!r} failed") from failure

    def _upload(self) -> None:
        reader = _PieceReader(self._pieces, self._idle_timeout, self._wake)
        try:
            self._client.put_object(
                self._bucket, self._key, cast(BinaryIO, reader), length=-1, part_size=self._part_size,
                num_parallel_uploads=1, metadata=_headers(self._metadata),
            )
        except BaseException as exc:
            self._done.set_exception(exc)
        else:
            self._done.set_result(None)
        finally:
            with contextlib.suppress(queue.Empty):
                while True:
                    self._pieces.get_nowait()
            self._wake()

    def _wake(self) -> None:
        """Tell a write waiting for room that the reader took an item (or stopped)."""
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            self._loop.call_soon_threadsafe(self._space.set)
