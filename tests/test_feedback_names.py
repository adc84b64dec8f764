"""Annotator names people can tell apart: one normalisation for uniqueness, login and the login limit; invisible
and control characters refused; look-alikes of existing names refused; older accounts reported, never changed."""

from __future__ import annotations

import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa
from conftest import run_cli
from feedback_fixtures import auth

from feedback import schema
from feedback.store import Conflict, Invalid, Store, accounts, make_engine, migrate, names, utcnow

# The names the probe created next to an admin `root` (and `admin`), each accepted before.
LOOK_ALIKES = [
    ("ｒｏｏｔ", Conflict, "an annotator named 'root' exists already"),  # fullwidth: NFKC makes it root
    ("ROOT", Conflict, "an annotator named 'root' exists already"),
    ("Root", Conflict, "an annotator named 'root' exists already"),
    ("ro\u200bot", Invalid, "U+200B (ZERO WIDTH SPACE) at character 2, a format"),
    ("r\u043e\u043et", Conflict, "looks like the existing annotator 'root'"),  # Cyrillic o twice
    ("root\u0301", Conflict, "looks like the existing annotator 'root'"),  # a combining accent
    ("\u202etoor", Invalid, "U+202E (RIGHT-TO-LEFT OVERRIDE) at character 0"),  # shows as `root`
    ("ＡＤＭＩＮ", Conflict, "an annotator named 'admin' exists already"),
    ("eve\nroot\tadmin\tactive", Invalid, "U+000A at character 3, a control character"),
    ("\u0410dmin", Conflict, "looks like the existing annotator 'admin'"),  # Cyrillic capital A
    ("r00t", Conflict, "looks like the existing annotator 'root'"),
    ("adm\ufe0fin", Invalid, "U+FE0F (VARIATION SELECTOR-16) at character 3, an invisible"),
    ("\u3164", Invalid, "an invisible character"),  # a Hangul filler: a blank "letter"
]
DISTINCT = ["alice", "Zoë", "李雷", "ann-2", "Ann Lee", "Ιωάννα", "Дмитрий", "roots", "rot"]


def test_one_key_for_case_width_and_compatibility_forms() -> None:
    assert {names.key(n) for n in ("root", "ROOT", "Root", "ｒｏｏｔ", " root ")} == {"root"}
    assert names.display("ｒｏｏｔ") == "root" and names.display("  Zoë ") == "Zoë"
    assert names.key("Straße") == names.key("STRASSE") == "strasse"
    assert names.skeleton("r\u043e\u043et") == names.skeleton("root") == names.skeleton("r00t")
    assert names.skeleton("Ian") == names.skeleton("lan")  # a capital I is an l in most fonts
    assert names.skeleton("ian") != names.skeleton("lan") and names.skeleton("POOT") == names.skeleton(
        "\u0420\u041e\u041eT"
    )
    assert all(names.problem(n) is None for n in DISTINCT)
    assert names.problem("x" * 101) == "1 to 100 characters" and names.problem("   ") == "1 to 100 characters"


@pytest.mark.parametrize(("name", "error", "message"), LOOK_ALIKES)
def test_a_name_people_cannot_tell_from_an_existing_one_is_refused(store: Store, name, error, message) -> None:
    store.add_annotator("root", "admin", password="admin-password")
    store.add_annotator("admin", "admin")
    before = store.annotators()
    with pytest.raises(error, match=re.escape(message)) as refused:
        store.add_annotator(name, password="impostor-password")
    assert "\n" not in str(refused.value) and "\t" not in str(refused.value) and "\u202e" not in str(refused.value)
    assert store.annotators() == before


def test_login_finds_a_name_by_its_key_and_distinct_names_are_kept(store: Store) -> None:
    store.add_annotator("root", "admin", password="admin-password")
    for name in DISTINCT:
        store.add_annotator(name)
    assert [a.name for a in store.annotators()] == ["root", *DISTINCT]
    for typed in ("ROOT", "ｒｏｏｔ", " Root"):
        assert store.login(typed, "admin-password")[1].name == "root"
    assert store.annotator("ZOË").name == "Zoë"
    assert store.add_annotator("Ｂｏｂ") and store.annotator("bob").name == "Bob"  # stored in its NFKC form
    with pytest.raises(Invalid, match=re.escape("U+000A")):
        store.rename_annotator("Bob", "Bob\nroot")
    with pytest.raises(Conflict, match="looks like the existing annotator 'root'"):
        store.rename_annotator("Bob", "r\u043e\u043et")
    assert store.rename_annotator("bob", "Robert") == "Robert" and store.annotator("ROBERT").name == "Robert"


def test_concurrent_adds_of_two_look_alikes_store_one(store: Store, monkeypatch) -> None:
    """The look-alike check holds under concurrency: no unique key can catch `root` next to Cyrillic `rооt`."""
    confusable = names.confusable

    def slow(name: str, existing: dict[int, str]) -> int | None:
        found = confusable(name, existing)
        time.sleep(0.3)  # both adds have checked before either inserts, unless they are serialised
        return found

    monkeypatch.setattr(names, "confusable", slow)
    start = threading.Barrier(2)

    def add(name: str) -> str:
        start.wait()
        try:
            store.add_annotator(name)
        except Conflict:
            return "refused"
        return "added"

    with ThreadPoolExecutor(2) as pool:
        assert sorted(pool.map(add, ["root", "r\u043e\u043et"])) == ["added", "refused"]
    assert len(store.annotators()) == 1


def test_the_api_refuses_such_names_with_422_or_409_and_the_cli_in_one_line(app_store, capsys) -> None:
    client, store, tokens = app_store  # an admin `root`, annotators `ann` and `other`
    admin = auth(tokens["admin"])
    for name, status in (
        ("eve\nroot\tadmin\tactive", 422),
        ("ro\u200bot", 422),
        ("\u202etoor", 422),
        ("ＲＯＯＴ", 409),
    ):
        response = client.post("/api/admin/annotators", json={"name": name}, headers=admin)
        assert response.status_code == status, (name, response.text)
    created = client.post("/api/admin/annotators", json={"name": "Ｚｏë"}, headers=admin)
    assert created.status_code == 201 and created.json()["name"] == "Zoë"
    login = client.post("/api/login", json={"name": "ＲＯＯＴ", "password": "admin-password"})
    assert login.status_code == 200 and login.json()["annotator"]["name"] == "root"
    with pytest.raises(SystemExit) as exit_info:
        run_cli("feedback", "annotators", "add", "eve\nroot\tadmin\tactive", "--db", store.url)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1 and "U+000A" in err
    run_cli("feedback", "annotators", "list", "--db", store.url)
    assert capsys.readouterr().out.splitlines() == [
        "root\tadmin\tactive",
        "ann\tannotator\tactive",
        "other\tannotator\tactive",
        "Zoë\tannotator\tactive",
    ]


def _legacy_rows(db_url: str) -> dict[str, int]:
    """Accounts as revision 0003 stored them (no checks on names), with passwords; their ids by name."""
    assert migrate(db_url, "0003") == "0003"
    engine = make_engine(db_url)
    legacy = ["root", "ROOT", "r\u043e\u043et", "eve\nroot\tadmin\tactive", "ｒｏｏｔ", "bob"]
    table = sa.table(
        "annotators", *(sa.column(c) for c in ("id", "name", "role", "password_hash", "active", "created_at"))
    )
    ids = {}
    with engine.begin() as c:
        for name in legacy:
            values = {"name": name, "role": "admin", "password_hash": accounts.hash_password(f"pw-of-{name}")}
            row = c.execute(sa.insert(table).values(**values, active=True, created_at=utcnow()).returning(table.c.id))
            ids[name] = row.scalar_one()
    engine.dispose()
    return ids


def test_the_0004_migration_reports_colliding_accounts_and_changes_none(db_url: str, caplog, capsys) -> None:
    ids = _legacy_rows(db_url)
    with caplog.at_level(logging.WARNING, logger="feedback.migrations"):
        assert migrate(db_url) == "0004"
    reported = [r.getMessage() for r in caplog.records if r.name == "feedback.migrations"]
    assert reported == [
        "annotator 'eve\\nroot\\tadmin\\tactive' (id 4): name holds U+000A at character 3, a control character",
        "annotator 'ROOT' (id 2) has the login name of 'root' (id 1): rename one "
        "(rlhf feedback annotators rename NAME --to NEW) or deactivate it",
        "annotator 'r\u043e\u043et' (id 3) has the look of 'root' (id 1): rename one "
        "(rlhf feedback annotators rename NAME --to NEW) or deactivate it",
        "annotator 'ｒｏｏｔ' (id 5) has the login name of 'root' (id 1): rename one "
        "(rlhf feedback annotators rename NAME --to NEW) or deactivate it",
    ]
    store = Store(db_url)
    assert [(a.id, a.name) for a in store.annotators()] == [(i, n) for n, i in ids.items()]  # nothing renamed
    with store.engine.connect() as c:
        keys = dict(c.execute(sa.select(schema.annotators.c.id, schema.annotators.c.name_key)).tuples().all())
    assert keys[ids["root"]] == "root" and keys[ids["ROOT"]] is None and keys[ids["ｒｏｏｔ"]] is None
    # Each keeps its login: the key's holder by any spelling, a later one by its exact name.
    assert store.login("Root", "pw-of-root")[1].id == ids["root"]
    assert store.login("ROOT", "pw-of-ROOT")[1].id == ids["ROOT"]
    run_cli("feedback", "annotators", "list", "--db", db_url)  # the stored name cannot forge a line or a column
    listed, warned = capsys.readouterr()
    assert [line.split("\t") for line in listed.splitlines()][3] == ["'eve\\nroot\\tadmin\\tactive'", "admin", "active"]
    assert len(listed.splitlines()) == len(ids) and warned.count("warning: ") == 4
    run_cli("feedback", "progress", "--db", db_url)
    assert "  'eve\\nroot\\tadmin\\tactive'" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        run_cli("feedback", "doctor", "--db", db_url)
    out, err = capsys.readouterr()
    assert "annotator 'ROOT' (id 2) has the login name of 'root'" in out and "4 annotator name(s)" in err
    for name in ("ROOT", "r\u043e\u043et", "eve\nroot\tadmin\tactive", "ｒｏｏｔ"):
        run_cli("feedback", "annotators", "rename", name, "--to", f"renamed-{ids[name]}", "--db", db_url)
    run_cli("feedback", "doctor", "--db", db_url)
    assert "every annotator name is distinct and visible" in capsys.readouterr().out
    assert store.login("renamed-2", "pw-of-ROOT")[1].id == ids["ROOT"]
    store.close()
    assert migrate(db_url, "0003", downgrade=True) == "0003"  # and back: every account is still there
    engine = make_engine(db_url)
    with engine.connect() as c:
        assert c.execute(sa.text("SELECT count(*) FROM annotators")).scalar_one() == len(ids)
    engine.dispose()
