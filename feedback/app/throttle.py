"""Login throttling: after a few failed logins, a name and a client address are refused for a while.

scrypt makes each guess slow, but not slow enough against a patient script. Failures are counted
per annotator name (however many addresses try it) and per client address (however many names it
tries), within a sliding window of ``window_s`` seconds. A key with ``max_failures`` failures in
the window is refused with 429 and ``Retry-After`` until its oldest failure leaves the window; the
refusal is decided before any hashing, so it costs the server nothing. A successful login clears
the name's failures (not the address's: one known password must not reset the count of an address
guessing others). Unknown names are counted exactly like known ones, so the refusal tells nothing
about which names exist.

The counts live in the server process (one process serves the app: ``rlhf feedback serve``); the
client address is the connection's, so behind a reverse proxy every client shares the proxy's
address and the per-name limit is the one that matters.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable

MAX_KEYS = 10_000  # past this many tracked keys, keys whose failures all left the window are dropped


class LoginThrottle:
    """Failed-login counts per name and per address (thread-safe: FastAPI runs endpoints in a thread pool)."""

    def __init__(
        self, max_failures: int = 5, window_s: float = 300.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def keys(name: str, address: str) -> tuple[str, str]:
        return f"name:{name.strip().casefold()}", f"address:{address}"

    def _recent(self, key: str, now: float) -> deque[float]:
        failures = self._failures.get(key, deque())
        while failures and failures[0] <= now - self.window_s:
            failures.popleft()
        return failures

    def retry_after(self, name: str, address: str) -> int | None:
        """Seconds until a login for ``name`` from ``address`` may be tried again, or None if it may now."""
        now = self.clock()
        waits = []
        with self._lock:
            for key in self.keys(name, address):
                failures = self._recent(key, now)
                if len(failures) >= self.max_failures:
                    waits.append(failures[-self.max_failures] + self.window_s - now)
        return max(1, math.ceil(max(waits))) if waits else None

    def failed(self, name: str, address: str) -> None:
        now = self.clock()
        with self._lock:
            if len(self._failures) >= MAX_KEYS:
                self._failures = {k: v for k, v in self._failures.items() if self._recent(k, now)}
            for key in self.keys(name, address):
                failures = self._recent(key, now)
                failures.append(now)
                self._failures[key] = failures

    def succeeded(self, name: str) -> None:
        with self._lock:
            self._failures.pop(self.keys(name, "")[0], None)
