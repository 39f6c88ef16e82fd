"""Which presentation contexts to propose for sending stored instances, and which to send each one on: its stored
transfer syntax where accepted, else an uncompressed one it converts to losslessly (``transcode``), never a lossy
one. Forwarding, C-MOVE and C-GET send the same way."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from gateway.dicom.acse import EXPLICIT_LITTLE, IMPLICIT_LITTLE
from gateway.dicom.requestor import MAX_CONTEXTS as MAX_CONTEXTS
from gateway.dicom.transcode import can_transcode

UNCOMPRESSED = (EXPLICIT_LITTLE, IMPLICIT_LITTLE)


def stored_syntaxes(instances: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """SOP Class -> the transfer syntaxes its instances are stored in, from (SOP Class, syntax) pairs."""
    stored: dict[str, list[str]] = {}
    for sop_class, syntax in instances:
        syntaxes = stored.setdefault(sop_class, [])
        if syntax not in syntaxes:
            syntaxes.append(syntax)
    return stored


def propose(stored: Mapping[str, list[str]], allowed: Collection[str], room: int) -> list[tuple[str, list[str]]]:
    """Per SOP Class: one context per stored syntax ``allowed`` (empty: any), and one with the uncompressed
    syntaxes the stored ones convert to losslessly; as many classes as fit in ``room`` contexts."""
    contexts: list[tuple[str, list[str]]] = []
    for sop_class, syntaxes in stored.items():
        own = [[ts] for ts in syntaxes if not allowed or ts in allowed]
        converted = [ts for ts in UNCOMPRESSED if (not allowed or ts in allowed)
                     and any(ts != source and can_transcode(source, ts) for source in syntaxes)]
        wanted = [*own, *([converted] if converted else [])] or [[syntaxes[0]]]
        if len(contexts) + len(wanted) > room:
            break
        contexts.extend((sop_class, list(ts)) for ts in wanted)
    return contexts


def choose(accepted: Mapping[str, int], stored: str, allowed: Collection[str] = ()) -> tuple[int, str] | None:
    """The context and syntax to send an instance stored in ``stored`` on, of those ``accepted`` for its SOP
    Class (syntax -> context ID, in context order): as stored if accepted, else a lossless conversion."""
    if stored in accepted and (not allowed or stored in allowed):
        return accepted[stored], stored
    for syntax, context_id in accepted.items():
        if (not allowed or syntax in allowed) and can_transcode(stored, syntax):
            return context_id, syntax
    return None
