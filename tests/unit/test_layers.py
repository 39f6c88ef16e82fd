"""The layering rules of docs/architecture.md, read from the import statements of the code itself."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent

FORBIDDEN = {
    "gateway/core": ("gateway.", "workers."),
    "gateway/dicom": ("gateway.bus", "gateway.settings", "gateway.ingest", "gateway.index", "gateway.objects",
                      "gateway.app", "workers."),
    "gateway/xds": ("gateway.bus", "gateway.ingest", "gateway.index", "gateway.objects", "gateway.app", "workers."),
    "gateway/bus": ("gateway.dicom", "gateway.ingest", "gateway.index", "gateway.objects", "gateway.xds", "workers."),
    "gateway/index": ("gateway.dicom", "gateway.ingest", "gateway.bus", "gateway.objects", "gateway.xds", "workers."),
    "gateway/objects": ("gateway.dicom", "gateway.ingest", "gateway.bus", "gateway.index", "gateway.xds", "workers."),
    "gateway/ingest": ("gateway.app", "gateway.index", "gateway.objects", "workers."),
    "gateway/audit": ("gateway.app", "gateway.runtime", "gateway.cli", "gateway.dicom", "gateway.ingest",
                      "gateway.objects", "gateway.retrieve", "gateway.xds", "workers."),
    "gateway/selftest": ("gateway.app", "gateway.runtime", "gateway.bus", "gateway.index", "gateway.objects",
                         "gateway.ingest", "gateway.retrieve", "gateway.audit", "gateway.api", "workers."),
    "workers": ("gateway.app", "gateway.bus.kafka", "gateway.bus.embedded", "gateway.bus.rdkafka",
                "gateway.index.postgres", "gateway.index.sqlite", "gateway.objects.s3", "gateway.objects.filesystem",
                "gateway.ingest"),
}
ALLOWED_WITHIN = {"gateway/core": ("gateway.core",)}


def imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def forbidden(name: str, rule: str) -> bool:
    """``gateway.bus`` forbids that module and what is in it; ``workers.`` forbids the whole package."""
    prefix = rule if rule.endswith(".") else rule + "."
    return name == rule.rstrip(".") or name.startswith(prefix)


def test_the_rules_catch_what_they_name() -> None:
    assert forbidden("gateway.bus", "gateway.bus") and forbidden("gateway.bus.kafka", "gateway.bus")
    assert forbidden("workers.store", "workers.") and not forbidden("gateway.business", "gateway.bus")


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_point_down_the_layers(package: str) -> None:
    offending = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in imports(path):
            if name.startswith(ALLOWED_WITHIN.get(package, ())):
                continue
            if any(forbidden(name, rule) for rule in FORBIDDEN[package]):
                offending.append(f"{path.relative_to(ROOT)} imports {name}")
    assert offending == []


def test_only_the_composition_root_names_adapters() -> None:
    adapters = ("gateway.bus.kafka", "gateway.bus.embedded", "gateway.index.postgres", "gateway.index.sqlite",
                "gateway.objects.s3", "gateway.objects.filesystem")
    allowed = {"gateway/app.py", "gateway/bus/kafka.py", "gateway/bus/embedded.py", "gateway/bus/rdkafka.py",
               "gateway/index/postgres.py", "gateway/index/sqlite.py", "gateway/objects/s3.py",
               "gateway/objects/filesystem.py"}
    offending = [f"{path.relative_to(ROOT)} imports {name}"
                 for package in ("gateway", "workers") for path in sorted((ROOT / package).rglob("*.py"))
                 if str(path.relative_to(ROOT)) not in allowed
                 for name in imports(path) if name.startswith(adapters)]
    assert offending == []
