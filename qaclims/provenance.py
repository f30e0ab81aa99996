"""A rule's settings param and its shell flags, both made from one dict of named values.

Snakemake compares a rule's `params` as an unordered set of values with the names dropped,
and does not compare params computed from `input`, `output`, `threads` or `resources`. So a
rule carries exactly one tracked param, `settings`: canonical JSON (sorted keys) of the
values that shape its artifacts, by name, plus the code digest, the library versions and
the identity of every model it loads. No two values can stand in for each other. The
stage's command-line flags are rendered from the same values (`crf.fg_threshold` ->
`--fg-threshold 0.3`), together with the speed knobs (batch sizes of inference, workers,
threads), in a param that is a function of `threads` and therefore never compared: speed
knobs never rerun anything, and results must not depend on them.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Source:
    """A model or dataset a stage reads: what its flag gets, what the settings record.

    `inputs` holds the path when the workflow itself builds the thing (the demo models, a
    baseline checkpoint used as init weights): Snakemake then orders and tracks it as an
    input, and its identity is the path of that artifact, whose own rule's settings say
    what made it. Anything else is identified by content (`qaclims.fingerprint`).
    """

    arg: str | None
    identity: Mapping[str, Any]
    inputs: list[str] = field(default_factory=list)


def canonical(settings: Mapping[str, Any]) -> str:
    """One string for a dict of settings: equal dicts, equal strings, whatever their order."""
    return json.dumps(settings, sort_keys=True, separators=(",", ":"), allow_nan=False)


def flag(name: str) -> str:
    """`fg_threshold` -> `--fg-threshold`: the CLI flag of a config key."""
    return "--" + name.replace("_", "-")


def render_flags(values: Mapping[str, Any]) -> str:
    """Shell-quoted flags in the given order: None omitted, bools as --x / --no-x.

    A list becomes one flag followed by its items (an empty list: the bare flag).
    """
    parts: list[str] = []
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            parts.append(flag(name) if value else "--no-" + flag(name)[2:])
        elif isinstance(value, (list, tuple)):
            parts += [flag(name), *(shlex.quote(str(v)) for v in value)]
        elif isinstance(value, Mapping):
            raise TypeError(f"setting '{name}' is a mapping: give the stage a list or scalar")
        else:
            parts += [flag(name), shlex.quote(str(value))]
    return " ".join(parts)


def rule_settings(
    *,
    code: str,
    libraries: Mapping[str, str],
    values: Mapping[str, Any],
    sources: Mapping[str, Source],
) -> str:
    """The settings param: code, libraries, named values and the identity of each source."""
    return canonical(
        {
            "code": code,
            "libraries": dict(libraries),
            "values": dict(values),
            "sources": {name: dict(src.identity) for name, src in sources.items()},
        }
    )


def rule_flags(
    values: Mapping[str, Any],
    sources: Mapping[str, Source],
    speed: Mapping[str, Any],
) -> str:
    """Flags of the values, the sources' arguments and the speed knobs (in that order)."""
    args = {name: src.arg for name, src in sources.items()}
    return render_flags({**values, **args, **speed})
