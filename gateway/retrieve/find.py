"""C-FIND SCP (PS3.4 C.4.1), Patient Root and Study Root, answered from the index a page at a time.

A query matching more than ``query.max_results`` is refused with 0xA700 before any match is sent, so a
requestor never takes a truncated list for the whole (C-FIND has no status for "there is more"). Each match
goes as a pending response (0xFF01 when the identifier asked to match keys the index does not keep); C-CANCEL
ends the stream with 0xFE00.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import AsyncIterator, Mapping, Sequence

from gateway.core import audit
from gateway.core.audit import AuditRecord, AuditTrail
from gateway.core.errors import describe
from gateway.core.query import FIND_PATIENT_ROOT, FIND_STUDY_ROOT, MODELS, InvalidQuery, Query, parse_identifier
from gateway.dicom import dimse
from gateway.dicom.acse import EXPLICIT_LITTLE, IMPLICIT_LITTLE
from gateway.dicom.dataset import read_prefix
from gateway.dicom.dimse import Command
from gateway.dicom.service import (
    AssociationContext,
    DataSetSink,
    Operation,
    Response,
    WholeDataSet,
    permits,
    requestor,
)
from gateway.index import IndexFailure
from gateway.metrics import Metrics
from gateway.retrieve import Holdings
from gateway.retrieve.answer import encode_match
from gateway.settings import QuerySettings

log = logging.getLogger(__name__)

IDENTIFIER_LIMIT = 1024 * 1024
PAGE = 100
QUERY_SYNTAXES = (EXPLICIT_LITTLE, IMPLICIT_LITTLE)


def read_identifier(data: bytes, transfer_syntax: str, model_uid: str, fold_names: bool,
                    retrieve: bool = False) -> Query:
    """Raises InvalidQuery for an identifier that does not parse or fit the model."""
    try:
        dataset, _ = read_prefix(data, transfer_syntax, stop_before=0xFFFFFFFF, complete=True)  # type: ignore[misc]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return parse_identifier(dataset, MODELS[model_uid], fold_names, retrieve)
    except InvalidQuery:
        raise
    except Exception as exc:
        raise InvalidQuery(f"the identifier does not parse ({type(exc).__name__})") from exc


class QueryService:
    command_fields = frozenset({dimse.C_FIND_RQ})

    def __init__(self, holdings: Holdings, settings: QuerySettings, ae_title: str, metrics: Metrics,
                 audit: AuditTrail) -> None:
        self._audit = audit
        self._holdings = holdings
        self._settings = settings
        self._ae_title = ae_title
        self._metrics = metrics

    def abstract_syntaxes(self) -> Mapping[str, Sequence[str]]:
        return {FIND_PATIENT_ROOT: QUERY_SYNTAXES, FIND_STUDY_ROOT: QUERY_SYNTAXES}

    async def request(self, association: AssociationContext, request: Command,
                      context_id: int) -> Response | DataSetSink:
        if not permits(association, "query"):
            log.warning("C-FIND refused: the calling AE may not query")
            return Response(dimse.NOT_AUTHORIZED, "this AE may not query")
        return WholeDataSet("C-FIND", "Identifier", lambda data: self._find(association, request, context_id, data),
                            IDENTIFIER_LIMIT, dimse.OUT_OF_RESOURCES)

    async def _find(self, association: AssociationContext, request: Command, context_id: int,
                    data: bytes) -> Response | Operation:
        syntax = association.transfer_syntax(context_id)
        try:
            query = read_identifier(data, syntax, request.affected_sop_class_uid, self._settings.case_insensitive_names)
        except InvalidQuery as exc:
            log.warning("C-FIND refused", extra={"reason": str(exc)})
            self._metrics.queries.labels("dimse", "invalid").inc()
            return Response(dimse.IDENTIFIER_DOES_NOT_MATCH, str(exc))
        try:
            index = await self._holdings.index()
            found = await index.count_matches(query, self._settings.max_results + 1)
        except IndexFailure as exc:
            log.error("C-FIND failed: the index is unavailable", extra={"error": describe(exc)})
            self._metrics.queries.labels("dimse", "failed").inc()
            return Response(dimse.OUT_OF_RESOURCES, "the index is unavailable")
        if found > self._settings.max_results:
            log.info("C-FIND refused: too many matches", extra={"level": query.level,
                                                                "limit": self._settings.max_results})
            self._metrics.queries.labels("dimse", "too_many").inc()
            return Response(dimse.OUT_OF_RESOURCES,
                            f"more than {self._settings.max_results} matches: narrow the query")
        log.info("C-FIND", extra={"level": query.level, "model": query.model, "matches": found})
        try:
            await self._audit.record(AuditRecord(
                audit.Event.QUERY, audit.Outcome.SUCCESS,
                (requestor(association), audit.this_gateway(association.called_ae, audit.Role.DESTINATION)),
                audit.Interface.C_FIND, audit.Action.EXECUTE, patient=_patient(query),
                query=audit.Query(data, sop_class=request.affected_sop_class_uid, transfer_syntax=syntax)))
        except Exception as exc:
            log.error("C-FIND refused: the query could not be audited", extra={"error": describe(exc)})
            return Response(dimse.OUT_OF_RESOURCES, "the audit trail is unavailable")
        self._metrics.queries.labels("dimse", "answered").inc()
        return _Matches(self._holdings, query, syntax, self._ae_title)


def _patient(query: Query) -> audit.Patient | None:
    named = query.patient()
    return None if named is None else audit.Patient(*named)


class _Matches:
    detached = False

    def __init__(self, holdings: Holdings, query: Query, transfer_syntax: str, ae_title: str) -> None:
        self._holdings = holdings
        self._query = query
        self._syntax = transfer_syntax
        self._ae_title = ae_title

    async def responses(self, cancelled: asyncio.Event) -> AsyncIterator[Response]:
        query = self._query
        index = await self._holdings.index()
        status = dimse.PENDING_WARNING if query.unsupported_matching else dimse.PENDING
        keys = (*query.returns, *query.unsupported)
        after = None
        while True:
            try:
                page = await index.search(query, query.returns, after=after, limit=PAGE)
            except IndexFailure as exc:
                log.error("C-FIND failed part-way: the index is unavailable", extra={"error": describe(exc)})
                yield Response(dimse.OUT_OF_RESOURCES, "the index became unavailable")
                return
            for unique, values, _ in page:
                if cancelled.is_set():
                    yield Response(dimse.CANCELLED)
                    return
                yield Response(status, data_set=encode_match(query, values, keys, self._ae_title, self._syntax))
                after = unique
            if len(page) < PAGE:
                break
        yield Response(dimse.CANCELLED if cancelled.is_set() else dimse.SUCCESS)
