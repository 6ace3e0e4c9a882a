"""Chapter parameters and profiles: what a chapter computes with, and how to override it.

A chapter's first code cell is tagged ``parameters`` and holds ``profile`` plus plain values
(``None`` = "take the profile's value"); the next cell resolves them with
:func:`resolve_profile`. Profiles: 'smoke' (tests), 'quick' (the rendered book), 'paper'.
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass, field

from fatlib.book.display import fmt, html_table

PROFILES = ("smoke", "quick", "paper")
PROFILE_ENV = "FATLIB_PROFILE"
DEFAULT_PROFILE = "quick"


@dataclass
class Params:
    """A chapter's resolved parameters: the profile's values with the caller's overrides.

    Read them as attributes (``P.epochs``) or items (``P["epochs"]``).
    """

    profile: str
    values: dict
    defaults: dict = field(repr=False)

    def __getattr__(self, name):
        values = self.__dict__.get("values", {})
        if name in values:
            return values[name]
        raise AttributeError(f"no parameter {name!r}; parameters are {sorted(values)}")

    def __getitem__(self, name):
        return self.values[name]

    @property
    def overridden(self) -> dict:
        """name -> (value, profile's value) for values that differ from the profile's."""
        return {k: (v, self.defaults[k]) for k, v in self.values.items() if v != self.defaults[k]}

    def _repr_html_(self):
        rows = [[k, fmt(v), f"overridden (profile: {fmt(self.defaults[k])})"
                 if k in self.overridden else ""] for k, v in self.values.items()]
        return (f'<div class="fatlib-params"><strong>Parameters, profile {self.profile}</strong>'
                + html_table(["parameter", "value", ""], rows) + "</div>")


def resolve_profile(profiles: dict, profile: str, overrides: dict | None = None) -> Params:
    """The profile's values, where each value given (not None) in ``overrides`` wins.

    Pass ``overrides=locals()`` from the chapter: the parameters cell sets each value to
    None ("take the profile's") and papermill's ``-p epochs 15`` sets it to 15.
    Args:
        profiles: profile name -> dict of values; every profile has the same keys.
        profile: 'smoke', 'quick' or 'paper' (any key of ``profiles``).
        overrides: name -> value; names that are not profile keys are ignored.
    Returns:
        Params with .profile, .values and .overridden.
    """
    if profile not in profiles:
        raise ValueError(f"unknown profile {profile!r}; this chapter has {sorted(profiles)} "
                         f"(set it with -p profile NAME or ${PROFILE_ENV})")
    keys = set(profiles[profile])
    for name, values in profiles.items():
        if set(values) != keys:
            raise ValueError(f"profile {name!r} has keys {sorted(values)} but {profile!r} has "
                             f"{sorted(keys)}: give every profile the same parameters")
    defaults = dict(profiles[profile])
    values = dict(defaults)
    for name, value in (overrides or {}).items():
        if name in values and value is not None:
            values[name] = value
    return Params(profile, values, defaults)


def env_profile(default: str = DEFAULT_PROFILE) -> str:
    """The profile named by ``$FATLIB_PROFILE`` (tests set 'smoke'), else ``default``."""
    return os.environ.get(PROFILE_ENV, default)


def parse_value(text: str):
    """A command-line parameter value: a Python literal (15, 0.3, 'a', [1, 2], None, True)
    or, failing that, the text itself; 'true'/'false'/'none' in any case also work."""
    lowered = text.strip().lower()
    if lowered in ("true", "false", "none"):
        return {"true": True, "false": False, "none": None}[lowered]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text

