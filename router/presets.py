"""INI presets: `[*]` holds defaults for every model, every other section is one model."""

from __future__ import annotations

import configparser
import logging
import re
from pathlib import Path

import msgspec

from router.flags import is_known, preset_value, unapplied

log = logging.getLogger("llama-router")
_SECTION = re.compile(r"^\s*\[(?P<name>[^\]]+)\]")
_KEY = re.compile(r"^\s*(?P<key>[^=#;\s][^=]*?)\s*=")

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
    lines = _key_lines(path)
    sections: dict[str, dict[str, str]] = {}
    defaults: dict[str, str] = {}
    for name in parser.sections():
        values = dict(preset_value(key, value.strip()) for key, value in parser.items(name))
        _check_keys(path, name, parser.items(name), lines)
        if "model" in values:
            values["model"] = _resolve_path(values["model"], base)
        if "mmproj" in values:
            values["mmproj"] = _resolve_path(values["mmproj"], base)
        if name.strip() == GLOBAL_SECTION:
            defaults = values
        else:
            sections[name.strip()] = values
    return Presets(defaults=defaults, sections=sections, source=path)


def _check_keys(
    path: str, section: str, items: list[tuple[str, str]], lines: dict[tuple[str, str], int]
) -> None:
    """An unknown key stops the load, as an unknown flag stops the start; a known one that
    nothing here honours is named in the log."""
    for key, value in items:
        canonical = preset_value(key, value)[0]
        where = f"{path}:{lines.get((section.strip(), key), '?')}"
        if not is_known(canonical):
            raise PresetError(f"{where}: unknown key {key!r} in section [{section.strip()}]")
        if unapplied([canonical]):
            log.warning("%s: llama-server key %r is accepted but not applied here", where, key)


def _key_lines(path: str) -> dict[tuple[str, str], int]:
    """(section, key) -> line number, for messages: configparser does not keep them."""
    lines: dict[tuple[str, str], int] = {}
    section = ""
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if match := _SECTION.match(line):
                section = match["name"].strip()
            elif match := _KEY.match(line):
                lines.setdefault((section, match["key"]), number)
    return lines


def _resolve_path(value: str, base: Path) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else base / path)


def split_list(value: str | None) -> list[str]:
    return [item.strip() for item in (value or "").split(",") if item.strip()]
