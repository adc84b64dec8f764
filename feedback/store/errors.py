"""What the store refuses: :class:`StoreError` subclasses whose message is written for the person who sent the request.

The web app maps each class to a 4xx status (:data:`feedback.app.errors.STATUS`).
"""

from __future__ import annotations


class StoreError(Exception):
    """A request the store refuses; the message says why, for the person who sent it."""


class NotFound(StoreError):
    pass


class Conflict(StoreError):
    pass


class Invalid(StoreError):
    pass


class Forbidden(StoreError):
    pass


class Unauthorized(StoreError):
    pass


class TooManyAttempts(StoreError):
    """Too many failed logins lately for this name or address (429); ``retry_after`` is in seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many failed logins; try again in {retry_after} seconds")
        self.retry_after = retry_after
