"""Image bytes in an S3-compatible bucket (``[storage] backend = "s3"``), through aioboto3.

Keys are ``<prefix>images/<sha[:2]>/<sha>.png``. Credentials come only from the standard
environment variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
``AWS_REGION`` / ``AWS_DEFAULT_REGION``, ``AWS_PROFILE``), as boto reads them; never from the
config file. The server streams the objects to callers.

A failed call raises :class:`~imagegate.errors.StorageError` naming the store's own error
class and reason (``ReadTimeoutError``, ``NoSuchBucket``...). Retention deletes the way the
file backend does: an object is copied aside and deleted, and after ``settle_s`` put back if a
row names it again by then.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from imagegate.config import StorageSettings
from imagegate.errors import MissingDependency, StorageError
from imagegate.store.blobs import Named, read_all
from imagegate.store.files import IMAGES_DIR, relative_path

ASIDE = ".prune/"
ATTEMPTS = 2  # botocore's tries of one call (a retry for a reset or a timeout)


class S3Images:
    """An S3-compatible bucket, one object per digest."""

    backend = "s3"

    def __init__(self, storage: StorageSettings) -> None:
        try:
            import aioboto3
            from botocore.config import Config
        except ImportError:
            raise MissingDependency("s3", "aioboto3") from None
        assert storage.bucket
        self.bucket = storage.bucket
        self.prefix = storage.prefix
        self.chunk_size = storage.chunk_kb * 1024
        self._endpoint = storage.endpoint
        self._session = aioboto3.Session(region_name=storage.region)
        self._config = Config(
            connect_timeout=storage.timeout_s,
            read_timeout=storage.timeout_s,
            retries={"max_attempts": ATTEMPTS, "mode": "standard"},
        )
        self._bound_s = storage.timeout_s * 2 * (ATTEMPTS + 1)  # the store's own timeouts first
        self._client: Any = None
        self._stack = contextlib.AsyncExitStack()
        self._lock = asyncio.Lock()

    async def _s3(self) -> Any:
        async with self._lock:
            if self._client is None:
                client = await self._stack.enter_async_context(
                    self._session.client("s3", endpoint_url=self._endpoint, config=self._config)
                )
                # botocore asks for "100-continue" before a PUT body, and that wait has no
                # timeout in aiohttp: a store that stops answering then hangs the job forever
                client.meta.events.register_last("before-call.s3.PutObject", _no_expect)
                self._client = client
        return self._client

    def _key(self, sha256: str) -> str:
        return self.prefix + relative_path(sha256)

    def _fail(self, doing: str, exc: BaseException) -> StorageError:
        return StorageError(
            f"{doing} s3://{self.bucket}/{self.prefix} failed: {type(exc).__name__}: {exc}",
            backend=self.backend,
        )

    async def put(self, data: bytes) -> tuple[str, str]:
        sha256 = hashlib.sha256(data).hexdigest()
        key = self._key(sha256)
        try:
            async with asyncio.timeout(self._bound_s):
                if not await self._head(key):
                    s3 = await self._s3()
                    await s3.put_object(
                        Bucket=self.bucket, Key=key, Body=data, ContentType="image/png"
                    )
        except StorageError:
            raise
        except TimeoutError as exc:
            timeout = TimeoutError(f"the store did not answer within {self._bound_s:g} s")
            raise self._fail(f"storing image {sha256[:12]} in", timeout) from exc
        except Exception as exc:
            raise self._fail(f"storing image {sha256[:12]} in", exc) from exc
        return sha256, relative_path(sha256)

    async def _head(self, key: str) -> dict[str, Any] | None:
        """The object's metadata, or None when there is none."""
        s3 = await self._s3()
        try:
            return dict(await s3.head_object(Bucket=self.bucket, Key=key))
        except Exception as exc:
            if _missing(exc):
                return None
            raise

    async def chunks(self, sha256: str) -> AsyncIterator[bytes]:
        s3 = await self._s3()
        try:
            got = await s3.get_object(Bucket=self.bucket, Key=self._key(sha256))
        except Exception as exc:
            if _missing(exc):
                raise FileNotFoundError(f"no image {sha256} in s3://{self.bucket}") from None
            raise self._fail("reading", exc) from exc
        body = got["Body"]
        async with body:
            try:
                async for chunk in body.iter_chunks(self.chunk_size):
                    yield chunk
            except Exception as exc:
                raise self._fail("reading", exc) from exc

    async def read(self, sha256: str) -> bytes:
        return await read_all(self.chunks(sha256))

    async def exists(self, sha256: str) -> bool:
        return await self.size(sha256) > 0

    async def size(self, sha256: str) -> int:
        try:
            head = await self._head(self._key(sha256))
        except Exception as exc:
            raise self._fail("reading", exc) from exc
        return 0 if head is None else int(head.get("ContentLength", 0))

    async def delete(self, sha256: str) -> None:
        s3 = await self._s3()
        await s3.delete_object(Bucket=self.bucket, Key=self._key(sha256))

    async def _listing(self) -> AsyncIterator[dict[str, Any]]:
        s3 = await self._s3()
        pages = s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=f"{self.prefix}{IMAGES_DIR}/"
        )
        async for page in pages:
            for item in page.get("Contents", []):
                if item["Key"].endswith(".png"):
                    yield item

    async def iterate(self) -> AsyncIterator[str]:
        async for item in self._listing():
            yield Path(item["Key"]).stem

    async def total_bytes(self) -> int:
        return sum([int(item["Size"]) async for item in self._listing()])

    def local_path(self, sha256: str) -> Path | None:
        return None

    async def reclaim(
        self, shas: Sequence[str], *, untouched_since: float, settle_s: float, named: Named
    ) -> int:
        s3 = await self._s3()
        cutoff = datetime.fromtimestamp(untouched_since, UTC)
        still = await named(shas)
        aside: dict[str, str] = {}
        for sha in shas:
            key = self._key(sha)
            head = None if sha in still else await self._head(key)
            if head is None or head["LastModified"] > cutoff:
                continue
            moved = f"{self.prefix}{ASIDE}{sha}.png"
            source = {"Bucket": self.bucket, "Key": key}
            await s3.copy_object(Bucket=self.bucket, Key=moved, CopySource=source)
            await s3.delete_object(Bucket=self.bucket, Key=key)
            aside[sha] = moved
        if not aside:
            return 0
        await asyncio.sleep(settle_s)
        named_now = await named(list(aside))
        gone = 0
        for sha, moved in aside.items():
            key = self._key(sha)
            if sha in named_now and await self._head(key) is None:  # a job stored it again
                source = {"Bucket": self.bucket, "Key": moved}
                await s3.copy_object(Bucket=self.bucket, Key=key, CopySource=source)
            else:
                gone += 1
            await s3.delete_object(Bucket=self.bucket, Key=moved)
        return gone

    async def close(self) -> None:
        self._client = None
        await self._stack.aclose()


def _no_expect(params: dict[str, Any], **_: Any) -> None:
    params.get("headers", {}).pop("Expect", None)


def _missing(exc: BaseException) -> bool:
    """Whether a botocore error says the object (not the bucket) is not there."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return False
    code = str(response.get("Error", {}).get("Code", ""))
    return code in {"404", "NoSuchKey", "NotFound"}
