"""Annotators and their credentials: roles, passwords (scrypt), API and session tokens (stored as hashes)."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from feedback import schema as t
from feedback.enums import Role, TokenKind
from feedback.store.common import aware, member, sha256, utcnow
from feedback.store.errors import Conflict, Invalid, NotFound, Unauthorized
from feedback.store.views import Annotator

SESSION_HOURS = 12


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """scrypt (n=2^14, r=8, p=1): memory-hard, in the standard library."""
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=2**14, r=8, p=1, dklen=32)
    return f"scrypt$16384$8$1${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        _, n, r, p, salt, digest = stored.split("$")
        computed = hashlib.scrypt(
            password.encode("utf-8"), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=32
        )
    except ValueError:
        return False
    return hmac.compare_digest(computed.hex(), digest)


def _annotator(row: Any) -> Annotator:
    return Annotator(row.id, row.name, Role(row.role), row.active)


def add_annotator(c: Connection, name: str, role: str, password: str | None) -> str:
    """Create an annotator; returns a new API token (only its hash is kept: show it once)."""
    name = name.strip()
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
            password_hash=hash_password(password) if password else None,
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
    return issue_token(c, row.id, TokenKind.API)


def set_password(c: Connection, name: str, password: str) -> None:
    if len(password) < 8:
        raise Invalid("password: at least 8 characters")
    row = _row(c, name)
    c.execute(sa.update(t.annotators).where(t.annotators.c.id == row.id).values(password_hash=hash_password(password)))


def set_active(c: Connection, name: str, active: bool) -> None:
    """Deactivate (or reactivate) an annotator: their tokens stop working, their answers stay."""
    row = _row(c, name)
    c.execute(sa.update(t.annotators).where(t.annotators.c.id == row.id).values(active=active))


def authenticate(c: Connection, token: str) -> Annotator | None:
    """The active annotator a token (API or session) belongs to, or None."""
    if not token:
        return None
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
    return c.execute(sa.select(t.annotators).where(t.annotators.c.name == name)).first()


def check_login(row: Any, password: str) -> Annotator:
    """The annotator of a :func:`find` row if the password is theirs; the same message for every failure."""
    stored = row.password_hash if row is not None else None
    # Hash even for unknown names, so the response time does not tell which names exist.
    valid = verify_password(password, stored or hash_password("", salt=b"0" * 16))
    if row is None or not stored or not valid or not row.active:
        raise Unauthorized("wrong name or password")
    return _annotator(row)


def start_session(c: Connection, annotator_id: int) -> str:
    """A session token (expired ones are cleared on the way)."""
    c.execute(sa.delete(t.tokens).where(t.tokens.c.expires_at < utcnow()))
    return issue_token(c, annotator_id, TokenKind.SESSION)


def logout(c: Connection, token: str) -> None:
    c.execute(sa.delete(t.tokens).where(t.tokens.c.token_hash == sha256(token), t.tokens.c.kind == TokenKind.SESSION))
