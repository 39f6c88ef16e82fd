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
from workers.validation.model import Finding, RuleContext, Severity, SourceContext
from workers.validation.profiles import Profile
from workers.validation.rules import RULES


@dataclass(frozen=True)
class ValidationResult:
    profile: str
    findings: tuple[Finding, ...]
    changes: tuple[AttributeChange, ...]

    @property
    def has_errors(self) -> bool:
        return any(finding.severity is Severity.ERROR for finding in self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "has_errors": self.has_errors,
            "findings": [finding.to_dict() for finding in self.findings],
            "changes": [change.to_dict() for change in self.changes],
        }


def validate(ds: Dataset, profile: Profile, source: SourceContext) -> ValidationResult:
    """Coerce (on a copy) and validate one instance header with `profile`."""
    changes = plan_coercion(ds, profile.coercion_for(source.calling_ae_title), source)
    header = ds
    if changes:
        header = copy.deepcopy(ds)
        apply_changes(header, changes)
    context = RuleContext(source, profile.parameters)
    findings = [
        finding
        for code, severity in profile.rules.items()
        for finding in RULES[code].findings(header, context, severity)
    ]
    return ValidationResult(profile.name, tuple(findings), tuple(changes))
