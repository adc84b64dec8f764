"""A loopback HTTP server implementing the LangSmith paths the feedback module uses.

GET /info, GET /sessions?name= (read_project), POST /runs/query (list_runs, one cursor page at a
time), POST /runs (create_run: kept in ``created_runs``, 409 on a duplicate id), POST /feedback
(create_feedback: 409 on a duplicate id, as LangSmith does), PATCH /feedback/{id} (update_feedback:
404 if unknown), DELETE /feedback/{id} (delete_feedback: 404 if unknown), GET /feedback. Every
request must carry the API key in ``x-api-key``. ``down = True`` makes every call fail with 503, to
test outages; ``up_for = N`` answers the next N calls and then goes down (an outage mid-pass).
"""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

API_KEY = "ls-test-key"


class FakeLangSmith:
    def __init__(self, runs: list[dict[str, Any]] | None = None, page_size: int = 2) -> None:
        self.runs = runs or []
        self.page_size = page_size
        self.project_id = str(uuid.uuid4())
        self.feedback: dict[str, dict[str, Any]] = {}
        self.created_runs: dict[str, dict[str, Any]] = {}
        self.up_for: int | None = None
        self.requests: list[tuple[str, str]] = []
        self.down = False
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeLangSmith:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _send(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> Any:
                length = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(length) or b"null")

            def _route(self, method: str) -> None:
                url = urlparse(self.path)
                with fake.lock:
                    fake.requests.append((method, url.path))
                    if fake.up_for is not None:
                        fake.down, fake.up_for = fake.up_for <= 0, fake.up_for - 1
                if fake.down:
                    self._send(503, {"detail": "down for maintenance"})
                    return
                if url.path != "/info" and self.headers.get("x-api-key") != API_KEY:
                    self._send(401, {"detail": "bad api key"})
                    return
                handler = getattr(self, f"{method}_{url.path.strip('/').split('/')[0]}", None)
                if handler is None:
                    self._send(404, {"detail": f"no route {method} {url.path}"})
                    return
                handler(url)

            def do_GET(self) -> None:
                self._route("GET")

            def do_POST(self) -> None:
                self._route("POST")

            def do_PATCH(self) -> None:
                self._route("PATCH")

            def do_DELETE(self) -> None:
                self._route("DELETE")

            def GET_info(self, url: Any) -> None:
                self._send(200, {"version": "", "instance_flags": {}, "batch_ingest_config": {}})

            def GET_sessions(self, url: Any) -> None:
                name = parse_qs(url.query).get("name", [""])[0]
                self._send(
                    200,
                    [
                        {
                            "id": fake.project_id,
                            "name": name,
                            "tenant_id": str(uuid.uuid4()),
                            "reference_dataset_id": None,
                        }
                    ],
                )

            def POST_runs(self, url: Any) -> None:
                body = self._body()
                if url.path.rstrip("/") == "/runs":
                    with fake.lock:
                        if body["id"] in fake.created_runs:
                            self._send(409, {"detail": "run already exists"})
                            return
                        fake.created_runs[body["id"]] = body
                    self._send(200, {})
                    return
                start = int(body.get("cursor") or 0)
                page = fake.runs[start : start + fake.page_size]
                following = start + fake.page_size
                cursors = {"next": str(following) if following < len(fake.runs) else None}
                self._send(200, {"runs": page, "cursors": cursors})

            def POST_feedback(self, url: Any) -> None:
                body = self._body()
                with fake.lock:
                    if body["id"] in fake.feedback:
                        self._send(409, {"detail": "feedback already exists"})
                        return
                    fake.feedback[body["id"]] = body
                self._send(200, body)

            def PATCH_feedback(self, url: Any) -> None:
                feedback_id = url.path.rstrip("/").split("/")[-1]
                body = self._body()
                with fake.lock:
                    if feedback_id not in fake.feedback:
                        self._send(404, {"detail": "no such feedback"})
                        return
                    fake.feedback[feedback_id].update(body)
                self._send(200, fake.feedback[feedback_id])

            def DELETE_feedback(self, url: Any) -> None:
                feedback_id = url.path.rstrip("/").split("/")[-1]
                with fake.lock:
                    if fake.feedback.pop(feedback_id, None) is None:
                        self._send(404, {"detail": "no such feedback"})
                        return
                self._send(200, {})

            def GET_feedback(self, url: Any) -> None:
                self._send(200, list(fake.feedback.values()))

        return Handler


def run(run_id: str, inputs: dict[str, Any], outputs: dict[str, Any] | None, session_id: str) -> dict[str, Any]:
    """A run as /runs/query returns it (the fields the client's Run model needs)."""
    return {
        "id": run_id,
        "name": "ChatModel",
        "run_type": "llm",
        "start_time": "2026-11-01T10:00:00",
        "end_time": "2026-11-01T10:00:01",
        "inputs": inputs,
        "outputs": outputs,
        "extra": {"metadata": {"ls_model_name": "gpt-test"}},
        "session_id": session_id,
        "trace_id": run_id,
        "dotted_order": f"20261101T100000000000Z{run_id}",
    }
