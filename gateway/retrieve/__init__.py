"""Giving images back: C-FIND, C-MOVE and C-GET on the receiver's DICOM port (``find``, ``move``), QIDO-RS,
WADO-RS and STOW-RS on the API (``dicomweb``), all answered from the index (``Catalogue``) and the object store.

The receiver takes C-STOREs without the index or the object store, so it opens them on the first query
(``Holdings``) and a query fails with a status while they are away, instead of the receiver not starting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from gateway.core.query import Query
from gateway.index import Catalogue, Index, Stored
from gateway.objects import ObjectStore

_PAGE = 1000


async def stored_instances(catalogue: Catalogue, images: Query) -> list[Stored]:
    """Where every instance an IMAGE-level query matches is, read page after page (C-MOVE, C-GET, WADO-RS)."""
    instances: list[Stored] = []
    after = None
    while True:
        page = await catalogue.search(images, after=after, limit=_PAGE)
        instances.extend(stored for _, _, stored in page if stored is not None)
        if len(page) < _PAGE:
            return instances
        after = page[-1][0]


class Holdings:
    """The index and the object store a query or retrieve (or the hl7 role's check) reads, opened on first use and
    kept open."""

    def __init__(self, open_index: Callable[[], Awaitable[Index]], open_objects: Callable[[], ObjectStore]) -> None:
        self._open_index = open_index
        self._open_objects = open_objects
        self._index: Index | None = None
        self._objects: ObjectStore | None = None
        self._lock = asyncio.Lock()

    async def index(self) -> Index:
        """Raises the adapter's IndexFailure while the index cannot be opened; the next call tries again."""
        if self._index is None:
            async with self._lock:
                if self._index is None:
                    index = await self._open_index()
                    try:
                        await index.migrate()
                    except BaseException:
                        await index.close()
                        raise
                    self._index = index
        return self._index

    def objects(self) -> ObjectStore:
        if self._objects is None:
            self._objects = self._open_objects()
        return self._objects

    async def close(self) -> None:
        index, self._index = self._index, None
        objects, self._objects = self._objects, None
        if index is not None:
            await index.close()
        if objects is not None:
            await objects.close()
