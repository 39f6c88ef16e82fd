"""Run a profile on one header: plan the coercion for the calling AE, then run the rules on the coerced header.

The caller's Dataset is left untouched; the result carries the changes so the storage stage can apply them to
the object it stores.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

from workers.validation.coercion import AttributeChange, apply_changes, plan_coercion
from workers.validation.model import Finding, Rule, RuleContext, Severity, SourceContext
from workers.validation.profiles import Profile
from workers.validation.rules import RULES


def needs_source(rule: Rule) -> bool:
    """Whether the rule judges the sender (calling AE, its organisation), which an offline file does not name."""
    return rule.needs_source


@dataclass(frozen=True)
class ValidationResult:
    profile: str
    findings: tuple[Finding, ...]
    changes: tuple[AttributeChange, ...]
    skipped: tuple[str, ...] = ()
    """Codes of the enabled rules that did not run because the source was not known (offline checks)."""

    @property
    def has_errors(self) -> bool:
        return any(finding.severity is Severity.ERROR for finding in self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "has_errors": self.has_errors,
            "findings": [finding.to_dict() for finding in self.findings],
            "changes": [change.to_dict() for change in self.changes],
            "skipped": list(self.skipped),
        }


def validate(ds: Dataset, profile: Profile, source: SourceContext) -> ValidationResult:
    """Coerce (on a copy) and validate one instance header with `profile`.

    With ``SourceContext.unknown()`` (a file checked offline without naming its sender) the rules that judge
    the sender do not run; their codes are in ``ValidationResult.skipped``. The gateway always passes the
    calling AE's context, so there every enabled rule runs.
    """
    changes = plan_coercion(ds, profile.coercion_for(source.calling_ae_title), source)
    header = ds
    if changes:
        header = copy.deepcopy(ds)
        apply_changes(header, changes)
    context = RuleContext(source, profile.parameters)
    skipped = tuple(code for code in profile.rules if not source.known and needs_source(RULES[code]))
    findings = [
        finding
        for code, severity in profile.rules.items()
        if code not in skipped
        for finding in RULES[code].findings(header, context, severity)
    ]
    return ValidationResult(profile.name, tuple(findings), tuple(changes), skipped)
