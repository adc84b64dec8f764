"""Load and crash test of the feedback server: concurrent annotators over loopback, then an audit.

    python benchmarks/bench_feedback.py                                   # SQLite and PostgreSQL, 32 x 50
    python benchmarks/bench_feedback.py --backends sqlite --crash         # SIGKILL the server mid-load
    python benchmarks/bench_feedback.py --postgres postgresql://postgres@127.0.0.1:5432/test
    python benchmarks/bench_feedback.py --logins 0                        # without the login phase

It starts the real server (``python -m rlhf feedback serve``, uvicorn, 127.0.0.1 only) on a fresh
database, then runs ``--clients`` annotator clients at once, each answering ``--ratings`` items the
way the annotation page does: ``GET /api/items/next``, then ``POST /api/answers`` with a
client-chosen id, resent with the same id after a network error or a 503 until it is
acknowledged. With ``--crash`` the server is killed with SIGKILL once a third of the answers are
acknowledged and started again; clients keep retrying. Then the store is audited record by
record, not by counting: every acknowledged answer must be in the store under its id, by its
annotator, on its item, with the ranking that was sent (``lost`` and ``mismatched`` must be 0); no
annotator may have two answers to one item and no answer may be stored that no request made
(``duplicates`` must be 0); no item may have more answers than its overlap, and every answer must
have all its ranks.

Then ``--logins`` logins are sent at once (default 32: half for annotators with passwords, right or
wrong, half for names that do not exist), at scrypt's real cost in the server: their statuses and
latencies; then wrong logins one at a time, a known name and an unknown one in turn, whose medians
must match (response time must not tell which names exist). The server's peak resident memory
(``VmHWM``, Linux) is reported after the answers and over the whole run: password hashing is the
server's largest allocation (128 MiB per hash), so the login burst is what sets it.

Everything is bounded: the number of requests (clients x ratings, a few retries each) and the
time (``--deadline`` seconds). Latency is per acknowledged POST (the attempt that got the answer).
``--server-args`` are passed to ``rlhf feedback serve`` as they are.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import sqlalchemy as sa

from feedback.store import NotFound, Store, dense_ranks, normalize_url
from rlhf.tiny import corpus, task

OVERLAP = 2


@dataclass
class Result:
    backend: str
    clients: int
    ratings: int  # attempted: clients x ratings each
    acknowledged: int = 0
    stored: int = 0
    duplicates: int = 0
    lost: int = 0
    mismatched: int = 0  # stored under an acknowledged id, but not what that request sent
    overfilled: int = 0
    incomplete: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    crashed: bool = False
    peak_rss_mb: float = 0.0  # the server's, over the run (the most of each process when it was killed)
    load_peak_mb: float = 0.0  # the same, after the answers and before the logins
    logins: Logins | None = None

    @property
    def ok(self) -> bool:
        refused = set(self.logins.statuses if self.logins else {}) - {200, 401}  # a 429 or a 5xx in the logins too
        return not (self.lost or self.mismatched or self.duplicates or self.overfilled or self.incomplete or refused)

    def row(self) -> list[str]:
        p50, p99 = percentile(self.latencies_ms, 0.5), percentile(self.latencies_ms, 0.99)
        logins = self.logins or Logins()
        statuses = " ".join(f"{code}x{count}" for code, count in sorted(logins.statuses.items())) or "-"
        return [
            self.backend + (" +kill" if self.crashed else ""),
            str(self.clients),
            str(self.ratings),
            str(self.acknowledged),
            str(self.stored),
            str(self.duplicates),
            str(self.lost),
            str(self.mismatched),
            f"{self.acknowledged / self.seconds:.1f}" if self.seconds else "n/a",
            f"{p50:.1f}",
            f"{p99:.1f}",
            f"{self.load_peak_mb:.0f}",
            f"{self.peak_rss_mb:.0f}",
            statuses,
            f"{percentile(logins.burst_ms, 0.5):.0f}",
            f"{percentile(logins.burst_ms, 0.99):.0f}",
            f"{percentile(logins.one_at_a_time_ms['known'], 0.5):.0f}",
            f"{percentile(logins.one_at_a_time_ms['unknown'], 0.5):.0f}",
        ]


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile (the median for 0.5), NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return (
        statistics.median(ordered)
        if share == 0.5
        else ordered[min(len(ordered) - 1, math.ceil(share * len(ordered)) - 1)]
    )


HEADER = [
    "backend",
    "clients",
    "ratings",
    "acknowledged",
    "stored",
    "duplicates",
    "lost",
    "mismatched",
    "ratings/s",
    "p50 ms",
    "p99 ms",
    "peak MiB load",
    "peak MiB +logins",
    "logins",
    "login p50 ms",
    "login p99 ms",
    "known ms",
    "unknown ms",
]


def table(results: list[Result]) -> str:
    rows = [HEADER, *(r.row() for r in results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows)


# ----------------------------------------------------------------------------------------------
# Set-up


def items(n: int, seed: int = 0) -> list[dict]:
    """Tiny-task questions with four answers in different styles (distinct texts)."""
    rng = random.Random(seed)
    facts = task.all_facts()
    rows = []
    for i in range(n):
        fact = facts[i % len(facts)]
        question = f"{task.question_text(fact, rng.choice(task.templates_for(fact)))} (#{i})"
        texts = list(dict.fromkeys(corpus.STYLES[s](fact, rng) for s in ("helpful", "terse", "rude", "off_topic")))
        rows.append({"prompt": question, "candidates": texts})
    return rows


def prepare(url: str, clients: int, ratings: int, passwords: int = 0) -> list[str]:
    """A migrated store with enough items for everyone (overlap 2) and one token per client; the first
    ``passwords`` annotators get the password :func:`password` gives them (for the login phase)."""
    store = Store.create(url)
    store.update_settings(overlap=OVERLAP)
    store.import_items(items(math.ceil(clients * ratings / OVERLAP) + clients))
    names = [f"annotator-{i:03d}" for i in range(max(clients, passwords))]
    tokens = [store.add_annotator(name) for name in names]
    for name in names[:passwords]:
        store.set_password(name, password(name))
    store.close()
    return tokens[:clients]


def password(name: str) -> str:
    return f"password of {name}"


def postgres_database(admin_url: str, name: str, create: bool = True) -> str:
    """Create (or drop) a database next to the one ``admin_url`` names; returns its URL."""
    engine = sa.create_engine(normalize_url(admin_url), isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        if create:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return sa.make_url(normalize_url(admin_url)).set(database=name).render_as_string(hide_password=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """The real server in a subprocess (``python -m rlhf feedback serve``), on 127.0.0.1."""

    def __init__(self, url: str, port: int, log: Path, args: list[str] | None = None) -> None:
        self.url, self.port, self.log, self.args = url, port, log, args or []
        self.process: subprocess.Popen | None = None
        self.peak_rss_mb = 0.0  # the most any of its processes held (VmHWM), read before each stops

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0) -> None:
        command = [sys.executable, "-m", "rlhf", "feedback", "serve", "--db", self.url, "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--log-level", "warning", "--no-sync", *self.args]
        with self.log.open("a") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}; see {self.log}")
            try:
                if httpx.get(self.base + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not answer within {timeout_s}s; see {self.log}")

    def record_peak(self) -> float:
        """The process's peak resident memory so far (Linux ``VmHWM``), kept if it is the largest yet."""
        assert self.process is not None
        status = Path(f"/proc/{self.process.pid}/status")
        lines = status.read_text().splitlines() if status.exists() else []
        peak_kb = next((int(line.split()[1]) for line in lines if line.startswith("VmHWM:")), 0)
        self.peak_rss_mb = max(self.peak_rss_mb, peak_kb / 1024)
        return self.peak_rss_mb

    def kill(self) -> None:
        assert self.process is not None
        self.record_peak()
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.record_peak()
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


# ----------------------------------------------------------------------------------------------
# Clients


@dataclass(frozen=True)
class Sent:
    """An acknowledged answer as the client sent it: what the audit looks for in the store."""

    token: str
    prompt_id: int
    ranks: dict[int, int]


class Load:
    def __init__(self, base: str, deadline: float) -> None:
        self.base = base
        self.deadline = deadline
        self.acked: dict[str, Sent] = {}  # client id -> the answer acknowledged under it
        self.latencies_ms: list[float] = []
        self.errors: list[str] = []

    async def _request(self, client: httpx.AsyncClient, method: str, path: str, **kwargs) -> httpx.Response:
        """Retry network errors and 503s until the deadline (the same body, so the same client id)."""
        for attempt in range(10_000):
            if time.monotonic() > self.deadline:
                raise TimeoutError(f"{method} {path}: deadline passed")
            started = time.perf_counter()
            try:
                response = await client.request(method, self.base + path, **kwargs)
            except httpx.TransportError:
                await asyncio.sleep(min(1.0, 0.05 * 2**attempt))
                continue
            if response.status_code == 503:
                await asyncio.sleep(0.1)
                continue
            response.elapsed_ms = (time.perf_counter() - started) * 1000  # type: ignore[attr-defined]
            return response
        raise RuntimeError("unreachable")

    async def annotator(self, token: str, ratings: int) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(headers=headers, timeout=30) as client:
            for _ in range(ratings):
                item = (await self._request(client, "GET", "/api/items/next")).json()["item"]
                if item is None:
                    self.errors.append("queue empty")
                    return
                ranks = list(range(1, len(item["candidates"]) + 1))
                random.shuffle(ranks)
                body = {
                    "client_id": uuid.uuid4().hex,
                    "prompt_id": item["prompt_id"],
                    "ranking": [
                        {"candidate_id": c["id"], "rank": r} for c, r in zip(item["candidates"], ranks, strict=True)
                    ],
                }
                response = await self._request(client, "POST", "/api/answers", json=body)
                if response.status_code in (200, 201):
                    ranks = {r["candidate_id"]: r["rank"] for r in body["ranking"]}
                    self.acked[body["client_id"]] = Sent(token, item["prompt_id"], ranks)
                    self.latencies_ms.append(response.elapsed_ms)  # type: ignore[attr-defined]
                else:
                    self.errors.append(f"{response.status_code} {response.text[:200]}")


@dataclass
class Logins:
    """The login phase: a burst at once (statuses, latencies), then one login at a time (known vs unknown)."""

    statuses: dict[int, int] = field(default_factory=dict)  # status code -> logins of the burst
    burst_ms: list[float] = field(default_factory=list)
    one_at_a_time_ms: dict[str, list[float]] = field(default_factory=lambda: {"known": [], "unknown": []})


async def login_phase(base: str, known: int, unknown: int, one_at_a_time: int = 6) -> Logins:
    """``known + unknown`` logins sent at once, annotators with their passwords (every other one with a wrong
    one) interleaved with names that do not exist; then ``one_at_a_time`` wrong logins of each kind in turn,
    with nothing else running, so their times compare the two kinds and not their places in the queue."""
    result = Logins()

    async def login(client: httpx.AsyncClient, name: str, secret: str) -> float:
        started = time.perf_counter()
        response = await client.post(base + "/api/login", json={"name": name, "password": secret})
        result.statuses[response.status_code] = result.statuses.get(response.status_code, 0) + 1
        return (time.perf_counter() - started) * 1000

    known_ones = [
        (f"annotator-{i:03d}", password(f"annotator-{i:03d}") if i % 2 == 0 else "wrong") for i in range(known)
    ]
    unknown_ones = [(f"nobody-{i:03d}", "wrong") for i in range(unknown)]
    sent = [one for pair in itertools.zip_longest(known_ones, unknown_ones) for one in pair if one is not None]
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=known + unknown)) as client:
        result.burst_ms = list(await asyncio.gather(*(login(client, *one) for one in sent)))
        statuses = dict(result.statuses)
        for i in range(one_at_a_time):
            result.one_at_a_time_ms["known"].append(await login(client, f"annotator-{i % max(known, 1):03d}", "wrong"))
            result.one_at_a_time_ms["unknown"].append(await login(client, f"someone-{i:03d}", "wrong"))
        result.statuses = statuses  # the burst's: one at a time, every login is wrong by design
    return result


async def _drive(server: Server, tokens: list[str], ratings: int, crash: bool, deadline_s: float) -> Load:
    load = Load(server.base, time.monotonic() + deadline_s)
    tasks = [asyncio.create_task(load.annotator(token, ratings)) for token in tokens]
    if crash:
        target = len(tokens) * ratings // 3
        while len(load.acked) < target and not all(t.done() for t in tasks):
            await asyncio.sleep(0.01)
        await asyncio.to_thread(server.kill)  # mid-load: requests are in flight
        await asyncio.to_thread(server.start)
    await asyncio.gather(*tasks)
    return load


def audit(url: str, acked: Mapping[str, Sent], result: Result) -> None:
    """Exactly once, checked record by record against the store (counting ids alone proves little:
    ids are the primary key, so they can never repeat, and an id says nothing about its content).

    Each acknowledged id is looked up as its annotator's answer: missing is ``lost``; on another
    item or with another ranking than was sent is ``mismatched``. Stored answers no request was
    acknowledged for, and a second answer by one annotator to one item, are ``duplicates``.
    """
    store = Store(url)
    try:
        annotator_ids: dict[str, int] = {}
        for client_id, sent in acked.items():
            if sent.token not in annotator_ids:
                annotator = store.authenticate(sent.token)
                assert annotator is not None, "a bench annotator's token stopped working"
                annotator_ids[sent.token] = annotator.id
            try:
                stored = store.answer(annotator_ids[sent.token], client_id)
            except NotFound:
                result.lost += 1
                continue
            result.mismatched += stored.prompt_id != sent.prompt_id or stored.ranks != dense_ranks(sent.ranks)
        stored_ids = store.submission_ids()
        result.stored = len(stored_ids)
        result.duplicates = len(set(stored_ids) - set(acked))
        items = store.records()
        pairs = [(a.annotator, item.prompt_id) for item in items for a in item.answers]
        result.duplicates += len(pairs) - len(set(pairs))
        for item in items:
            result.overfilled += len(item.answers) > OVERLAP
            result.incomplete += sum(len(a.ranks) != len(item.candidates) for a in item.answers)
    finally:
        store.close()


def run(
    backend: str,
    url: str,
    clients: int,
    ratings: int,
    crash: bool,
    workdir: Path,
    deadline_s: float,
    logins: int = 0,
    server_args: list[str] | None = None,
) -> Result:
    tokens = prepare(url, clients, ratings, passwords=logins // 2)
    server = Server(url, free_port(), workdir / f"server-{backend}.log", server_args)
    server.start()
    result = Result(backend, clients, clients * ratings, crashed=crash)
    started = time.perf_counter()
    try:
        load = asyncio.run(_drive(server, tokens, ratings, crash, deadline_s))
        result.seconds = time.perf_counter() - started
        result.load_peak_mb = server.record_peak()
        if logins:
            result.logins = asyncio.run(login_phase(server.base, logins // 2, logins - logins // 2))
    finally:
        result.seconds = result.seconds or time.perf_counter() - started
        server.stop()
        result.peak_rss_mb = server.peak_rss_mb
    result.acknowledged = len(load.acked)
    result.latencies_ms = load.latencies_ms
    if load.errors:
        print(f"{backend}: {len(load.errors)} answers refused, e.g. {load.errors[:3]}", file=sys.stderr)
    audit(url, load.acked, result)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"], choices=["sqlite", "postgresql"])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--ratings", type=int, default=50, help="answers per client")
    parser.add_argument("--crash", action="store_true", help="SIGKILL the server a third of the way and restart it")
    parser.add_argument("--both", action="store_true", help="run each backend without and with the crash")
    parser.add_argument(
        "--postgres", default=os.environ.get("RLHF_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-feedback"))
    parser.add_argument("--deadline", type=float, default=600.0, help="seconds for the whole load")
    parser.add_argument("--logins", type=int, default=32, help="logins sent at once after the load (0: none)")
    parser.add_argument("--server-args", default="", help="more options for `rlhf feedback serve`, as one string")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = []
    for backend in args.backends:
        for crash in [False, True] if args.both else [args.crash]:
            name = f"bench_{uuid.uuid4().hex[:8]}"
            if backend == "sqlite":
                url = f"sqlite:///{args.workdir / (name + '.db')}"
            else:
                url = postgres_database(args.postgres, name)
            try:
                results.append(
                    run(
                        backend,
                        url,
                        args.clients,
                        args.ratings,
                        crash,
                        args.workdir,
                        args.deadline,
                        logins=args.logins,
                        server_args=args.server_args.split(),
                    )
                )
            finally:
                if backend == "postgresql":
                    postgres_database(args.postgres, name, create=False)
            print(table(results[-1:]), flush=True)
    print()
    print(table(results))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
