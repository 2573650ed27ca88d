"""The HTTP mode (``python -m vv_worker.server``) on a free loopback port, for tests that use real clients.

Not a test module: ``test_server.py`` and ``test_playground.py`` import it.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from api_server import free_port


class SpeechServer:
    def __init__(self, env: dict[str, str], cwd: Path, start_timeout_s: float = 180):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(cwd) / f"speech-server-{self.port}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "vv_worker.server", "--port", str(self.port)],
            env=env,
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.ping_statuses: list[int] = []  # every /ping answer seen while starting, in order
        deadline = time.monotonic() + start_timeout_s
        while not self.ping_statuses or self.ping_statuses[-1] != 200:
            if self.process.poll() is not None:
                raise RuntimeError(f"the speech server exited at start:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the speech server did not become ready:\n{self.log_tail()}")
            status = self.ping()
            if status is not None:
                self.ping_statuses.append(status)
            time.sleep(0.05)

    def ping(self) -> int | None:
        try:
            with urllib.request.urlopen(f"{self.base}/ping", timeout=5) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code
        except OSError:
            return None  # not listening yet

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


@contextlib.contextmanager
def speech_server(env: dict[str, str], cwd: Path) -> Iterator[SpeechServer]:
    server = SpeechServer(env, cwd)
    try:
        yield server
    finally:
        server.stop()
