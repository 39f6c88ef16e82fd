"""SQL migrations, one folder per dialect, applied in file-name order (``NNNN_name.sql``).

The files are package data (``*.sql`` in pyproject) read through ``importlib.resources``, so they load the same
from a checkout, an editable install or a wheel.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def load(dialect: str) -> list[Migration]:
    """The dialect's migrations, oldest first."""
    migrations = []
    for resource in files(__name__).joinpath(dialect).iterdir():
        if resource.name.endswith(".sql"):
            number, _, name = resource.name.removesuffix(".sql").partition("_")
            migrations.append(Migration(int(number), name, resource.read_text(encoding="utf-8")))
    return sorted(migrations, key=lambda migration: migration.version)
