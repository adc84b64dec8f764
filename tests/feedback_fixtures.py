"""Fixtures for the feedback tests: a store on SQLite and on the real local PostgreSQL, and helpers.

PostgreSQL tests use ``RLHF_TEST_POSTGRES_URL`` (default: the local server's ``test`` database);
each test gets a database of its own, created from there and dropped afterwards. They skip with a
message when no server answers, unless ``RLHF_TEST_REQUIRE_POSTGRES=1`` (CI), where that fails.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from feedback.app import create_app
from feedback.store import Store, accounts, normalize_url, redact
from rlhf.tiny import corpus, task

POSTGRES_URL = os.environ.get("RLHF_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
BACKENDS = ["sqlite", "postgresql"]


FAST_SCRYPT = accounts.ScryptCost(n=2**12, r=8, p=1)


@pytest.fixture(autouse=True)
def fast_password_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Passwords hashed at a test cost: OWASP's default takes a few hundred ms per hash, by design.

    In-process only: servers started as subprocesses (test_feedback_server, the browser test) hash
    at the default cost.
    """
    monkeypatch.setattr(accounts, "COST", FAST_SCRYPT)


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[sa.Engine]:
    engine = sa.create_engine(normalize_url(POSTGRES_URL), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as error:
        message = (
            f"no PostgreSQL server answers at {redact(POSTGRES_URL)} "
            f"(run bash scripts/test-setup.sh, or set RLHF_TEST_POSTGRES_URL): {error.orig}"
        )
        if os.environ.get("RLHF_TEST_REQUIRE_POSTGRES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    yield engine
    engine.dispose()


@pytest.fixture
def postgres_url(postgres_admin: sa.Engine) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test."""
    name = f"feedback_test_{uuid.uuid4().hex[:12]}"
    with postgres_admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(normalize_url(POSTGRES_URL)).set(database=name).render_as_string(hide_password=False)
    yield url
    with postgres_admin.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database URL: SQLite file, then PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'feedback.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    opened = Store.create(db_url)
    yield opened
    opened.close()


@pytest.fixture
def app_store(db_url: str) -> Iterator[tuple[TestClient, Store, dict[str, str]]]:
    """The app over a store of three items on SQLite, then on PostgreSQL (bad input must be refused alike on both),
    with the tokens of an admin (``root``, password ``admin-password``) and two annotators (``ann``, ``other``)."""
    store = Store.create(db_url)
    store.import_items(tiny_items(3))
    tokens = {
        "admin": store.add_annotator("root", "admin", password="admin-password"),
        "ann": store.add_annotator("ann"),
        "other": store.add_annotator("other"),
    }
    with TestClient(create_app(store, max_body_bytes=4096)) as client:
        yield client, store, tokens
    store.close()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ----------------------------------------------------------------------------------------------
# Content and a simulated annotator


def tiny_items(n_prompts: int, seed: int = 0) -> list[dict[str, Any]]:
    """Import rows of the tiny task: each prompt with four responses of different styles."""
    import random

    rng = random.Random(seed)
    facts = task.split_facts()["train"]
    rows = []
    for i in range(n_prompts):
        fact = facts[(i * 7 + seed) % len(facts)]
        question = task.question_text(fact, task.templates_for(fact)[i % len(task.templates_for(fact))])
        styles = ["helpful", "wrong", "rude", "off_topic"]
        texts = list(dict.fromkeys(corpus.STYLES[s](fact, rng) for s in styles))
        rows.append({"id": f"q{i}", "prompt": question, "candidates": texts})
    return rows


def gold_ranks(prompt: Any, candidates: list[dict[str, Any]]) -> dict[int, int]:
    """Ranks from the tiny task's gold judge (1 = best; equal scores tie): a simulated annotator."""
    scores = {c["id"]: task.score(prompt, c["text"]) for c in candidates}
    levels = sorted(set(scores.values()), reverse=True)
    return {cid: levels.index(score) + 1 for cid, score in scores.items()}


def annotate_all(store: Store, annotator_id: int, mode: str = "ranking") -> int:
    """Answer every item the queue gives this annotator as the gold judge would; returns how many."""
    count = 0
    while (item := store.next_item(annotator_id)) is not None:
        ranks = gold_ranks(item.messages, item.candidates)
        if mode == "ranking":
            store.submit_ranking(annotator_id, item.prompt_id, ranks, client_id=uuid.uuid4().hex)
        else:
            thumbs = {c["id"]: task.score(item.messages, c["text"]) > 0 for c in item.candidates}
            store.submit_rating(annotator_id, item.prompt_id, thumbs, client_id=uuid.uuid4().hex)
        count += 1
    return count
