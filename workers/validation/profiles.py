"""Validation profiles: YAML documents that choose rules, their severities and parameters, and per-AE coercion.

The bundled profiles (``profiles/*.yaml`` beside this module) come first; profile files named in the settings
or on the command line are layered on top in order. A profile may ``extends`` another by name; a file profile
with the same name as an earlier one replaces it, and may extend that earlier one by naming itself (how a site
adds its procedure code list to ``fi-kanta``). Profiles are resolved and checked once, at start-up.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from gateway.settings import ValidationSettings
from workers.validation.coercion import CoercionConfig
from workers.validation.model import ProfileParameters, Severity
from workers.validation.rules import RULES

BUNDLED_DIR = Path(__file__).with_name("profiles")
BUNDLED = ("dicom-basic", "fi-kanta")
CODE_LENGTH = 5
"""The archive validates study codes on their first five characters."""


class ProfileError(Exception):
    """A profile that cannot be used; the message names the profile or file and what is wrong."""


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _RuleSetting(_Section):
    severity: Severity | None = None
    enabled: bool = True


class _Parameters(_Section):
    test_environment: bool = False
    procedure_codes: list[str] | Path | None = None
    """The codes, or a file with one code per line (text after whitespace, ';' or ',' and '#' lines ignored)."""

    @field_validator("procedure_codes")
    @classmethod
    def _relative_to_profile(cls, value: list[str] | Path | None, info: ValidationInfo) -> list[str] | Path | None:
        if isinstance(value, Path) and info.context:
            directory: Path = info.context["directory"]
            return directory / value
        return value


class _Coercion(CoercionConfig):
    by_calling_ae: dict[str, CoercionConfig] = Field(default_factory=dict)


class _Document(_Section):
    name: str = Field(min_length=1)
    description: str = ""
    extends: str | None = None
    parameters: _Parameters = _Parameters()
    rules: dict[str, _RuleSetting] = {}
    coercion: _Coercion = _Coercion()

    @field_validator("rules", mode="before")
    @classmethod
    def _known_codes(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            return value
        unknown = sorted(set(value) - set(RULES))
        if unknown:
            raise ValueError(f"unknown rule codes {', '.join(unknown)}")
        return {code: {} if setting is None else setting for code, setting in value.items()}


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    rules: Mapping[str, Severity]
    """Enabled rule codes and the severity in effect for each."""
    parameters: ProfileParameters
    coercion: CoercionConfig
    coercion_by_calling_ae: Mapping[str, CoercionConfig]

    def coercion_for(self, calling_ae_title: str) -> CoercionConfig:
        return self.coercion_by_calling_ae.get(calling_ae_title.strip(), self.coercion)

    def for_test_environment(self) -> Profile:
        """This profile with ``test_environment`` on: test identity codes accepted (the deployment test)."""
        return replace(self, parameters=replace(self.parameters, test_environment=True))


def _read(text: str, origin: str, directory: Path) -> _Document:
    try:
        return _Document.model_validate(yaml.safe_load(text), context={"directory": directory})
    except yaml.YAMLError as exc:
        raise ProfileError(f"{origin}: not YAML: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'document'}: {e['msg']}" for e in exc.errors())
        raise ProfileError(f"{origin}: {problems}") from None


def _read_file(path: Path) -> _Document:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProfileError(f"profile file {path}: {exc.strerror}") from None
    return _read(text, f"profile file {path}", path.parent)


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _procedure_codes(value: list[str] | Path | None, profile: str) -> frozenset[str] | None:
    if value is None:
        return None
    if isinstance(value, Path):
        try:
            lines = value.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ProfileError(f"profile {profile}: procedure code file {value}: {exc.strerror}") from None
        value = [re.split(r"[\s;,]", line.strip(), maxsplit=1)[0] for line in lines]
        value = [code for code in value if code and not code.startswith("#")]
    short = [code for code in value if len(code.strip()) < CODE_LENGTH]
    if short:
        raise ProfileError(f"profile {profile}: procedure codes shorter than {CODE_LENGTH} characters: {short[:5]}")
    return frozenset(code.strip()[:CODE_LENGTH] for code in value)


def _build(name: str, merged: dict[str, Any]) -> Profile:
    document = _Document.model_validate({"name": name, **merged})
    rules = {
        code: setting.severity or RULES[code].severity
        for code, setting in document.rules.items()
        if setting.enabled
    }
    parameters = ProfileParameters(
        test_environment=document.parameters.test_environment,
        procedure_codes=_procedure_codes(document.parameters.procedure_codes, name),
    )
    for code in rules:
        missing = [p for p in RULES[code].requires if getattr(parameters, p) is None]
        if missing:
            raise ProfileError(
                f"profile {name}: rule {code} needs parameter {', '.join(missing)}; set it in a profile file "
                f"that extends {name}, or disable the rule"
            )
    base = document.coercion.model_dump(exclude={"by_calling_ae"})
    by_ae = {
        ae.strip(): CoercionConfig.model_validate({**base, **override.model_dump(exclude_unset=True)})
        for ae, override in document.coercion.by_calling_ae.items()
    }
    return Profile(name, document.description, rules, parameters, CoercionConfig(**base), by_ae)


class ProfileRegistry:
    """Every known profile document, bundled first, then file layers in the order given."""

    def __init__(self, documents: Iterable[_Document]) -> None:
        self._layers: dict[str, list[_Document]] = {}
        for document in documents:
            self._layers.setdefault(document.name, []).append(document)

    @classmethod
    def load(cls, files: Iterable[Path] = ()) -> ProfileRegistry:
        bundled = [
            _read((BUNDLED_DIR / f"{name}.yaml").read_text(encoding="utf-8"), f"bundled profile {name}", BUNDLED_DIR)
            for name in BUNDLED
        ]
        return cls([*bundled, *(_read_file(path) for path in files)])

    @property
    def names(self) -> list[str]:
        return sorted(self._layers)

    def get(self, name: str) -> Profile:
        """The profile resolved through its `extends` chain and checked for use."""
        if name not in self._layers:
            raise ProfileError(f"no profile named {name!r}; known: {', '.join(self.names)}")
        return _build(name, self._resolve(name, len(self._layers[name]) - 1, ()))

    def _resolve(self, name: str, layer: int, chain: tuple[tuple[str, int], ...]) -> dict[str, Any]:
        if (name, layer) in chain:
            raise ProfileError(f"profile {name} extends itself through {' -> '.join(n for n, _ in chain)}")
        document = self._layers[name][layer]
        own = document.model_dump(exclude_unset=True, exclude={"name", "extends"})
        parent = document.extends
        if parent is None:
            return own
        if parent == name and layer > 0:
            parent_layer = layer - 1
        elif parent in self._layers and parent != name:
            parent_layer = len(self._layers[parent]) - 1
        else:
            raise ProfileError(f"profile {name} extends {parent!r}, which is not defined before it")
        return _merge(self._resolve(parent, parent_layer, (*chain, (name, layer))), own)


class ProfileSelector:
    """The profile for each calling AE, resolved once so a bad profile stops start-up, not an association."""

    def __init__(self, default: Profile, by_calling_ae: Mapping[str, Profile]) -> None:
        self._default = default
        self._by_calling_ae = {ae.strip(): profile for ae, profile in by_calling_ae.items()}

    @classmethod
    def from_settings(cls, settings: ValidationSettings) -> ProfileSelector:
        """The selected profiles; with ``settings.test_environment`` every one accepts test identity codes."""
        registry = ProfileRegistry.load(settings.profile_files)

        def get(name: str) -> Profile:
            profile = registry.get(name)
            return profile.for_test_environment() if settings.test_environment else profile

        return cls(
            get(settings.default_profile),
            {ae: get(name) for ae, name in settings.profiles_by_calling_ae.items()},
        )

    def for_calling_ae(self, calling_ae_title: str) -> Profile:
        return self._by_calling_ae.get(calling_ae_title.strip(), self._default)
