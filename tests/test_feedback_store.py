"""The feedback store on SQLite and PostgreSQL: schema, idempotent answers, the overlap queue, auth."""

from __future__ import annotations

import re
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa
from feedback_fixtures import annotate_all, tiny_items

from feedback import schema
from feedback.store import (
    AnnotatorProgress,
    Conflict,
    Forbidden,
    Invalid,
    ItemView,
    NotFound,
    Store,
    StoreError,
    Unauthorized,
    accounts,
    make_engine,
    migrate,
    queue,
)


def _ids(store: Store, n_prompts: int = 3) -> list[tuple[int, list[int]]]:
    report = store.import_items(
        [{"prompt": r["prompt"], "id": r["id"], "candidates": r["candidates"]} for r in tiny_items(n_prompts)]
    )
    return [
        (pid, [c.id for c in item.candidates]) for pid, item in zip(report.prompt_ids, store.records(), strict=True)
    ]


def test_migrations_build_exactly_the_declared_schema_and_downgrade(db_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    assert migrate(db_url) == "0004"
    engine = make_engine(db_url)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}), schema.metadata)
    assert diff == []
    assert migrate(db_url, "base", downgrade=True) is None
    with engine.connect() as connection:
        assert set(sa.inspect(connection).get_table_names()) <= {"alembic_version"}
    engine.dispose()
    with pytest.raises(StoreError, match="rlhf feedback migrate"):
        Store(db_url)


def test_sqlite_is_wal_with_full_sync(tmp_path) -> None:
    store = Store.create(str(tmp_path / "f.db"))  # a bare path means SQLite
    with store.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_prompts_and_candidates_are_deduplicated_and_keep_generation_settings(store: Store) -> None:
    [pid] = store.add_prompts(["What is 2 plus 3?"])
    assert store.add_prompts([[{"role": "user", "content": "What is 2 plus 3?"}]]) == [pid]  # same prompt
    ids = store.add_candidates(pid, ["a", "b", "a"], model="m", adapter="runs/sft", generation={"temperature": 0.7})
    assert ids[0] == ids[2] and ids[0] != ids[1]
    [item] = store.records()
    assert [c.text for c in item.candidates] == ["a", "b"] and item.candidates[0].model == "m"
    with pytest.raises(NotFound):
        store.add_candidates(999, ["x"])


def test_an_answer_is_recorded_once_per_client_id(store: Store) -> None:
    (pid, cids), *_ = _ids(store)
    store.add_annotator("ann")
    ann = store.annotator("ann")
    ranks = {c: i + 1 for i, c in enumerate(cids)}
    first = store.submit_ranking(ann.id, pid, ranks, client_id="retry-me-1")
    again = store.submit_ranking(ann.id, pid, ranks, client_id="retry-me-1")
    assert first.created and not again.created and again.id == first.id
    with pytest.raises(Conflict, match="different answer"):
        store.submit_ranking(ann.id, pid, {**ranks, cids[0]: 2}, client_id="retry-me-1")
    with pytest.raises(Conflict, match="already answered"):
        store.submit_ranking(ann.id, pid, ranks, client_id="a-new-id-2")
    assert store.submission_ids() == ["retry-me-1"]
    assert store.records()[0].answers[0].ranks == ranks


def test_concurrent_retries_of_one_answer_store_it_once(store: Store) -> None:
    (pid, cids), *_ = _ids(store)
    store.add_annotator("ann")
    ann = store.annotator("ann")
    receipts, errors = [], []

    def send() -> None:
        try:
            receipts.append(store.submit_rating(ann.id, pid, {cids[0]: True, cids[1]: False}, client_id="same-id-xyz"))
        except Exception as error:  # collected: the assertion below shows it
            errors.append(error)

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sum(r.created for r in receipts) == 1 and len(receipts) == 8
    assert store.submission_ids() == ["same-id-xyz"]


@pytest.mark.parametrize(
    ("answer", "error", "message"),
    [
        ({"ranks": {"first": 1}}, Invalid, "every response must be ranked"),
        ({"ranks": "all"}, Invalid, "ranks go from 1"),
        ({"thumbs": {"stranger": True}}, Invalid, "not responses to prompt"),
        ({}, Invalid, "needs thumbs, a ranking or a corrected response"),
        ({"thumbs": {"first": True}, "comment": "x" * 20_001}, Invalid, "at most 20000"),
        ({"thumbs": {"first": True}, "corrected_candidate_id": "first"}, Invalid, "without a correction"),
    ],
)
def test_invalid_answers_are_refused_and_change_nothing(store: Store, answer, error, message) -> None:
    (pid, cids), (_, other_cids), *_ = _ids(store)
    store.add_annotator("ann")
    ann = store.annotator("ann")
    names = {"first": cids[0], "stranger": other_cids[0]}
    fields = {}
    for key, value in answer.items():
        if key in ("ranks", "thumbs") and isinstance(value, dict):
            fields[key] = {names[k]: v for k, v in value.items()}
        elif key == "ranks":
            fields[key] = {c: 9 for c in cids}
        elif key == "corrected_candidate_id":
            fields[key] = names[value]
        else:
            fields[key] = value
    before = store.records()
    with pytest.raises(error, match=message):
        store.submit(ann.id, pid, client_id="bad-answer-1", **fields)
    assert store.records() == before and store.submission_ids() == []


def test_overlap_sends_each_item_to_n_annotators_and_then_out_of_the_queue(store: Store) -> None:
    _ids(store, n_prompts=4)
    store.update_settings(overlap=2)
    for name in ("a", "b", "c"):
        store.add_annotator(name)
    a, b, c = (store.annotator(n) for n in ("a", "b", "c"))
    assert annotate_all(store, a.id) == 4
    assert annotate_all(store, b.id) == 4
    assert store.next_item(c.id) is None  # every item has its two answers
    progress = store.progress()
    assert progress.complete == 4 and progress.answers == 8
    assert store.annotator_progress(c.id) == AnnotatorProgress(answered=0, remaining=0)


def test_an_item_handed_out_holds_its_slot_until_answered_skipped_or_expired(store: Store) -> None:
    _ids(store, n_prompts=1)
    for name in ("a", "b"):
        store.add_annotator(name)
    a, b = store.annotator("a"), store.annotator("b")
    item = store.next_item(a.id)
    assert item is not None and store.next_item(a.id).prompt_id == item.prompt_id  # the same item again
    assert store.next_item(b.id) is None  # overlap 1: a holds the only slot
    store.skip(a.id, item.prompt_id)
    assert store.next_item(a.id) is None  # a does not get it back
    again = store.next_item(b.id)
    assert again is not None and again.prompt_id == item.prompt_id
    store.update_settings(lease_minutes=1)
    with store.engine.begin() as connection:  # b walked away two minutes ago
        connection.execute(
            sa.update(schema.assignments).values(assigned_at=sa.func.now() - sa.text("interval '2 minutes'"))
            if store.backend == "postgresql"
            else sa.update(schema.assignments).values(assigned_at=sa.text("datetime('now', '-2 minutes')"))
        )
    store.add_annotator("c")
    assert store.next_item(store.annotator("c").id).prompt_id == item.prompt_id


def test_a_hand_out_in_progress_does_not_make_others_wait_and_progress_comes_with_the_item(store: Store) -> None:
    """While one annotator's hand-out holds its item (a transaction not yet committed), another
    annotator gets the next item at once on PostgreSQL (``SKIP LOCKED``); on SQLite writers queue on
    the process's lock, so the second waits for the first to commit. Either way no item is overfilled."""
    _ids(store, n_prompts=3)
    for name in ("a", "b"):
        store.add_annotator(name)
    a, b = store.annotator("a"), store.annotator("b")
    got: dict[str, float | int] = {}
    with store._tx() as held:  # a's hand-out, still open
        first = queue.next_item(held, a.id)
        assert first is not None

        def other() -> None:
            started = time.monotonic()
            item, progress = store.next_with_progress(b.id)
            assert item is not None and progress.answered == 0
            got.update(prompt_id=item.prompt_id, seconds=time.monotonic() - started)

        thread = threading.Thread(target=other)
        thread.start()
        thread.join(timeout=1.0)
        if store.backend == "postgresql":
            assert not thread.is_alive() and got["prompt_id"] != first.prompt_id and got["seconds"] < 1.0
        else:
            assert thread.is_alive()  # queued behind a's write transaction
    thread.join(timeout=30)
    assert "prompt_id" in got and got["prompt_id"] != first.prompt_id  # overlap 1: the held item is a's


def test_an_item_held_by_a_hand_out_in_progress_still_goes_to_the_next_annotator(store: Store) -> None:
    """The only item, overlap 2, its row held by a's uncommitted hand-out: b waits for it and gets the
    free slot, instead of being told the queue is empty (PostgreSQL's SKIP LOCKED alone would)."""
    _ids(store, n_prompts=1)
    store.update_settings(overlap=2)
    for name in ("a", "b"):
        store.add_annotator(name)
    a, b = store.annotator("a"), store.annotator("b")
    got: dict[str, ItemView | None] = {}
    with store._tx() as held:
        first = queue.next_item(held, a.id)
        assert first is not None
        thread = threading.Thread(target=lambda: got.update(item=store.next_item(b.id)))
        thread.start()
        thread.join(timeout=0.5)
        assert thread.is_alive()  # waiting for a's hand-out to commit, not answering "nothing left"
    thread.join(timeout=30)
    item = got["item"]
    assert item is not None and item.prompt_id == first.prompt_id


def test_concurrent_annotators_never_overfill_an_item(store: Store) -> None:
    _ids(store, n_prompts=3)
    store.update_settings(overlap=2)
    names = [f"ann{i}" for i in range(8)]
    for name in names:
        store.add_annotator(name)
    ids = [store.annotator(n).id for n in names]
    start = threading.Barrier(len(ids))  # every annotator asks at once

    def work(annotator_id: int) -> int:
        start.wait(timeout=30)
        return annotate_all(store, annotator_id)

    # .result() re-raises a worker's exception here (a Conflict from an item handed out twice fails
    # the test; a bare thread's exception would only be a warning)
    with ThreadPoolExecutor(len(ids)) as pool:
        done = [future.result(timeout=60) for future in [pool.submit(work, i) for i in ids]]
    assert sum(done) == 6  # 3 items x 2 annotators, no more
    assert all(len(item.answers) == 2 for item in store.records())


def test_annotators_see_and_change_only_their_own_answers(store: Store) -> None:
    (pid, cids), *_ = _ids(store)
    store.add_annotator("a")
    store.add_annotator("b")
    a, b = store.annotator("a"), store.annotator("b")
    store.next_item(a.id)
    receipt = store.submit_rating(a.id, pid, {cids[0]: True}, client_id="a-answer-1", comment="fine")
    with pytest.raises(NotFound):
        store.answer(b.id, receipt.id)
    with pytest.raises(NotFound):
        store.edit(b.id, receipt.id, thumbs={cids[0]: False})
    with pytest.raises(NotFound):
        store.held_item(b.id, pid)
    with pytest.raises(Forbidden):
        store.submit_rating(b.id, pid, {cids[0]: False}, client_id="b-answer-1", require_assignment=True)
    edited = store.edit(a.id, receipt.id, thumbs={cids[0]: False}, correction="Sure! Better.")
    assert (
        edited.revision == 2
        and store.edit(a.id, receipt.id, thumbs={cids[0]: False}, correction="Sure! Better.").revision == 2
    )
    _, answer = store.held_item(a.id, pid)
    assert answer is not None and answer.thumbs == {cids[0]: False} and answer.correction == "Sure! Better."
    assert answer.comment is None  # the edit replaced the whole answer
    assert [x.id for x in store.answers(a.id)] == [receipt.id] and store.answers(b.id) == []


def test_tokens_passwords_sessions_and_deactivation(store: Store) -> None:
    token = store.add_annotator("alice", "admin", password="correct horse")
    assert store.authenticate(token).is_admin
    assert store.authenticate("rlhf_not-a-token") is None
    session, alice = store.login("alice", "correct horse")
    assert alice.name == "alice" and store.authenticate(session).id == alice.id
    for name, password in (("alice", "wrong"), ("nobody", "correct horse")):
        with pytest.raises(Unauthorized, match="wrong name or password"):
            store.login(name, password)
    store.logout(session)
    assert store.authenticate(session) is None and store.authenticate(token) is not None
    fresh = store.new_token("alice")
    assert store.authenticate(token) is None and store.authenticate(fresh) is not None
    store.set_active("alice", False)
    assert store.authenticate(fresh) is None
    with pytest.raises(Conflict):
        store.add_annotator("alice")
    with pytest.raises(Invalid):
        store.add_annotator("bob", role="owner")
    with store.engine.connect() as connection:  # only hashes are stored
        stored = connection.execute(sa.select(schema.tokens.c.token_hash)).scalars().all()
    assert fresh not in stored and all(len(h) == 64 for h in stored)


def test_settings_are_validated(store: Store) -> None:
    assert store.update_settings(overlap=3, mode="thumbs").overlap == 3
    assert store.settings().mode == "thumbs"
    for bad in ({"overlap": 0}, {"mode": "stars"}, {"colour": "red"}, {"overlap": "2"}):
        with pytest.raises(Invalid):
            store.update_settings(**bad)
    assert store.settings().overlap == 3


def test_records_reads_one_snapshot_while_an_answer_arrives(store: Store) -> None:
    """An export reads submissions, then ratings: an answer committed in between must not show half."""
    (pid, cids), (pid2, cids2), *_ = _ids(store)
    store.add_annotator("a")
    store.add_annotator("b")
    a, b = store.annotator("a"), store.annotator("b")
    store.submit_rating(a.id, pid, {cids[0]: True}, client_id="before-the-read")
    arrived: list[str] = []

    def answer_mid_read(_conn, _cursor, statement: str, *_args) -> None:
        if not arrived and statement.lstrip().startswith("SELECT") and "FROM ratings" in statement:
            arrived.append("now")  # first, so the submit's own statements do not come back here
            store.submit_rating(b.id, pid2, {cids2[0]: False, cids2[1]: True}, client_id="during-the-read")

    sa.event.listen(store.engine, "before_cursor_execute", answer_mid_read)
    try:
        items = store.records()  # before the fix (PostgreSQL): KeyError on the new submission's ratings
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", answer_mid_read)
    assert arrived
    by_id = {item.prompt_id: item for item in items}
    assert [x.thumbs for x in by_id[pid].answers] == [{cids[0]: True}]
    assert by_id[pid2].answers == ()  # committed after the snapshot: not seen at all
    assert {x.annotator for item in store.records() for x in item.answers} == {"a", "b"}


def test_concurrent_edits_from_one_revision_cannot_both_succeed(store: Store) -> None:
    (pid, cids), *_ = _ids(store)
    store.add_annotator("a")
    a = store.annotator("a")
    receipt = store.submit_rating(a.id, pid, {cids[0]: True}, client_id="edit-me-0001")
    barrier = threading.Barrier(6)
    wins: list[tuple[int, int]] = []
    conflicts: list[str] = []

    def edit(i: int) -> None:
        barrier.wait()
        try:
            done = store.edit(a.id, receipt.id, thumbs={cids[0]: i % 2 == 0}, comment=f"edit {i}", expected_revision=1)
            wins.append((i, done.revision))
        except Conflict as error:
            conflicts.append(str(error))

    threads = [threading.Thread(target=edit, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(wins) == 1 and len(conflicts) == 5, (wins, conflicts)
    [(winner, revision)] = wins
    assert revision == 2 and all("changed meanwhile" in m and "reload" in m for m in conflicts)
    stored = store.answer(a.id, receipt.id)
    assert stored.revision == 2 and stored.comment == f"edit {winner}"
    with pytest.raises(Conflict, match="based on revision 1, it is now at revision 2"):
        store.edit(a.id, receipt.id, thumbs={cids[0]: True}, expected_revision=1)
    assert store.edit(a.id, receipt.id, thumbs={cids[0]: True}, comment="third", expected_revision=2).revision == 3


def test_an_external_id_reused_for_another_prompt_is_a_conflict(store: Store) -> None:
    report = store.import_items([{"prompt": "What is 3 plus 4?", "id": "q-1", "candidates": ["7.", "8."]}])
    again = store.import_items([{"prompt": "What is 3 plus 4?", "id": "q-1", "candidates": ["7.", "8."]}])
    assert again.prompt_ids == report.prompt_ids and again.prompts_added == 0  # same id, same content: a no-op
    before = store.records()
    with pytest.raises(Conflict, match=r"id 'q-1' is already used by prompt \d+ with a different prompt"):
        store.import_items([{"prompt": "What is 9 minus 2?", "id": "q-1", "candidates": ["7."]}])
    with pytest.raises(Conflict, match="already used"):
        store.add_prompts(["What is 9 minus 2?"], external_ids=["q-1"])
    assert store.records() == before


def test_candidates_cannot_be_added_once_an_item_is_handed_out_or_answered(store: Store) -> None:
    (pid, cids), (pid2, _), _ = _ids(store)
    store.add_annotator("a")
    a = store.annotator("a")
    item = store.next_item(a.id)
    assert item is not None and item.prompt_id == pid
    with pytest.raises(Conflict, match=f"prompt {pid} was already handed out or answered"):
        store.add_candidates(pid, ["a new response nobody ranked"])
    store.submit_ranking(a.id, pid, {c: i + 1 for i, c in enumerate(cids)}, client_id="ranked-0001")
    with pytest.raises(Conflict, match="cannot change any more"):
        first = tiny_items(1)[0]
        store.import_items([{"prompt": first["prompt"], "id": first["id"], "candidates": ["another new response"]}])
    assert store.add_candidates(pid, [store.records()[0].candidates[0].text]) == [cids[0]]  # existing: a no-op
    assert len(store.records()[0].candidates) == len(cids)
    assert store.prompts_in_use() == {pid}
    assert len(store.add_candidates(pid2, ["fresh one"])) == 1  # untouched items still take candidates


def test_a_late_answer_to_an_item_completed_by_others_is_refused(store: Store) -> None:
    (pid, cids), *_ = _ids(store, n_prompts=1)
    store.update_settings(lease_minutes=1)
    for name in ("late", "b"):
        store.add_annotator(name)
    late, b = store.annotator("late"), store.annotator("b")
    assert store.next_item(late.id).prompt_id == pid
    with store.engine.begin() as connection:  # late walked away two minutes ago
        connection.execute(
            sa.update(schema.assignments).values(assigned_at=sa.func.now() - sa.text("interval '2 minutes'"))
            if store.backend == "postgresql"
            else sa.update(schema.assignments).values(assigned_at=sa.text("datetime('now', '-2 minutes')"))
        )
    assert store.next_item(b.id).prompt_id == pid
    ranks = {c: i + 1 for i, c in enumerate(cids)}
    store.submit_ranking(b.id, pid, ranks, client_id="b-on-time-1")
    before = store.records(), store.submission_ids()
    with pytest.raises(Conflict, match=r"hold on this item expired and 1 other annotator.*not recorded"):
        store.submit_ranking(late.id, pid, ranks, client_id="late-answer-1", require_assignment=True)
    assert (store.records(), store.submission_ids()) == before
    assert store.next_item(late.id) is None


BAD = "x \ud800 y"


@pytest.mark.parametrize(
    ("name", "call"),
    [
        ("name", lambda s, ids: s.add_annotator(BAD)),
        ("password", lambda s, ids: s.add_annotator("bob", password=BAD + "-long")),
        ("password", lambda s, ids: s.set_password("ann", BAD + "-long")),
        ("name", lambda s, ids: s.login(BAD, "password-1")),
        ("password", lambda s, ids: s.login("ann", BAD)),
        ("token", lambda s, ids: s.authenticate(BAD)),
        ("token", lambda s, ids: s.logout(BAD)),
        ("name", lambda s, ids: s.new_token(BAD)),
        ("guidelines", lambda s, ids: s.update_settings(guidelines=BAD)),
        ("prompt[0].content", lambda s, ids: s.add_prompts([BAD])),
        ("id", lambda s, ids: s.add_prompts(["fine"], external_ids=[BAD])),
        ("response.text", lambda s, ids: s.add_candidates(ids[0], ["new one", BAD])),
        ("response.model", lambda s, ids: s.add_candidates(ids[0], ["new one"], model=BAD)),
        ("response.generation.stop[0]", lambda s, ids: s.add_candidates(ids[0], ["ok"], generation={"stop": [BAD]})),
        ("langsmith project", lambda s, ids: s.add_candidates(ids[0], ["new"], langsmith_project=BAD)),
        ("comment", lambda s, ids: s.submit_ranking(ids[1], ids[0], ids[2], client_id="client-01", comment=BAD)),
        ("correction", lambda s, ids: s.submit_rating(ids[1], ids[0], {}, client_id="client-01", correction=BAD)),
        ("client_id", lambda s, ids: s.submit_ranking(ids[1], ids[0], ids[2], client_id=BAD)),
        ("answer id", lambda s, ids: s.edit(ids[1], BAD, ranks=ids[2])),
    ],
)
def test_every_store_entry_point_refuses_text_utf8_cannot_encode(store: Store, name, call) -> None:
    """Refused before anything is stored, alike on both backends (SQLite and psycopg would fail differently)."""
    (pid, cids), *_ = _ids(store)
    store.add_annotator("ann", password="password-1")
    state = (store.records, store.annotators, store.settings, store.submission_ids, store.sync_status)
    before = [read() for read in state]
    with pytest.raises(Invalid, match=re.escape(f"{name}: holds U+D800 at character 2, which UTF-8 cannot encode")):
        call(store, (pid, store.annotator("ann").id, {c: 1 for c in cids}))
    assert [read() for read in state] == before


def test_passwords_are_scrypt_at_owasp_cost_and_older_hashes_are_upgraded_at_login(store: Store, monkeypatch) -> None:
    assert accounts.ScryptCost() == accounts.ScryptCost(n=2**17, r=8, p=1)  # the default, OWASP's
    monkeypatch.setattr(accounts, "COST", accounts.ScryptCost())
    start = time.perf_counter()
    owasp = accounts.hash_password("correct horse")
    print(f"scrypt at OWASP cost: {time.perf_counter() - start:.3f} s")
    assert owasp.startswith("scrypt$131072$8$1$") and accounts.verify_password("correct horse", owasp)
    monkeypatch.setattr(accounts, "COST", accounts.ScryptCost(n=2**10))
    store.add_annotator("alice", password="correct horse")
    monkeypatch.setattr(accounts, "COST", accounts.ScryptCost(n=2**11))
    store.login("alice", "correct horse")
    with store.engine.connect() as connection:
        stored = connection.execute(sa.select(schema.annotators.c.password_hash)).scalar_one()
    assert stored.startswith("scrypt$2048$8$1$")  # rehashed at the current cost on a successful login
    assert store.login("alice", "correct horse")[1].name == "alice"
    for short in ("", "seven77"):
        with pytest.raises(Invalid, match="password: at least 8 characters"):
            store.add_annotator("bob", password=short)
        with pytest.raises(Invalid, match="password: at least 8 characters"):
            store.set_password("alice", short)


def test_an_unknown_name_costs_what_a_known_one_does(store: Store, monkeypatch) -> None:
    monkeypatch.setattr(accounts, "COST", accounts.ScryptCost(n=2**14))  # the hash dominates, as in production
    store.add_annotator("alice", password="correct horse")
    store.add_annotator("nopass")
    timings: dict[str, list[float]] = {"alice": [], "nobody": [], "nopass": []}
    for _ in range(7):
        for name, runs in timings.items():
            start = time.perf_counter()
            with pytest.raises(Unauthorized, match="wrong name or password"):
                store.login(name, "wrong password")
            runs.append(time.perf_counter() - start)
    medians = {name: statistics.median(runs) for name, runs in timings.items()}
    print(f"login medians: {medians}")
    assert 0.7 < medians["nobody"] / medians["alice"] < 1.4, medians
    assert 0.7 < medians["nopass"] / medians["alice"] < 1.4, medians


def test_a_new_sqlite_database_and_exports_are_private_to_their_owner(tmp_path) -> None:
    from feedback import export

    store = Store.create(str(tmp_path / "f.db"))
    store.add_annotator("ann")
    files = sorted(tmp_path.iterdir())
    assert [p.name for p in files] == ["f.db", "f.db-shm", "f.db-wal"]
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in files), [oct(p.stat().st_mode) for p in files]
    _ids(store)
    annotate_all(store, store.annotator("ann").id)
    export.export(store, "pairs", tmp_path / "out", writers=["jsonl", "disk"], test_fraction=0.0)
    written = [tmp_path / "out", *(tmp_path / "out").rglob("*")]
    assert len(written) > 4
    for path in written:
        assert path.stat().st_mode & 0o777 == (0o700 if path.is_dir() else 0o600), path
    store.close()
