"""The login limit: attempts counted in the database before the password is checked, per name, address and both.

A guess costs the server one scrypt (a few hundred ms), an attacker nothing, so failed logins are
limited within a sliding window of ``window_s`` seconds, per key:

* the name *from* an address (``per_pair``, 5): the usual lockout, and the only one a person who
  mistypes their own password meets. It locks that name from that address only: one address's wrong
  guesses do not lock anyone else's login.
* the address (``per_address``, 50): a higher ceiling for an address that tries many names.
* the name (``per_name``, 20): a ceiling for one name guessed from many addresses (an IPv6 client
  has as many addresses as it likes).

A key at its limit is refused with :class:`TooManyAttempts` (429 and ``Retry-After``: until its
oldest counted attempt leaves the window) before any hashing, so refusals cost the server nothing.
Names are keyed by :func:`feedback.store.names.key`, the form login compares (``ROOT`` is ``root``),
and unknown names are counted exactly like known ones, so the refusal tells nothing about which
names exist.

The attempt is *reserved* first: :func:`reserve` counts and writes it in one transaction that
concurrent logins of the same key wait for (:func:`feedback.store.common.serialise`), and only then
is the password checked. N simultaneous wrong logins therefore get at most ``per_pair`` 401s; the
rest are refused, as if they had come one after another. A successful login removes its own attempt
and clears the name's failures (not the address's: one known password must not reset the count of
an address guessing others). The counts live in the database, so they hold across server processes
and restarts.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from feedback import schema as t
from feedback.store.common import serialise, sha256
from feedback.store.errors import TooManyAttempts


@dataclass(frozen=True)
class LoginLimits:
    """How many failed logins a key may have within ``window_s`` seconds (see the module docstring)."""

    per_pair: int = 5
    per_address: int = 50
    per_name: int = 20
    window_s: float = 300.0
    clock: Callable[[], float] = field(default=time.time, compare=False)  # seconds since the epoch


@dataclass(frozen=True)
class Attempt:
    """A reserved login: its id and the hashed keys it was counted under."""

    id: str
    pair: str
    address: str
    name: str


def attempt_keys(name_key: str, address: str) -> tuple[str, str, str]:
    """The hashed keys of a login for a name key from an address: pair, address, name."""
    return sha256(f"pair:{address}\n{name_key}"), sha256(f"address:{address}"), sha256(f"name:{name_key}")


def reserve(c: Connection, limits: LoginLimits, name_key: str, address: str) -> Attempt:
    """Count a login attempt before its password is checked; :class:`TooManyAttempts` if a key is at its limit."""
    pair, by_address, by_name = attempt_keys(name_key, address)
    limit = {pair: limits.per_pair, by_address: limits.per_address, by_name: limits.per_name}
    _serialise(c, limit)
    now = limits.clock()
    cutoff = now - limits.window_s
    # Every key's attempts that left the window, but none another transaction is deleting: that one
    # removes them, and this one never waits for it (two cleanups in other orders could deadlock).
    old = sa.select(t.login_attempts.c.id).where(t.login_attempts.c.at <= cutoff).with_for_update(skip_locked=True)
    c.execute(sa.delete(t.login_attempts).where(t.login_attempts.c.id.in_(old)))
    waits = []
    for key, most in limit.items():
        recent = c.execute(
            sa.select(t.login_attempts.c.at)
            .where(t.login_attempts.c.key == key, t.login_attempts.c.at > cutoff)
            .order_by(t.login_attempts.c.at.desc())
            .limit(most)
        ).scalars()
        counted = list(recent)
        if len(counted) >= most:
            waits.append(counted[-1] + limits.window_s - now)  # when the oldest of the last `most` leaves
    if waits:
        raise TooManyAttempts(max(1, math.ceil(max(waits))))
    attempt = Attempt(uuid.uuid4().hex, pair, by_address, by_name)
    c.execute(sa.insert(t.login_attempts), [{"key": key, "attempt": attempt.id, "at": now} for key in limit])
    return attempt


def _serialise(c: Connection, keys: Iterable[str]) -> None:
    """Logins of the same keys one after another (:func:`.common.serialise`), locked in one order for everyone:
    two logins never hold one lock each while waiting for the other's."""
    for key in sorted(keys):
        serialise(c, f"login:{key}")


def succeeded(c: Connection, attempt: Attempt) -> None:
    """A reserved login succeeded: it is not a failure, and the name's failures (from any address) are cleared."""
    _serialise(c, [attempt.pair, attempt.address, attempt.name])
    attempts = t.login_attempts
    c.execute(
        sa.delete(attempts).where(
            sa.or_(attempts.c.key.in_([attempt.pair, attempt.name]), attempts.c.attempt == attempt.id)
        )
    )
