"""The rule engine's vocabulary: severities, findings, rules and the context a rule sees.

Rules are pure: a header (a pydicom Dataset without pixel data) and a RuleContext in, violations out.
Everything a rule may depend on besides the header travels in the context, so rules need no I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset


class Severity(enum.StrEnum):
    ERROR = "error"
    """The instance must not be forwarded to the archive as it is."""
    WARNING = "warning"
    """Forwarded, but someone should fix the source."""


def tag_of(keyword: str) -> int:
    """The tag of a dictionary keyword; rules only name standard attributes, so a miss is a bug."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(f"{keyword} is not a DICOM dictionary keyword")
    return tag


@dataclass(frozen=True)
class Finding:
    """One rule's verdict on one attribute. Messages name the attribute and the rule, never a value: they are
    logged, stored in the index and listed to operators, and any value may be patient data."""

    code: str
    severity: Severity
    keyword: str
    tag: int
    message: str

    def to_dict(self) -> dict[str, str]:
        """Plain values for orjson and log lines; the tag as 8 hex digits, as in the DICOM JSON model."""
        return {
            "code": self.code,
            "severity": self.severity.value,
            "keyword": self.keyword,
            "tag": f"{self.tag:08X}",
            "message": self.message,
        }


@dataclass(frozen=True)
class Violation:
    """What a rule's check reports; the engine adds the rule's code and the severity in effect."""

    keyword: str
    message: str
    tag: int | None = None
    """Set when the keyword alone does not give the tag (repeating groups such as overlays)."""


@dataclass(frozen=True)
class SourceContext:
    """Who sent the instance: the calling AE and the organisation configured for it ("" = not configured)."""

    calling_ae_title: str
    organization: str = ""
    organization_oid: str = ""
    known: bool = True
    """False for a file checked offline without naming its sender (``SourceContext.unknown()``): the rules
    that judge the sender are skipped instead of failing. The gateway always knows the calling AE."""

    @classmethod
    def unknown(cls) -> SourceContext:
        """No calling AE and no organisation: the context of a file checked offline."""
        return cls("", known=False)


@dataclass(frozen=True)
class ProfileParameters:
    test_environment: bool = False
    """Accept the 900-series test identity codes under the national hetu OID (deployment tests only)."""
    procedure_codes: frozenset[str] | None = None
    """Known study codes, compared on their first five characters as the archive does."""


class Walked(NamedTuple):
    """One standard element of a VR the rules check, with its values as text."""

    vr: str
    keyword: str
    tag: int
    values: tuple[str, ...]
    where: str
    """The sequence path leading to it, for messages ("" at the top level)."""


@dataclass(frozen=True)
class RuleContext:
    source: SourceContext
    parameters: ProfileParameters = ProfileParameters()
    walked: dict[int, list[Walked]] = field(default_factory=dict, compare=False, repr=False)
    """Each header's elements, walked once for every rule that checks them all (by ``id`` of the header,
    which outlives the context)."""


Check = Callable[[Dataset, RuleContext], Iterator[Violation]]


@dataclass(frozen=True)
class Rule:
    code: str
    severity: Severity
    """Default severity; a profile may override it."""
    attributes: tuple[str, ...]
    """Keywords of the attributes the rule concerns (for documentation and lookup)."""
    check: Check
    requires: tuple[str, ...] = ()
    """ProfileParameters fields that must be set for the rule to be enabled."""
    needs_source: bool = False
    """The rule judges the sender (calling AE, its organisation): skipped when the SourceContext is not known."""

    def findings(self, ds: Dataset, context: RuleContext, severity: Severity | None = None) -> list[Finding]:
        return [
            Finding(self.code, severity or self.severity, v.keyword, v.tag or tag_of(v.keyword), v.message)
            for v in self.check(ds, context)
        ]


def rule(
    code: str, severity: Severity, *attributes: str, requires: tuple[str, ...] = (), needs_source: bool = False
) -> Callable[[Check], Rule]:
    """Decorator turning a check function into a Rule with a stable code."""

    def wrap(check: Check) -> Rule:
        return Rule(code, severity, attributes, check, requires, needs_source)

    return wrap
