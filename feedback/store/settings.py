"""Project settings (overlap, mode, lease, guidelines): stored as key/value rows over built-in defaults."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from feedback import schema as t
from feedback.enums import Mode
from feedback.store.common import MAX_TEXT, checked_text, member
from feedback.store.errors import Invalid
from feedback.store.views import Settings

DEFAULT_GUIDELINES = """\
**Read the prompt, then judge each response as its reader would.**

- Prefer responses that are *correct*, then *helpful and polite*, then *concise*.
- Thumbs up: you would be glad to receive this response. Thumbs down: you would not.
- Ranking: 1 is the best. Give equal ranks when two responses are equally good.
- If every response is poor, write a corrected response below.
"""
SETTINGS_DEFAULTS: dict[str, Any] = {
    "overlap": 1,  # annotators per item
    "mode": Mode.RANKING,  # what the annotation page asks
    "lease_minutes": 30,  # an item handed out and not answered within this is offered to others
    "guidelines": DEFAULT_GUIDELINES,
}


def read(c: Connection) -> Settings:
    stored = dict(c.execute(sa.select(t.settings.c.key, t.settings.c.value)).tuples().all())
    values = {**SETTINGS_DEFAULTS, **{k: v for k, v in stored.items() if k in SETTINGS_DEFAULTS}}
    values["mode"] = Mode(values["mode"])  # stored as its string
    return Settings(**values)


def update(c: Connection, changes: dict[str, Any]) -> Settings:
    """Change ``overlap``, ``mode``, ``lease_minutes`` or ``guidelines`` (``None`` leaves one as it is).

    Returns the settings now in force; :class:`Invalid` names a bad value (nothing is changed then).
    """
    changes = {k: v for k, v in changes.items() if v is not None}
    unknown = sorted(set(changes) - set(SETTINGS_DEFAULTS))
    if unknown:
        raise Invalid(f"unknown setting(s) {unknown}; known: {sorted(SETTINGS_DEFAULTS)}")
    for key in ("overlap", "lease_minutes"):
        if key in changes and (not isinstance(changes[key], int) or isinstance(changes[key], bool)):
            raise Invalid(f"{key}: expected a whole number, got {changes[key]!r}")
        if key in changes and not 1 <= changes[key] <= 10_000:
            raise Invalid(f"{key}: must be between 1 and 10000")
    if "mode" in changes:
        changes["mode"] = member(Mode, changes["mode"], "mode")
    if "guidelines" in changes:
        changes["guidelines"] = checked_text(str(changes["guidelines"]), "guidelines")[:MAX_TEXT]
    for key, value in changes.items():
        c.execute(sa.delete(t.settings).where(t.settings.c.key == key))
        c.execute(sa.insert(t.settings).values(key=key, value=value))
    return read(c)
