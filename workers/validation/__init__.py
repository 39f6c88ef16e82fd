"""Metadata validation of instance headers: hetu and DICOM rules, profiles per source AE, coercion.

Pure functions over a pydicom Dataset without pixel data; the only I/O is loading profiles at start-up.
"""

from workers.validation.coercion import AttributeChange, CoercionConfig, apply_changes, plan_coercion
from workers.validation.consistency import patient_attributes, patient_conflicts
from workers.validation.engine import ValidationResult, validate
from workers.validation.model import Finding, ProfileParameters, RuleContext, Severity, SourceContext
from workers.validation.profiles import (
    Profile,
    ProfileError,
    ProfileRegistry,
    ProfileSelector,
)
from workers.validation.rules import RULES

__all__ = [
    "RULES",
    "AttributeChange",
    "CoercionConfig",
    "Finding",
    "Profile",
    "ProfileError",
    "ProfileParameters",
    "ProfileRegistry",
    "ProfileSelector",
    "RuleContext",
    "Severity",
    "SourceContext",
    "ValidationResult",
    "apply_changes",
    "patient_attributes",
    "patient_conflicts",
    "plan_coercion",
    "validate",
]
