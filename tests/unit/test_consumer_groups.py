"""The lag report names exactly the consumer groups of the worker pools the configuration runs."""

from __future__ import annotations

from pathlib import Path

from gateway.app import build_bus, build_roles, consumer_groups, default_roles
from gateway.http import Endpoints
from gateway.metrics import Metrics
from gateway.settings import Settings


def test_the_reported_groups_are_those_of_the_pools_built(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        xds={"repository_url": "http://127.0.0.1:9/xds/repository", "organization_oid": "1.2.246.10.1",
             "retrieve_location_uid": "1.2.246.10.1.1"},
        forward={"destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 9}]},
        hl7={"port": 2575, "allowed_senders": [{"application": "HIS"}], "forward_to": {"host": "127.0.0.1"}},
        audit={"repository_url": "udp://127.0.0.1:514"},
    )
    for configured in (settings, Settings(data_dir=tmp_path / "data", audit={"enabled": False})):
        metrics = Metrics()
        roles = build_roles(default_roles(configured), configured, build_bus(configured, metrics), metrics,
                            Endpoints())
        built = sorted(role.group for role in roles if hasattr(role, "group"))
        assert sorted(group for _, group, _ in consumer_groups(configured)) == built
