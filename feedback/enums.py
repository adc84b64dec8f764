"""The closed sets of words the feedback store and app use: roles, modes, assignment states, token kinds.

Each is a ``StrEnum``, so a member is the string stored in the database and sent in JSON (the
values are the ones the tables' CHECK constraints and the first migration hold: changing one
needs a migration). :mod:`feedback.schema` builds those constraints from these classes.
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    """What an annotator may do: admins also import, monitor, manage annotators and export."""

    ADMIN = "admin"
    ANNOTATOR = "annotator"


class Mode(StrEnum):
    """What the annotation page asks: a ranking of every response, or thumbs per response."""

    RANKING = "ranking"
    THUMBS = "thumbs"


class AssignmentStatus(StrEnum):
    """Where an item stands for one annotator: handed out (a lease), answered, or discarded."""

    ASSIGNED = "assigned"
    SUBMITTED = "submitted"
    SKIPPED = "skipped"


class TokenKind(StrEnum):
    """An API token lives until replaced; a session token (from a password login) expires."""

    API = "api"
    SESSION = "session"
