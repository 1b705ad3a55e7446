"""Shared fixtures: a stub OpenAI-compatible endpoint on loopback, model folders of two architectures."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

#: The key the tests pass; it must never appear in an error, a log or a repr.
KEY = "sk-test-secret-0123456789"


class Stub:
    """An OpenAI-compatible chat-completions endpoint; ``behave(request_number, body)`` decides each answer:
    a string (200 with that content), an int (that status), ``("status", headers)``, or ``"hang"``."""

    def __init__(self, behave: Callable[[int, dict], object]) -> None:
        self.behave, self.requests, self.headers = behave, [], []
        self.lock = threading.Lock()
        self.release = threading.Event()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub.lock:
                    number = len(stub.requests)
                    stub.requests.append(body)
                    stub.headers.append(dict(self.headers))
                action = stub.behave(number, body)
                if action == "hang":
                    stub.release.wait(10)
                    return
                headers: dict[str, str] = {}
                if isinstance(action, tuple):
                    action, headers = action
                if isinstance(action, int):
                    payload = json.dumps(
                        {"error": {"message": f"status {action} for you, key {KEY}"}}
                    ).encode()
                    self.send_response(action)
                else:
                    payload = json.dumps(
                        {"choices": [{"message": {"role": "assistant", "content": action}}]}
                    ).encode()
                    self.send_response(200)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub() -> Iterator[Callable[[Callable[[int, dict], object]], Stub]]:
    made: list[Stub] = []

    def make(behave: Callable[[int, dict], object]) -> Stub:
        made.append(Stub(behave))
        return made[-1]

    yield make
    for server in made:
        server.close()


@pytest.fixture(scope="session")
def qwen2_dir(tiny_qwen2_dir: Path) -> Path:
    """A second architecture: the core's tiny Qwen2 with tied embeddings and tiny_lm's tokenizer (chat template)."""
    return tiny_qwen2_dir
