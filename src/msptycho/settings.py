"""Settings dataclasses from plain mappings (a config section): one rule for every stage."""

from __future__ import annotations

import dataclasses

from .io.datacube import InputError


def settings_from_mapping(cls, mapping: dict | None, source: str = "config"):
    """Build the dataclass ``cls`` from ``mapping``: an unknown key is an :class:`InputError`
    naming ``source`` and the expected keys; lists (YAML sequences) become tuples, nested too.
    Keys left out take the dataclass's defaults; values are checked by ``cls`` itself."""
    mapping = dict(mapping or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(mapping) - names
    if unknown:
        raise InputError(f"{source}: unknown key(s) {sorted(unknown)} for {cls.__name__}; "
                         f"expected some of {sorted(names)}.")

    def tup(v):
        return tuple(tup(x) for x in v) if isinstance(v, (list, tuple)) else v

    return cls(**{k: tup(v) for k, v in mapping.items()})
