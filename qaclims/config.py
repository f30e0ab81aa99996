"""Config validation against `schemas/config.schema.yaml`, with errors naming key and file.

The Snakefile calls `check_config` before any job runs; tests and the CLI use the same
schema file.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from importlib import resources
from typing import Any

import yaml

from qaclims.errors import InputError

CLI_SOURCE = "the command line (--config)"


# libyaml's loader when pyyaml has it: the pure-Python one takes ~0.3 s for the schema, at
# every dry run.
SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.cache
def _schema_text() -> str:
    return resources.files("qaclims").joinpath("schemas/config.schema.yaml").read_text()


def load_schema() -> dict[str, Any]:
    return yaml.load(_schema_text(), Loader=SafeLoader)


def _unknown_keys(value: Any, schema: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths in `value` that the schema does not declare."""
    if not isinstance(value, dict) or schema.get("type") != "object":
        return []
    props = schema.get("properties", {})
    unknown = []
    for key, sub in value.items():
        path = f"{prefix}{key}"
        if key not in props:
            if schema.get("additionalProperties", True) is False:
                unknown.append(path)
            continue
        unknown += _unknown_keys(sub, props[key], f"{path}.")
    return unknown


_MISSING = object()


def _get(value: Any, path: list[str]) -> Any:
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return _MISSING
        value = value[key]
    return value


def _load(path: str | os.PathLike) -> dict[str, Any]:
    try:
        with open(path) as fh:
            data = yaml.load(fh, Loader=SafeLoader) or {}
    except OSError as err:
        raise InputError(f"{path}: cannot read config file ({err})") from err
    except yaml.YAMLError as err:
        raise InputError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(data, dict):
        raise InputError(f"{path}: a config file must hold a mapping of keys")
    return data


def _subschema(schema: dict[str, Any], key: str | int) -> dict[str, Any]:
    if isinstance(key, int):
        return schema.get("items", {})
    return schema.get("properties", {}).get(key, {})


def _typed(value: Any, schema: dict[str, Any], depth: int) -> Any:
    """`value` with nested command-line strings read as YAML where the schema wants no string."""
    if isinstance(value, dict):
        return {k: _typed(v, _subschema(schema, k), depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed(v, _subschema(schema, i), depth + 1) for i, v in enumerate(value)]
    types = schema.get("type", [])
    types = [types] if isinstance(types, str) else types
    wants_text = "string" in types or "enum" in schema
    if depth < 2 or not isinstance(value, str) or (wants_text and value not in ("null", "~")):
        return value
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def typed_overrides(cli: dict[str, Any]) -> dict[str, Any]:
    """Typed `--config` values: Snakemake reads `crf={fg_threshold: 0.35}` with YAML's base
    loader, so every nested scalar arrives as a string; read those as YAML (0.35, true,
    null, [1, 2]) wherever the schema does not expect a string."""
    return _typed(cli, load_schema(), 0)


def merge(config: dict[str, Any], overrides: dict[str, Any]) -> None:
    """Update `config` in place, nested mappings key by key (as Snakemake merges them)."""
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            merge(config[key], value)
        else:
            config[key] = value


def check_config(config: dict[str, Any], files: Iterable[str | os.PathLike] = ()) -> None:
    """Raise InputError naming the key and the file for the first problem found.

    `config` is the merged config; `files` are the YAML files it came from, in the order
    they were applied (later ones override earlier ones).
    """
    schema = load_schema()
    files = [str(f) for f in files]
    raw = {f: _load(f) for f in files}
    for f, data in raw.items():
        unknown = _unknown_keys(data, schema)
        if unknown:
            raise InputError(f"{f}: unknown config key '{unknown[0]}'")
    unknown = _unknown_keys(config, schema)
    if unknown:
        raise InputError(f"{CLI_SOURCE}: unknown config key '{unknown[0]}'")
    import jsonschema  # here, not at the top: a dry run with a known-good config skips it

    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        err = errors[0]
        path = [str(p) for p in err.absolute_path]
        key = ".".join(path) or "<top level>"
        setters = [f for f in files if path and _get(raw[f], path) is not _MISSING]
        source = CLI_SOURCE
        if setters and _get(raw[setters[-1]], path) == _get(config, path):
            source = setters[-1]
        elif not path and files:
            source = files[-1]
        raise InputError(f"{source}: config key '{key}': {err.message}")
    _check_combinations(config)


def _check_combinations(config: dict[str, Any]) -> None:
    """Rules across keys that the schema cannot say."""
    paper_mode = config.get("ritc", {}).get("clip_mode") == "mask_adapted"
    if config["dataset"]["kind"] != "demo" and paper_mode and not config["models"].get("ovseg"):
        raise InputError(
            "config keys 'ritc.clip_mode' and 'models.ovseg': mask_adapted CLIP without an "
            "OV-Seg checkpoint would run with all-zero mask prompts; give models.ovseg or "
            "set ritc.clip_mode: plain"
        )
