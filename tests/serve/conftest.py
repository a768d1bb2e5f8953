"""A real specgen server on 127.0.0.1 (a free port), started by the tests, driven with the official client."""
from __future__ import annotations

import socket
import threading
import time
from typing import Any, Iterator

import pytest


class RunningServer:
    def __init__(self, bundle: Any, **cfg: Any) -> None:
        import uvicorn

        from specgen.serve.app import create_app
        from specgen.serve.config import ServeConfig

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.config = ServeConfig(port=self.port, **cfg)
        self.app = create_app(bundle, self.config)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 60
        while not self.server.started:
            assert time.time() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    def client(self, api_key: str = "unused", **kw: Any) -> Any:
        import openai

        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, timeout=120, **kw)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="session")
def server(real_bundle: Any) -> Iterator[RunningServer]:
    srv = RunningServer(real_bundle, method="pld")
    yield srv
    srv.stop()
