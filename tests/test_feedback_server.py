"""The real server (uvicorn subprocess): concurrent annotators, SIGKILL mid-load, exactly-once audit.

A small version of ``benchmarks/bench_feedback.py`` (which runs 32 clients x 50 answers): here 8
clients x 12 answers on each backend, with the server killed a third of the way through.
"""

from __future__ import annotations

import importlib.util
import socket
import sys
from pathlib import Path

import httpx
import pytest
from conftest import ROOT

from feedback.store import Store

spec = importlib.util.spec_from_file_location("bench_feedback", ROOT / "benchmarks" / "bench_feedback.py")
bench = importlib.util.module_from_spec(spec)
sys.modules["bench_feedback"] = bench  # dataclasses look their module up while the script loads
spec.loader.exec_module(bench)


@pytest.mark.slow
def test_sigkill_during_load_loses_no_acknowledged_answer(db_url: str, tmp_path: Path) -> None:
    result = bench.run("test", db_url, clients=8, ratings=12, crash=True, workdir=tmp_path, deadline_s=240)
    assert result.acknowledged == 8 * 12, (tmp_path / "server-test.log").read_text()[-2000:]
    assert result.stored == result.acknowledged
    assert (result.lost, result.mismatched, result.duplicates, result.overfilled, result.incomplete) == (0, 0, 0, 0, 0)
    assert len(result.latencies_ms) == result.acknowledged


def test_the_audit_checks_each_acknowledged_answer_against_the_store(db_url: str) -> None:
    tokens = bench.prepare(db_url, clients=2, ratings=2)
    store = Store(db_url)
    try:
        ann = store.authenticate(tokens[0])
        item = store.next_item(ann.id)
        ranks = {c["id"]: i + 1 for i, c in enumerate(item.candidates)}
        store.submit_ranking(ann.id, item.prompt_id, ranks, client_id="stored-as-sent")
        store.submit_ranking(store.authenticate(tokens[1]).id, item.prompt_id, ranks, client_id="nobody-acked-it")
    finally:
        store.close()
    acked = {
        "stored-as-sent": bench.Sent(tokens[0], item.prompt_id, ranks),
        "never-stored-1": bench.Sent(tokens[0], item.prompt_id, ranks),  # acknowledged, then lost
        "nobody-acked-it": bench.Sent(tokens[1], item.prompt_id, {c: 1 for c in ranks}),  # another ranking
    }
    result = bench.Result("test", 2, 3)
    bench.audit(db_url, acked, result)
    assert (result.stored, result.lost, result.mismatched, result.duplicates) == (2, 1, 1, 0)
    del acked["nobody-acked-it"]
    result = bench.Result("test", 2, 2)
    bench.audit(db_url, acked, result)
    assert (result.lost, result.mismatched, result.duplicates) == (1, 0, 1)  # stored with no acknowledgement
    assert not result.ok


def test_the_real_server_refuses_oversized_and_chunked_bodies_and_believes_no_forwarded_address(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'f.db'}"
    [token] = bench.prepare(url, clients=1, ratings=1)
    limits = ["--login-failures", "1", "--login-address-ceiling", "2"]
    server = bench.Server(url, bench.free_port(), tmp_path / "server.log", limits)
    server.start()
    try:
        # uvicorn believes X-Forwarded-For from 127.0.0.1 by default: the app's server must not (no --trusted-proxies).
        statuses = [
            httpx.post(
                server.base + "/api/login",
                json={"name": f"nobody-{i}", "password": "wrong-password"},
                headers={"X-Forwarded-For": f"203.0.113.{i}"},
                timeout=30,
            ).status_code
            for i in range(3)
        ]
        assert statuses == [401, 401, 429]  # one address (the connection's) at its ceiling of 2
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        big = b'{"client_id": "' + b"x" * (2 << 20) + b'"}'
        response = httpx.post(server.base + "/api/answers", content=big, headers=headers, timeout=30)
        assert response.status_code == 413 and "over 1048576 bytes" in response.json()["detail"]

        def chunks():
            yield b'{"client_id": "'
            for _ in range(40):
                yield b"y" * 65536
            yield b'"}'

        response = httpx.post(server.base + "/api/answers", content=chunks(), headers=headers, timeout=30)
        assert response.status_code == 413
        with socket.create_connection(("127.0.0.1", server.port)) as raw:  # a lying Content-Length
            raw.sendall(b"POST /api/answers HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")
            assert raw.recv(100).split(b" ")[1] in (b"400", b"413")
        assert httpx.get(server.base + "/health").status_code == 200  # still serving
    finally:
        server.stop()
