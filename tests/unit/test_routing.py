"""Forwarding rules: which destinations a stored instance goes to, and the settings that say so."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from gateway.index import InstanceStatus
from gateway.settings import ForwardSettings, SettingsError, load_settings
from tests.integration.test_index_contract import make_row
from workers.routing import Router

KANTA = {"name": "kanta", "ae_title": "KANTA", "host": "kaa.example", "port": 11112}
PACS = {"name": "pacs", "ae_title": "PACS", "host": "pacs.example", "port": 104}


def router(**settings: object) -> Router:
    return Router(ForwardSettings.model_validate({"destinations": [KANTA, PACS], **settings}))


def test_without_rules_every_stored_instance_goes_everywhere_and_quarantined_nowhere() -> None:
    row = make_row()
    assert router().destinations(row) == ["kanta", "pacs"]
    assert router().destinations(replace(row, status=InstanceStatus.QUARANTINED)) == []


def test_every_condition_of_a_rule_must_hold_and_the_matching_rules_add_up() -> None:
    rules = router(rules=[
        {"destinations": ["pacs"], "modalities": ["MR"], "calling_aes": ["MR1"]},
        {"destinations": ["kanta"], "study_description": "thorax|keuhko"},
        {"destinations": ["pacs"], "sop_classes": ["1.2.840.10008.5.1.4.1.1.1.1"]},
    ])
    row = make_row()
    assert rules.destinations(replace(row, modality="MR", source_ae="MR1")) == ["pacs"]
    assert rules.destinations(replace(row, modality="MR", source_ae="CT1")) == []
    assert rules.destinations(replace(row, study_description="KEUHKOKUVA")) == ["kanta"]
    assert rules.destinations(replace(row, modality="MR", source_ae="MR1", study_description="Thorax")) == [
        "pacs", "kanta"]
    assert rules.destinations(replace(row, sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1")) == ["pacs"]


def test_a_rule_may_send_quarantined_instances_and_without_destinations_means_all() -> None:
    rules = router(rules=[{"statuses": ["stored", "quarantined"]}])
    assert rules.destinations(replace(make_row(), status=InstanceStatus.QUARANTINED)) == ["kanta", "pacs"]


@pytest.mark.parametrize(("variables", "message"), [
    ({"GATEWAY_FORWARD__DESTINATIONS": '[{"name": "Kanta!", "ae_title": "K", "host": "h", "port": 1}]'},
     "GATEWAY_FORWARD__DESTINATIONS: \\[0\\]\\.name: String should match pattern"),
    ({"GATEWAY_FORWARD__DESTINATIONS": f'[{KANTA}, {KANTA}]'.replace("'", '"')},
     "each name may appear once"),
    ({"GATEWAY_FORWARD__DESTINATIONS": f'[{KANTA}]'.replace("'", '"'),
      "GATEWAY_FORWARD__RULES": '[{"destinations": ["nowhere"]}]'},
     "rules name destinations that are not configured: nowhere"),
    ({"GATEWAY_FORWARD__RULES": '[{"study_description": "("}]'}, "not a regular expression"),
    ({"GATEWAY_FORWARD__DESTINATIONS": '[{"name": "k", "ae_title": "K", "host": "h", "port": 1, '
                                       '"transfer_syntaxes": ["jpeg"]}]'}, "not UIDs: jpeg"),
])
def test_forwarding_settings_that_cannot_work_stop_the_start_naming_the_setting(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variables: dict[str, str], message: str) -> None:
    monkeypatch.setenv("GATEWAY_SECRETS_DIR", str(tmp_path / "none"))
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=message):
        load_settings()
