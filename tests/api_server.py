"""Helpers for tests that talk to the worker's local API server (``--rp_serve_api``) over real HTTP.

Not a test module: ``test_bad_inputs.py`` and ``test_load.py`` import it.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ApiServer:
    """``python -m vv_worker.handler --rp_serve_api`` on a free loopback port, as a subprocess."""

    def __init__(self, env: dict[str, str], cwd: Path, start_timeout_s: float = 180):
        self.port = free_port()
        self.log_path = Path(cwd) / f"server-{self.port}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "vv_worker.handler", "--rp_serve_api", "--rp_api_port", str(self.port)]
            + ["--rp_api_host", "127.0.0.1"],
            env=env,
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + start_timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the API server exited at start:\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"the API server did not start:\n{self.log_tail()}") from None
                time.sleep(0.3)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def post(self, route: str, body: bytes, timeout: float = 120) -> tuple[int, dict]:
        """POST raw bytes; returns (HTTP status, parsed JSON body), also for 4xx/5xx answers."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{route}",
            data=body,
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            raw = error.read()
            try:
                return error.code, json.loads(raw)
            except ValueError:
                return error.code, {"raw": raw.decode(errors="replace")}

    def runsync(self, job_input: object, timeout: float = 120) -> tuple[int, dict]:
        """POST ``{"input": job_input}`` to /runsync. Python's json emits NaN/Infinity for non-finite floats."""
        return self.post("/runsync", json.dumps({"input": job_input}).encode(), timeout=timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def error_text(status: int, body: dict) -> str | None:
    """The error of a failed job (runsync ``status: FAILED``) or of a refused request (HTTP 4xx); None on success."""
    if status == 200 and body.get("status") == "COMPLETED":
        return None
    if status == 200:
        return str(body.get("error"))
    return json.dumps(body)
