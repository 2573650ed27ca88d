"""scripts/fetch_voices.py against a loopback HTTP server: download, wrong hash, already present, 404."""

from __future__ import annotations

import hashlib
import http.server
import importlib.util
import json
import subprocess
import sys
import threading

import pytest
from conftest import REPO

SCRIPT = REPO / "scripts" / "fetch_voices.py"
GOOD = b"RIFF" + b"\x01" * 2000
OTHER = b"RIFF" + b"\x02" * 1500


def _load_script():
    spec = importlib.util.spec_from_file_location("fetch_voices", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


fetch = _load_script()


@pytest.fixture(scope="module")
def server():
    """Serves GOOD at /good.wav and /alt.wav, OTHER at /other.wav, 404 for anything else; counts requests."""
    files = {"/good.wav": GOOD, "/alt.wav": GOOD, "/other.wav": OTHER}
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            body = files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", hits
    httpd.shutdown()
    httpd.server_close()


def _manifest(path, base, entries):
    voices = [
        {"name": name, "file": f"{name}.wav", "url": f"{base}{url}", "sha256": hashlib.sha256(content).hexdigest()}
        for name, url, content in entries
    ]
    path.write_text(json.dumps({"voices": voices}))
    return path


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith(".part")]


def test_downloads_and_verifies(server, tmp_path):
    base, _ = server
    manifest = _manifest(tmp_path / "manifest.json", base, [("alice", "/good.wav", GOOD)])
    outcomes = fetch.fetch_voices(manifest, tmp_path / "voices", echo=lambda *_: None)
    assert [(o.name, o.status) for o in outcomes] == [("alice", "downloaded")]
    assert (tmp_path / "voices" / "alice.wav").read_bytes() == GOOD
    assert _leftovers(tmp_path / "voices") == []


def test_download_reports_progress_up_to_the_declared_size(server, tmp_path, capsys):
    base, _ = server
    manifest = _manifest(tmp_path / "manifest.json", base, [("alice", "/good.wav", GOOD)])
    seen: list[tuple[str, int, int | None]] = []
    fetch.fetch_voices(manifest, tmp_path / "voices", echo=lambda *_: None, progress=lambda *a: seen.append(a))
    assert seen and seen[-1] == ("alice.wav", len(GOOD), len(GOOD))
    assert [done for _, done, _ in seen] == sorted(done for _, done, _ in seen)
    # the command line prints the finished line (and, on a terminal, the running count) to stderr
    assert fetch.main(["--dir", str(tmp_path / "again"), "--manifest", str(manifest)]) == 0
    assert f"downloading alice.wav: {len(GOOD) // 1000} of {len(GOOD) // 1000} kB (100%)" in capsys.readouterr().err


def test_wrong_hash_leaves_nothing_behind(server, tmp_path):
    base, _ = server
    manifest = _manifest(tmp_path / "manifest.json", base, [("bob", "/other.wav", GOOD)])  # hash of GOOD
    folder = tmp_path / "voices"
    outcomes = fetch.fetch_voices(manifest, folder, echo=lambda *_: None)
    assert outcomes[0].status == "failed" and "sha256 mismatch" in outcomes[0].detail
    assert not (folder / "bob.wav").exists() and _leftovers(folder) == []


def test_present_file_with_right_hash_is_not_downloaded_again(server, tmp_path):
    base, hits = server
    folder = tmp_path / "voices"
    folder.mkdir()
    (folder / "alice.wav").write_bytes(GOOD)
    manifest = _manifest(tmp_path / "manifest.json", base, [("alice", "/alt.wav", GOOD)])
    hits.clear()
    outcomes = fetch.fetch_voices(manifest, folder, echo=lambda *_: None)
    assert outcomes[0].status == "present" and hits == []


def test_present_file_with_wrong_hash_is_replaced(server, tmp_path):
    base, _ = server
    folder = tmp_path / "voices"
    folder.mkdir()
    (folder / "alice.wav").write_bytes(b"stale")
    manifest = _manifest(tmp_path / "manifest.json", base, [("alice", "/good.wav", GOOD)])
    assert fetch.fetch_voices(manifest, folder, echo=lambda *_: None)[0].status == "downloaded"
    assert (folder / "alice.wav").read_bytes() == GOOD


def test_cli_reports_404_and_exits_non_zero(server, tmp_path):
    base, _ = server
    manifest = _manifest(
        tmp_path / "manifest.json", base, [("alice", "/good.wav", GOOD), ("ghost", "/missing.wav", GOOD)]
    )
    folder = tmp_path / "voices"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--dir", str(folder), "--manifest", str(manifest), "--timeout", "10"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "ghost (ghost.wav) failed: HTTP 404" in done.stderr
    assert "1 of 2 voices in place" in done.stdout
    assert (folder / "alice.wav").read_bytes() == GOOD and not (folder / "ghost.wav").exists()
    assert _leftovers(folder) == []

    again = subprocess.run(
        [sys.executable, str(SCRIPT), "--dir", str(folder), "--manifest", str(manifest)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 1 and "already present" in again.stdout


def test_cli_all_good_exits_zero_and_bad_manifest_exits_two(server, tmp_path):
    base, _ = server
    manifest = _manifest(tmp_path / "manifest.json", base, [("alice", "/good.wav", GOOD)])
    assert fetch.main(["--dir", str(tmp_path / "v"), "--manifest", str(manifest)]) == 0
    (tmp_path / "bad.json").write_text(
        json.dumps({"voices": [{"name": "x", "file": "../x.wav", "url": "https://a/b", "sha256": "0" * 64}]})
    )
    assert fetch.main(["--dir", str(tmp_path / "v"), "--manifest", str(tmp_path / "bad.json")]) == 2
    assert fetch.main(["--dir", str(tmp_path / "v"), "--manifest", str(tmp_path / "absent.json")]) == 2


def test_repo_manifest_is_valid():
    entries = fetch.read_manifest(REPO / "voices" / "manifest.json")
    assert len(entries) >= 1 and all(len(e["sha256"]) == 64 for e in entries)
