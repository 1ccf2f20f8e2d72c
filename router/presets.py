"""INI presets: `[*]` holds defaults for every model, every other section is one model."""

from __future__ import annotations

import configparser
from pathlib import Path

import msgspec

from router.config import canonical_key

GLOBAL_SECTION = "*"


class PresetError(Exception):
    pass


class Presets(msgspec.Struct):
    defaults: dict[str, str]
    sections: dict[str, dict[str, str]]
    source: str | None = None

    @classmethod
    def empty(cls) -> Presets:
        return cls(defaults={}, sections={})


def load_presets(path: str | None) -> Presets:
    if path is None:
        return Presets.empty()
    parser = configparser.ConfigParser(
        interpolation=None, strict=False, default_section="\0no-default\0", delimiters=("=",)
    )
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        with open(path, encoding="utf-8") as file:
            parser.read_file(file)
    except (OSError, configparser.Error) as error:
        raise PresetError(f"cannot read presets {path}: {error}") from error
    base = Path(path).resolve().parent
    sections: dict[str, dict[str, str]] = {}
    defaults: dict[str, str] = {}
    for name in parser.sections():
        values = {canonical_key(key): value.strip() for key, value in parser.items(name)}
        if "model" in values:
            values["model"] = _resolve_path(values["model"], base)
        if "mmproj" in values:
            values["mmproj"] = _resolve_path(values["mmproj"], base)
        if name.strip() == GLOBAL_SECTION:
            defaults = values
        else:
            sections[name.strip()] = values
    return Presets(defaults=defaults, sections=sections, source=path)


def _resolve_path(value: str, base: Path) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else base / path)


def split_list(value: str | None) -> list[str]:
    return [item.strip() for item in (value or "").split(",") if item.strip()]
