"""Annotators and their credentials: names, roles, passwords (scrypt), API and session tokens (stored as hashes)."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import math
import secrets
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from feedback import schema as t
from feedback.enums import Role, TokenKind
from feedback.store import names
from feedback.store.common import aware, checked_text, member, serialise, sha256, utcnow
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

    @property
    def memory(self) -> int:
        """Bytes scrypt allocates for one hash at this cost (128 MiB at the default)."""
        return 128 * self.r * (self.n + self.p + 2)


COST = ScryptCost()  # tests lower it (tests/feedback_fixtures.py): the hash is slow by design


class MemoryBudget:
    """At most ``limit`` bytes of scrypt memory in use at once, in this process: further hashes wait their turn.

    Each hash allocates its cost's memory (128 MiB at the default) for its whole duration, so without
    a bound 16 simultaneous logins took a server from 210 MB to 2.2 GB. Every hash goes through here,
    an unknown name's decoy included, and waits in arrival order (first come, first hashed), so known
    and unknown names keep the same cost under load too. A hash larger than the whole budget (an old
    hash at a higher cost) runs alone. On a few cores more hashes at once would not finish sooner
    anyway: each keeps one core busy.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0  # the most ever in use at once (tests read it)
        self._queue: deque[object] = deque()
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def hold(self, amount: int) -> Iterator[None]:
        ticket = object()
        with self._changed:
            self._queue.append(ticket)
            self._changed.wait_for(
                lambda: self._queue[0] is ticket and (self.used == 0 or self.used + amount <= self.limit)
            )
            self._queue.popleft()
            self.used += amount
            self.peak = max(self.peak, self.used)
            self._changed.notify_all()  # the next in line may fit as well
        try:
            yield
        finally:
            with self._changed:
                self.used -= amount
                self._changed.notify_all()


# 4 hashes at the default cost at once (513 MiB: each takes a little over 128 MiB); `serve --hash-memory-mib`
HASH_MEMORY_MIB = math.ceil(4 * COST.memory / (1 << 20))
HASHING = MemoryBudget(HASH_MEMORY_MIB << 20)


def _scrypt(password: str, salt: bytes, cost: ScryptCost) -> bytes:
    with HASHING.hold(cost.memory):
        return hashlib.scrypt(
            password.encode("utf-8"), salt=salt, n=cost.n, r=cost.r, p=cost.p, maxmem=cost.memory + (1 << 20), dklen=32
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


def _decoy(cost: ScryptCost) -> str:
    """A stored hash no password matches, at ``cost``: unknown names verify against it, so they cost one hash too.

    Its digest is random rather than computed: checking it costs the one scrypt a known name's costs,
    and no password's digest equals 32 random bytes. Nothing is computed ahead, so the first unknown
    name costs what every later one does.
    """
    return f"scrypt${cost.n}${cost.r}${cost.p}${secrets.token_hex(16)}${secrets.token_hex(32)}"


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


def new_name(c: Connection, name: str, renamed: int | None = None) -> str:
    """``name`` as a new name is stored (:func:`feedback.store.names.display`), if people can tell it apart.

    :class:`Invalid` for a name with a refused character (:func:`.names.problem`); :class:`Conflict` when
    it has the key (``ROOT`` for ``root``) or the look (``rооt`` with Cyrillic o) of an existing name,
    other than that of the annotator ``renamed``. The check holds under concurrency: adds and
    renames wait for each other (:func:`.common.serialise`), and the key is unique in the database.
    """
    shown = names.display(checked_text(name, "name"))
    problem = names.problem(shown)
    if problem is not None:
        raise Invalid(f"name {shown!r}: {problem}; a name must be visible text, on one line")
    serialise(c, "annotator names")
    existing = dict(c.execute(sa.select(t.annotators.c.id, t.annotators.c.name)).tuples().all())
    existing.pop(renamed, None)
    other = names.confusable(shown, existing)
    if other is None:
        return shown
    if names.key(existing[other]) == names.key(shown):
        same = "" if existing[other] == shown else f" ({shown!r} is the same name to a login)"
        raise Conflict(f"an annotator named {existing[other]!r} exists already{same}")
    raise Conflict(
        f"name {shown!r} looks like the existing annotator {existing[other]!r}; choose a name people can tell apart"
    )


def add_annotator(c: Connection, name: str, role: str, password_hash: str | None) -> str:
    """Create an annotator (``password_hash`` from :func:`new_password_hash`); returns a new API token."""
    role = member(Role, role, "role")
    name = new_name(c, name)
    annotator_id = c.execute(
        sa.insert(t.annotators)
        .values(
            name=name,
            name_key=names.key(name),
            role=role,
            password_hash=password_hash,
            active=True,
            created_at=utcnow(),
        )
        .returning(t.annotators.c.id)
    ).scalar_one()
    return issue_token(c, annotator_id, TokenKind.API)


def rename(c: Connection, name: str, to: str) -> str:
    """Give an annotator a new name (checked as a new one is); returns it as stored. Answers and tokens stay."""
    row = _row(c, name)
    shown = new_name(c, to, renamed=row.id)
    c.execute(sa.update(t.annotators).where(t.annotators.c.id == row.id).values(name=shown, name_key=names.key(shown)))
    return shown


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
    """The row of the annotator ``name`` names, or None (a login must not tell unknown names apart).

    Names are compared by their key (``ROOT`` and ``ｒｏｏｔ`` find ``root``). A name stored exactly as
    given is found first: an account older than the key whose key another one holds (the 0004
    migration reports them) is still reachable by its exact name, for a login or to rename it.
    """
    wanted = checked_text(name, "name").strip()
    rows = c.execute(
        sa.select(t.annotators).where(
            sa.or_(t.annotators.c.name == wanted, t.annotators.c.name_key == names.key(wanted))
        )
    ).all()
    exact = [row for row in rows if row.name == wanted]
    return next(iter(exact or rows), None)


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
