"""The object store contract, run against a directory and a real S3 server (SeaweedFS) alike."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from minio import Minio
from pydantic import SecretStr

from gateway.objects import ObjectNotFound, ObjectStore, ObjectStoreError, ObjectStoreUnavailable, filesystem
from gateway.objects.filesystem import FilesystemObjectStore
from gateway.objects.s3 import S3ObjectStore, http_client
from gateway.settings import S3Settings
from tests.conftest import start_services
from tests.helpers import free_port

MiB = 1024 * 1024
METADATA = {"sop-instance-uid": "1.2.246.10.1.2.3", "transfer-syntax-uid": "1.2.840.10008.1.2.1", "source-ae": "CT01"}


@dataclass
class Backend:
    store: ObjectStore
    leftovers: Callable[[str], Awaitable[list[str]]]
    """What an upload in progress under a key prefix occupies: temporary files, or S3 multipart uploads."""


@pytest.fixture(scope="session")
def s3_settings() -> S3Settings:
    env = start_services("s3")
    return S3Settings(
        endpoint=env["GATEWAY_S3__ENDPOINT"], bucket=env["GATEWAY_S3__BUCKET"],
        access_key=SecretStr(env["GATEWAY_S3__ACCESS_KEY"]), secret_key=SecretStr(env["GATEWAY_S3__SECRET_KEY"]),
        secure=env["GATEWAY_S3__SECURE"] == "true",
    )


@pytest.fixture(params=["filesystem", "s3"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "filesystem":
        root = tmp_path / "objects"

        async def files(prefix: str) -> list[str]:
            return [str(path.relative_to(root)) for path in (root / prefix).rglob("*") if path.is_file()]

        backend = Backend(FilesystemObjectStore(root), files)
    else:
        settings: S3Settings = request.getfixturevalue("s3_settings")
        pool = http_client(5, 30, 0)
        admin = Minio(settings.endpoint or "", settings.access_key.get_secret_value() if settings.access_key else None,
                      settings.secret_key.get_secret_value() if settings.secret_key else None,
                      secure=settings.secure, http_client=pool)

        async def multipart_uploads(prefix: str) -> list[str]:
            # minio 7 has no public call listing incomplete uploads; this is its ListMultipartUploads.
            result = admin._list_multipart_uploads(settings.bucket, prefix=prefix)
            return [str(upload.object_name) for upload in result.uploads]

        backend = Backend(S3ObjectStore(settings), multipart_uploads)
    await backend.store.ensure_bucket()
    yield backend
    await backend.store.close()
    if request.param == "s3":
        pool.clear()


@pytest.fixture
def prefix() -> str:
    return f"contract/{uuid.uuid4().hex}/"


async def read_all(store: ObjectStore, key: str) -> bytes:
    return b"".join([chunk async for chunk in await store.read(key)])


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def memory_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/status")


async def test_put_stat_read_round_trip(backend: Backend, prefix: str) -> None:
    store, key, data = backend.store, f"{prefix}1.2.3/4.5.6/7.8.9.dcm", os.urandom(300_001)
    info = await store.put(key, data, METADATA, sha256(data))
    assert (info.key, info.size, info.metadata, info.sha256) == (key, len(data), METADATA, sha256(data))
    assert await store.stat(key) == info
    assert await read_all(store, key) == data


async def test_keys_with_characters_urls_escape(backend: Backend, prefix: str) -> None:
    """Any key the port accepts is the same object on both adapters: S3's signature covers the escaped path."""
    store, data = backend.store, os.urandom(1000)
    key = f"{prefix}a b+c%20d=e&f,g;h@i'j(k)!~ä.dcm"
    info = await store.put(key, data, METADATA, sha256(data))
    assert await store.stat(key) == info
    assert await read_all(store, key) == data
    await store.delete(key)
    assert await store.stat(key) is None


async def test_streamed_upload_is_byte_identical_in_bounded_memory(backend: Backend, prefix: str) -> None:
    store, key, pieces = backend.store, f"{prefix}large.dcm", 128
    written, read = hashlib.sha256(), hashlib.sha256()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, so earlier tests' peaks do not hide ours
    baseline = memory_kib("VmRSS")
    upload = store.begin(key, METADATA, size_hint=pieces * MiB)
    for _ in range(pieces):
        piece = os.urandom(MiB)
        written.update(piece)
        await upload.write(piece)
    info = await upload.complete(written.hexdigest())
    async for chunk in await store.read(key):
        read.update(chunk)
    growth_mib = (memory_kib("VmHWM") - baseline) / 1024
    assert read.hexdigest() == written.hexdigest() == info.sha256
    assert await store.stat(key) == info and info.size == pieces * MiB
    assert growth_mib < 100, f"peak RSS grew by {growth_mib:.0f} MiB streaming {pieces} MiB"


async def test_upload_is_invisible_until_complete(backend: Backend, prefix: str) -> None:
    store, key, data = backend.store, f"{prefix}pending.dcm", os.urandom(20 * MiB)
    upload = store.begin(key, METADATA)
    for offset in range(0, len(data), MiB):
        await upload.write(data[offset : offset + MiB])
    assert await store.stat(key) is None
    await upload.complete(sha256(data))
    stored = await store.stat(key)
    assert stored is not None and (stored.size, stored.metadata, stored.sha256) == (len(data), METADATA, sha256(data))
    await upload.abort()
    assert await read_all(store, key) == data


async def test_aborted_upload_leaves_nothing(backend: Backend, prefix: str) -> None:
    store, key = backend.store, f"{prefix}aborted.dcm"
    upload = store.begin(key, METADATA)
    for _ in range(40):
        await upload.write(os.urandom(MiB))
    assert await backend.leftovers(prefix), "the upload should be in progress before it is aborted"
    await upload.abort()
    await upload.abort()
    assert await store.stat(key) is None
    assert await backend.leftovers(prefix) == []
    with pytest.raises(ObjectNotFound):
        await store.read(key)


async def test_abort_after_a_cancelled_write_leaves_nothing(backend: Backend, prefix: str) -> None:
    store, key = backend.store, f"{prefix}cancelled.dcm"
    upload = store.begin(key, METADATA)
    await upload.write(os.urandom(20 * MiB))
    writing = asyncio.create_task(upload.write(os.urandom(30 * MiB)))
    await asyncio.sleep(0.01)
    writing.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await writing
    await upload.abort()
    assert await store.stat(key) is None
    assert await backend.leftovers(prefix) == []


async def test_empty_upload_completes(backend: Backend, prefix: str) -> None:
    store, key = backend.store, f"{prefix}empty"
    info = await store.begin(key, {}).complete(sha256(b""))
    assert await store.stat(key) == info and info.size == 0
    assert await read_all(store, key) == b""


async def test_overwriting_with_the_same_content_is_idempotent(backend: Backend, prefix: str) -> None:
    store, key, data = backend.store, f"{prefix}again.dcm", os.urandom(70_000)
    first = await store.put(key, data, METADATA, sha256(data))
    upload = store.begin(key, METADATA)
    await upload.write(data)
    assert await upload.complete(sha256(data)) == first
    assert await store.stat(key) == first
    assert await read_all(store, key) == data


async def test_copy_preserves_bytes_and_sets_new_metadata(backend: Backend, prefix: str) -> None:
    store, data = backend.store, os.urandom(2 * MiB + 5)
    await store.put(f"{prefix}source", data, METADATA, sha256(data))
    renamed = {"sop-instance-uid": "1.2.246.10.9", "state": "archived"}
    copied = await store.copy(f"{prefix}source", f"{prefix}copy", renamed)
    assert await store.stat(f"{prefix}copy") == copied
    assert (copied.size, copied.metadata, copied.sha256) == (len(data), renamed, sha256(data))
    kept = await store.copy(f"{prefix}source", f"{prefix}kept")
    assert (kept.metadata, kept.sha256) == (METADATA, sha256(data)) and await store.stat(f"{prefix}kept") == kept
    assert await read_all(store, f"{prefix}copy") == await read_all(store, f"{prefix}kept") == data
    source = await store.stat(f"{prefix}source")
    assert source is not None and source.metadata == METADATA


async def test_delete_then_stat_is_none(backend: Backend, prefix: str) -> None:
    store, key = backend.store, f"{prefix}deleted.dcm"
    await store.put(key, b"DICM", METADATA, sha256(b"DICM"))
    await store.delete(key)
    assert await store.stat(key) is None
    await store.delete(key)


async def test_missing_objects(backend: Backend, prefix: str) -> None:
    store = backend.store
    assert await store.stat(f"{prefix}missing") is None
    with pytest.raises(ObjectNotFound):
        await store.read(f"{prefix}missing")
    with pytest.raises(ObjectNotFound):
        await store.copy(f"{prefix}missing", f"{prefix}copy")
    assert await store.stat(f"{prefix}copy") is None


async def test_partial_read_releases_its_source(backend: Backend, prefix: str) -> None:
    store, key, data = backend.store, f"{prefix}partial", os.urandom(3 * MiB)
    await store.put(key, data, {}, sha256(data))
    for _ in range(20):
        stream = await store.read(key)
        assert 0 < len(await anext(stream)) <= MiB
        await stream.aclose()
    assert await read_all(store, key) == data


@pytest.mark.parametrize("key", ["", "/absolute", "a/../b", "a//b", "./a", "x.meta.json", "tab\there",
                                 f"studies/1.{'2' * 300}/x.dcm"])
async def test_invalid_keys_are_refused(backend: Backend, key: str) -> None:
    with pytest.raises(ValueError):
        await backend.store.put(key, b"", {}, sha256(b""))


@pytest.mark.parametrize("metadata", [{"Upper": "x"}, {"name": "ä"}, {"under_score": "x"}, {"": "x"}])
async def test_invalid_metadata_is_refused(backend: Backend, prefix: str, metadata: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        await backend.store.put(f"{prefix}x", b"", metadata, sha256(b""))


def test_a_name_the_file_system_refuses_is_permanent() -> None:
    """ENAMETOOLONG and the like come back the same every time: not an outage to wait out, or one instance
    would stop its partition for good."""
    for code in (errno.ENAMETOOLONG, errno.EINVAL):
        with pytest.raises(ObjectStoreError) as raised, filesystem.translated("studies/x"):
            raise OSError(code, os.strerror(code))
        assert raised.value.retriable is False
    with pytest.raises(ObjectStoreUnavailable), filesystem.translated("studies/x"):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


async def test_s3_unavailable_is_retriable_and_quick() -> None:
    store = S3ObjectStore(
        S3Settings(endpoint=f"127.0.0.1:{free_port()}", access_key=SecretStr("a"), secret_key=SecretStr("b"),
                   secure=False, region="us-east-1"),
        connect_timeout_seconds=1, read_timeout_seconds=1, retries=1,
    )
    started = time.monotonic()
    calls: list[Callable[[], Awaitable[object]]] = [
        store.ensure_bucket, lambda: store.stat("k"), lambda: store.read("k"), lambda: store.delete("k"),
        lambda: store.put("k", b"x", {}, sha256(b"x")), lambda: store.copy("k", "l"),
    ]
    for call in calls:
        with pytest.raises(ObjectStoreUnavailable) as raised:
            await call()
        assert raised.value.retriable
    upload = store.begin("k", {})
    await upload.write(b"x")
    with pytest.raises(ObjectStoreUnavailable):
        await upload.complete(sha256(b"x"))
    await upload.abort()
    streaming = store.begin("k", {})
    with pytest.raises(ObjectStoreUnavailable):
        for _ in range(64):
            await streaming.write(bytes(MiB))
    await streaming.abort()
    await store.close()
    assert time.monotonic() - started < 10


async def test_s3_refusing_the_credentials_is_permanent(s3_settings: S3Settings) -> None:
    """A wrong secret is a configuration fault: the signed PutObject is refused by S3, and retrying cannot help."""
    store = S3ObjectStore(s3_settings.model_copy(update={"secret_key": SecretStr("not-the-secret")}))
    upload = store.begin("refused/k", {"source-ae": "CT1"})
    await upload.write(b"x")
    with pytest.raises(ObjectStoreError) as raised:
        await upload.complete(sha256(b"x"))
    assert not raised.value.retriable
    assert "SignatureDoesNotMatch" in str(raised.value) or "AccessDenied" in str(raised.value)
    await upload.abort()
    await store.close()
