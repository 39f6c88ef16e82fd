"""Which destinations a stored instance is forwarded to (``GATEWAY_FORWARD__RULES``).

Like dcm4chee's export rules, each rule's conditions must all hold and a rule names its destinations; an
instance goes to the union of the destinations of the rules it matches. Without rules, every stored instance
goes to every destination. Quarantined instances (validation failed) go only where a rule says ``quarantined``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.index import InstanceRow
from gateway.settings import ForwardRule, ForwardSettings


@dataclass(frozen=True, slots=True)
class _Rule:
    destinations: tuple[str, ...]
    calling_aes: frozenset[str]
    modalities: frozenset[str]
    sop_classes: frozenset[str]
    study_description: re.Pattern[str] | None
    statuses: frozenset[str]

    @classmethod
    def of(cls, rule: ForwardRule, every: tuple[str, ...]) -> _Rule:
        return cls(rule.destinations or every, frozenset(rule.calling_aes), frozenset(rule.modalities),
                   frozenset(rule.sop_classes),
                   re.compile(rule.study_description, re.IGNORECASE) if rule.study_description else None,
                   frozenset(rule.statuses))

    def matches(self, row: InstanceRow) -> bool:
        return (row.status.value in self.statuses
                and (not self.calling_aes or row.source_ae in self.calling_aes)
                and (not self.modalities or row.modality in self.modalities)
                and (not self.sop_classes or row.sop_class_uid in self.sop_classes)
                and (self.study_description is None or self.study_description.search(row.study_description) is not None))


class Router:
    def __init__(self, settings: ForwardSettings) -> None:
        every = tuple(destination.name for destination in settings.destinations)
        self._rules = ([_Rule.of(rule, every) for rule in settings.rules] if settings.rules
                       else [_Rule.of(ForwardRule(), every)])

    def destinations(self, row: InstanceRow) -> list[str]:
        """In configuration order, each once."""
        chosen: dict[str, None] = {}
        for rule in self._rules:
            if rule.matches(row):
                chosen.update(dict.fromkeys(rule.destinations))
        return list(chosen)
