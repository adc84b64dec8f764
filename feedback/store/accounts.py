"""Annotators and their credentials: roles, passwords (scrypt), API and session tokens (stored as hashes)."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from feedback import schema as t
from feedback.enums import Role, TokenKind
from feedback.store.common import aware, checked_text, member, sha256, utcnow
from feedback.store.errors import Conflict, Invalid, NotFound, Unauthorized
from feedback.store.views import Annotator

SESSION_HOURS = 12
MIN_PASSWORD = 8  # characters, wherever a password is set (API, CLI, Python)


@dataclass(frozen=True)
class ScryptCost:
    """scrypt's work factors. The default is OWASP's recommendation (Password Storage Cheat Sheet):
    N=2^17, r=8, p=1, about 128 MiB and a few hundred milliseconds per hash."""

    n: int = 2**17
    r: int = 8
    p: int = 1


COST = ScryptCost()  # tests lower it (tests/feedback_fixtures.py): the hash is slow by design


def _scrypt(password: str, salt: bytes, cost: ScryptCost) -> bytes:
    memory = 128 * cost.r * (cost.n + cost.p + 2)  # what scrypt allocates; its default cap is 32 MiB
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=cost.n, r=cost.r, p=cost.p, maxmem=memory + (1 << 20), dklen=32
    )


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """scrypt at :data:`COST` (memory-hard, in the standard library), with its parameters in the result."""
    salt = salt or secrets.token_bytes(16)
    cost = COST
    return f"scrypt${cost.n}${cost.r}${cost.p}${salt.hex()}${_scrypt(password, salt, cost).hex()}"


def _stored_cost(stored: str) -> ScryptCost | None:
    try:
        _, n, r, p, _, _ = stored.split("$")
        return ScryptCost(int(n), int(r), int(p))
    except ValueError:
        return None


def verify_password(password: str, stored: str) -> bool:
    cost = _stored_cost(stored)
    if cost is None:
        return False
    salt, digest = stored.split("$")[4:]
    try:
        computed = _scrypt(password, bytes.fromhex(salt), cost)
    except ValueError:
        return False
    return hmac.compare_digest(computed.hex(), digest)


@functools.cache
def _decoy(cost: ScryptCost) -> str:
    """A hash no password matches, at ``cost``: unknown names verify against it, so they cost one hash too."""
    return hash_password(secrets.token_urlsafe(16))


def new_password_hash(password: str) -> str:
    """The hash to store for a new password, checked first (:data:`MIN_PASSWORD`, encodable text).

    Callers hash before opening the write transaction: scrypt takes a while, and no lock is held meanwhile.
    """
    checked_text(password, "password")
    if len(password) < MIN_PASSWORD:
        raise Invalid(f"password: at least {MIN_PASSWORD} characters")
    return hash_password(password)


def _annotator(row: Any) -> Annotator:
    return Annotator(row.id, row.name, Role(row.role), row.active)


def add_annotator(c: Connection, name: str, role: str, password_hash: str | None) -> str:
    """Create an annotator (``password_hash`` from :func:`new_password_hash`); returns a new API token."""
    name = checked_text(name, "name").strip()
    if not name or len(name) > 100:
        raise Invalid("name: 1 to 100 characters")
    role = member(Role, role, "role")
    if c.execute(sa.select(t.annotators.c.id).where(t.annotators.c.name == name)).scalar() is not None:
        raise Conflict(f"an annotator named {name!r} exists already")
    annotator_id = c.execute(
        sa.insert(t.annotators)
        .values(
            name=name,
            role=role,
            password_hash=password_hash,
            active=True,
            created_at=utcnow(),
        )
        .returning(t.annotators.c.id)
    ).scalar_one()
    return issue_token(c, annotator_id, TokenKind.API)


def issue_token(c: Connection, annotator_id: int, kind: TokenKind) -> str:
    token = f"rlhf_{secrets.token_urlsafe(32)}"
    expires = utcnow() + dt.timedelta(hours=SESSION_HOURS) if kind == TokenKind.SESSION else None
    c.execute(
        sa.insert(t.tokens).values(
            token_hash=sha256(token), annotator_id=annotator_id, kind=kind, created_at=utcnow(), expires_at=expires
        )
    )
    return token


def _row(c: Connection, name: str) -> Any:
    row = find(c, name)
    if row is None:
        raise NotFound(f"no annotator named {name!r}")
    return row


def annotator(c: Connection, name: str) -> Annotator:
    return _annotator(_row(c, name))


def annotators(c: Connection) -> list[Annotator]:
    return [_annotator(r) for r in c.execute(sa.select(t.annotators).order_by(t.annotators.c.id))]


def new_token(c: Connection, name: str, *, revoke_old: bool) -> str:
    """A fresh API token for an annotator (with ``revoke_old`` the old API tokens stop working)."""
    row = _row(c, name)
    if revoke_old:
        c.execute(sa.delete(t.tokens).where(t.tokens.c.annotator_id == row.id, t.tokens.c.kind == TokenKind.API))
    end_sessions(c, row.id)
    return issue_token(c, row.id, TokenKind.API)


def end_sessions(c: Connection, annotator_id: int) -> None:
    """Log an annotator out everywhere: when their credentials change, a session opened with the old ones ends."""
    c.execute(sa.delete(t.tokens).where(t.tokens.c.annotator_id == annotator_id, t.tokens.c.kind == TokenKind.SESSION))


def set_password(c: Connection, name: str, password_hash: str) -> None:
    """Store a new password's hash (from :func:`new_password_hash`); every session of theirs ends."""
    row = _row(c, name)
    c.execute(sa.update(t.annotators).where(t.annotators.c.id == row.id).values(password_hash=password_hash))
    end_sessions(c, row.id)


def set_active(c: Connection, name: str, active: bool) -> None:
    """Deactivate (or reactivate) an annotator: their tokens stop working and their sessions end; answers stay."""
    row = _row(c, name)
    c.execute(sa.update(t.annotators).where(t.annotators.c.id == row.id).values(active=active))
    if not active:
        end_sessions(c, row.id)


def authenticate(c: Connection, token: str) -> Annotator | None:
    """The active annotator a token (API or session) belongs to, or None."""
    if not token:
        return None
    checked_text(token, "token")
    row = c.execute(
        sa.select(t.annotators, t.tokens.c.expires_at)
        .join(t.tokens, t.tokens.c.annotator_id == t.annotators.c.id)
        .where(t.tokens.c.token_hash == sha256(token))
    ).first()
    if row is None or not row.active or (row.expires_at is not None and aware(row.expires_at) < utcnow()):
        return None
    return _annotator(row)


def find(c: Connection, name: str) -> Any:
    """The annotator's row, or None (a login must not tell unknown names apart)."""
    checked_text(name, "name")
    return c.execute(sa.select(t.annotators).where(t.annotators.c.name == name)).first()


def check_login(row: Any, password: str) -> tuple[Annotator, str | None]:
    """The annotator of a :func:`find` row if the password is theirs, and a new hash when theirs is outdated.

    Every failure has the same message and the same cost: exactly one scrypt at the cost of the
    hash checked (an unknown name, or one without a password, is checked against a decoy hash
    at the current cost), so the response time does not tell which names exist. A hash made with
    older parameters is replaced on a successful login (the caller stores it), the only moment
    the password is known.
    """
    checked_text(password, "password")
    stored = row.password_hash if row is not None else None
    valid = verify_password(password, stored or _decoy(COST))
    if row is None or not stored or not valid or not row.active:
        raise Unauthorized("wrong name or password")
    outdated = _stored_cost(stored) != COST
    return _annotator(row), hash_password(password) if outdated else None


def start_session(c: Connection, annotator_id: int, rehashed: str | None = None, replaces: str | None = None) -> str:
    """A session token (expired ones are cleared on the way); ``rehashed`` replaces the hash ``replaces``.

    The replacement applies only while the stored hash is still the one checked: a password
    changed meanwhile is not undone.
    """
    c.execute(sa.delete(t.tokens).where(t.tokens.c.expires_at < utcnow()))
    if rehashed is not None:
        c.execute(
            sa.update(t.annotators)
            .where(t.annotators.c.id == annotator_id, t.annotators.c.password_hash == replaces)
            .values(password_hash=rehashed)
        )
    return issue_token(c, annotator_id, TokenKind.SESSION)


def logout(c: Connection, token: str) -> None:
    """End the session of a session token. An API token is refused: logging out cannot end it.

    An API token lives until rotated; "logged out" while it still works would be a lie, and
    revoking it here would break every script that uses it without a word to its owner.
    """
    kind = c.execute(sa.select(t.tokens.c.kind).where(t.tokens.c.token_hash == sha256(checked_text(token, "token"))))
    if kind.scalar() == TokenKind.API:
        raise Invalid(
            "this is an API token, not a session: it stays valid until it is rotated "
            "(rlhf feedback annotators token NAME); log out ends sessions from /api/login"
        )
    c.execute(sa.delete(t.tokens).where(t.tokens.c.token_hash == sha256(token), t.tokens.c.kind == TokenKind.SESSION))
