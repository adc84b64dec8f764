"""The real server (uvicorn subprocess): concurrent annotators, SIGKILL mid-load, exactly-once audit.

A small version of ``scripts/bench_feedback.py`` (which runs 32 clients x 50 answers): here 8
clients x 12 answers on each backend, with the server killed a third of the way through.
"""

from __future__ import annotations

import importlib.util
import socket
import sys
from pathlib import Path

import httpx
from conftest import ROOT

spec = importlib.util.spec_from_file_location("bench_feedback", ROOT / "scripts" / "bench_feedback.py")
bench = importlib.util.module_from_spec(spec)
sys.modules["bench_feedback"] = bench  # dataclasses look their module up while the script loads
spec.loader.exec_module(bench)


def test_sigkill_during_load_loses_no_acknowledged_answer(db_url: str, tmp_path: Path) -> None:
    result = bench.run("test", db_url, clients=8, ratings=12, crash=True, workdir=tmp_path, deadline_s=240)
    assert result.acknowledged == 8 * 12, (tmp_path / "server-test.log").read_text()[-2000:]
    assert result.stored == result.acknowledged
    assert (result.lost, result.duplicates, result.overfilled, result.incomplete) == (0, 0, 0, 0)
    assert len(result.latencies_ms) == result.acknowledged


def test_the_real_server_refuses_oversized_and_chunked_bodies(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'f.db'}"
    [token] = bench.prepare(url, clients=1, ratings=1)
    server = bench.Server(url, bench.free_port(), tmp_path / "server.log")
    server.start()
    try:
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
