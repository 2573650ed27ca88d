"""Bad inputs over real HTTP: every case of tests/data/bad_inputs.json is POSTed to /runsync of one local API
server and must fail with a clean error naming the problem, while the worker keeps serving good requests.

Cases that need to reach loopback test servers (redirects, a server that never answers, a body over the size
cap) run on a second worker started with RUNPOD_ALLOW_PRIVATE_DOWNLOAD_URLS=true; every other case runs on the
default worker, which must refuse loopback URLs. Private-range and cloud-metadata addresses are covered by unit
tests of the SDK's address check with a faked resolver: nothing is connected to but loopback.
"""

from __future__ import annotations

import base64
import http.server
import io
import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from api_server import ApiServer, error_text, free_port
from conftest import decode_wav, speechlike

from vv_worker.engine import SAMPLES_PER_FRAME
from vv_worker.limits import DEFAULT_MAX_TEXT_CHARS, DEFAULT_MAX_TEXT_TOKENS, MAX_SEGMENTS
from vv_worker.pauses import MAX_PAUSES

CORPUS_PATH = Path(__file__).parent / "data" / "bad_inputs.json"
CASES = json.loads(CORPUS_PATH.read_text())["cases"]
DEFAULT_CASES = [case for case in CASES if case.get("server", "default") == "default"]
PRIVATE_CASES = [case for case in CASES if case.get("server") == "private"]
NON_FINITE = {"__NaN__": float("nan"), "__Infinity__": float("inf"), "__-Infinity__": float("-inf")}
URL_MAX_BYTES = 20000  # VV_URL_MAX_BYTES of the private worker
GOOD_EVERY = 10  # a good request after every this many bad ones
# the tiny model always runs to its frame cap: VV_EXTRA_FRAMES (4) + ceil(VV_FRAMES_PER_CHAR (0.25) x characters)
GOOD = {"text": "Hi.", "seed": 1}
GOOD_FRAMES = 4 + 1


# --- audio builders -------------------------------------------------------------------------------


def _encode(samples: np.ndarray, rate: int, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _reference(raw: bytes) -> dict:
    return {"text": "Hi.", "reference_audio": _b64(raw)}


def _good_wav() -> bytes:
    return _encode(speechlike(1.5), 24000)


BUILDERS = {
    "text_over_limit": lambda: {"text": "a" * (DEFAULT_MAX_TEXT_CHARS + 1)},
    "pause_too_many": lambda: {"text": " ".join(["word [pause 1ms]"] * (MAX_PAUSES + 1))},
    "pause_total_over": lambda: {"text": " ".join(["word [pause 10s]"] * 31)},
    "segments_too_many": lambda: {"segments": [{"text": "Hi."}] * (MAX_SEGMENTS + 1)},
    "segments_over_limit": lambda: {"segments": [{"text": "a" * (DEFAULT_MAX_TEXT_CHARS // 2 + 1)}] * 2},
    "register_library_name": lambda: {"action": "register_voice", "name": "ANN", "reference_audio": _b64(_good_wav())},
    "register_silent": lambda: {
        "action": "register_voice",
        "name": "quiet",
        "reference_audio": _b64(_encode(np.zeros(2 * 24000, np.float32), 24000)),
    },
    "register_too_short": lambda: {
        "action": "register_voice",
        "name": "brief",
        "reference_audio": _b64(_encode(speechlike(0.4), 24000)),
    },
    "register_long_description": lambda: {
        "action": "register_voice",
        "name": "wordy",
        "reference_audio": _b64(_good_wav()),
        "description": "d" * 201,
    },
    "url_too_long": lambda: {"text": "Hi.", "reference_audio_url": "https://example.com/" + "a" * 4100},
    "ref_png": lambda: _reference(b"\x89PNG\r\n\x1a\n" + bytes(200)),
    "ref_truncated_header": lambda: _reference(_good_wav()[:20]),
    "ref_header_only": lambda: _reference(_good_wav()[:44]),
    "ref_zero_samples": lambda: _reference(_encode(np.zeros(0, np.float32), 24000)),
    "ref_truncated_flac": lambda: _reference(
        (lambda raw: raw[: len(raw) // 2])(_encode(speechlike(1.5), 24000, "FLAC"))
    ),
    # an hour of 8 kHz silence compresses to about 90 kB of FLAC; the header's length is refused before decoding
    "ref_hour_long_flac": lambda: _reference(_encode(np.zeros(3600 * 8000, np.int16), 8000, "FLAC")),
    "ref_9_channels": lambda: _reference(_encode(np.stack([speechlike(1.5, 8000)] * 9, axis=1), 8000)),
    "ref_4000_hz": lambda: _reference(_encode(speechlike(1.5, 4000), 4000)),
    "ref_200_khz": lambda: _reference(_encode(speechlike(1.2, 200_000), 200_000)),
    "ref_nan_samples": lambda: _reference(_encode(_with(speechlike(1.5), 100, np.nan), 24000, "WAV", "FLOAT")),
    "ref_inf_samples": lambda: _reference(_encode(_with(speechlike(1.5), 100, np.inf), 24000, "WAV", "FLOAT")),
    "ref_silence": lambda: _reference(_encode(np.zeros(2 * 24000, np.float32), 24000)),
    "ref_too_short": lambda: _reference(_encode(speechlike(0.4), 24000)),
    "ref_too_long": lambda: _reference(_encode(speechlike(70, 8000), 8000, "FLAC")),
    "speaker_ref_not_audio": lambda: {
        "text": "Speaker 1: a\nSpeaker 2: b",
        "speakers": {"2": {"reference_audio": _b64(b"definitely not audio " * 20)}},
    },
    "ref_truncated_wav": lambda: _reference(_good_wav()[: len(_good_wav()) * 2 // 3]),
    "ref_aiff": lambda: _reference(_encode(speechlike(1.5), 24000, "AIFF", "PCM_16")),
    "ref_au": lambda: _reference(_encode(speechlike(1.5), 24000, "AU", "PCM_16")),
    "ref_caf": lambda: _reference(_encode(speechlike(1.5), 24000, "CAF", "PCM_16")),
    "ref_w64": lambda: _reference(_encode(speechlike(1.5), 24000, "W64", "PCM_16")),
    "ref_wav_ulaw": lambda: _reference(_encode(speechlike(1.5), 24000, "WAV", "ULAW")),
    "unknown_keys_100000": lambda: {"text": "Hi.", **{f"key{i}": i for i in range(100_000)}},
    # the tiny tokenizer takes 4 tokens per emoji (its 4 UTF-8 bytes)
    "text_emoji_over_token_limit": lambda: {"text": "\U0001f600" * (DEFAULT_MAX_TEXT_TOKENS // 4 + 1)},
    "speaker_ref_silent_data_uri": lambda: {
        "text": "Speaker 1: a\nSpeaker 2: b",
        "speakers": {"1": {"reference_audio": "data:audio/wav;base64," + _b64(_encode(np.zeros(24000), 24000))}},
    },
}


def _with(samples: np.ndarray, index: int, value: float) -> np.ndarray:
    samples = samples.copy()
    samples[index] = value
    return samples


def _materialize(value, urls: dict[str, str]):
    """The case's input with non-finite markers and loopback URL placeholders filled in."""
    if isinstance(value, str):
        if value in NON_FINITE:
            return NON_FINITE[value]
        for name, base in urls.items():
            value = value.replace("{" + name + "}", base)
        return value
    if isinstance(value, dict):
        return {key: _materialize(item, urls) for key, item in value.items()}
    if isinstance(value, list):
        return [_materialize(item, urls) for item in value]
    return value


def case_input(case: dict, urls: dict[str, str]):
    if "builder" in case:
        return BUILDERS[case["builder"]]()
    return _materialize(case["input"], urls)


# --- loopback servers -----------------------------------------------------------------------------


class _FileHandler(http.server.BaseHTTPRequestHandler):
    """Routes of the loopback file server; ``other`` is the base URL of a second server (another port)."""

    other = ""
    voice = b""

    def do_GET(self):
        routes = {
            "/voice.wav": (200, self.voice),
            "/text.txt": (200, b"this is a text file, not audio\n" * 10),
            "/big.bin": (200, bytes(50_000)),
        }
        redirects = {
            "/redirect-other": f"{self.other}/text.txt",
            "/redirect-voice": f"{self.other}/voice.wav",
            "/redirect-file": "file:///etc/passwd",
            "/redirect-loop": "/redirect-loop",
        }
        if self.path in redirects:
            self.send_response(302)
            self.send_header("Location", redirects[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/big-chunked.bin":  # no Content-Length: the body ends when the connection closes
            self.send_response(200)
            self.end_headers()
            for _ in range(10):
                self.wfile.write(bytes(5000))
        elif self.path in routes:
            status, body = routes[self.path]
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

    def log_message(self, *args):
        pass


def _serve(handler: type) -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class _SilentServer:
    """Accepts connections and never answers: the fetch must time out."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.held: list[socket.socket] = []
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self):
        self.stopped = True
        for conn in self.held:
            conn.close()
        self.sock.close()


@pytest.fixture(scope="module")
def loopback():
    # 1.1 s at 8 kHz, 16-bit: about 17.6 kB, under the private worker's 20 000-byte cap
    voice = _encode(speechlike(1.1, 8000), 8000)
    other = _serve(type("OtherHandler", (_FileHandler,), {"voice": voice}))
    other_base = f"http://127.0.0.1:{other.server_address[1]}"
    files = _serve(type("FilesHandler", (_FileHandler,), {"voice": voice, "other": other_base}))
    silent = _SilentServer()
    yield {
        "files": f"http://127.0.0.1:{files.server_address[1]}",
        "silent": f"http://127.0.0.1:{silent.sock.getsockname()[1]}",
        "closed": f"http://127.0.0.1:{free_port()}",
    }
    for server in (files, other):
        server.shutdown()
        server.server_close()
    silent.close()


@pytest.fixture(scope="module")
def voices_dir(tmp_path_factory) -> Path:
    """A two-voice library (ann, bob) made of synthetic recordings, so the suite never needs ../shared."""
    folder = tmp_path_factory.mktemp("bad-inputs-voices")
    entries = []
    for seed, name in enumerate(("ann", "bob")):
        sf.write(folder / f"{name}.wav", speechlike(1.5, 16000, seed=seed), 16000, subtype="PCM_16")
        entries.append(
            {"name": name, "file": f"{name}.wav", "url": "u", "sha256": "s", "license": "MIT", "language": "en"}
            | {"gender": "female", "description": "synthetic"}
        )
    (folder / "manifest.json").write_text(json.dumps({"voices": entries}))
    return folder


def _env(subprocess_env: dict, voices_dir: Path, **extra: str) -> dict:
    # one OpenMP thread: on a small shared CI box torch's spinning OpenMP threads otherwise turn a 0.05 s job into
    # several seconds whenever another process holds a core
    env = dict(subprocess_env, VV_VOICES_DIR=str(voices_dir), NO_PROXY="127.0.0.1,localhost", OMP_NUM_THREADS="1")
    return env | extra


@pytest.fixture(scope="module")
def worker(subprocess_env, voices_dir, loopback, tmp_path_factory):
    server = ApiServer(_env(subprocess_env, voices_dir), tmp_path_factory.mktemp("worker"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def private_worker(subprocess_env, voices_dir, loopback, tmp_path_factory):
    env = _env(
        subprocess_env,
        voices_dir,
        RUNPOD_ALLOW_PRIVATE_DOWNLOAD_URLS="true",
        VV_URL_TIMEOUT_S="2",
        VV_URL_MAX_BYTES=str(URL_MAX_BYTES),
    )
    server = ApiServer(env, tmp_path_factory.mktemp("private-worker"))
    yield server
    server.stop()


def assert_good_request_succeeds(server: ApiServer, payload: dict = GOOD, frames: int = GOOD_FRAMES) -> dict:
    status, body = server.runsync(payload)
    assert status == 200 and body.get("status") == "COMPLETED", (body, server.log_tail())
    samples, rate, _ = decode_wav(body["output"]["audio_b64"])
    assert rate == 24000 and samples.size == frames * SAMPLES_PER_FRAME
    return body["output"]


def assert_clean_failure(case: dict, server: ApiServer, status: int, body: dict) -> None:
    error = error_text(status, body)
    assert error is not None, f"{case['id']} succeeded: {json.dumps(body)[:300]}"
    assert status == case.get("http_status", 200), body
    if status == 200:
        assert body["status"] == "FAILED" and set(body) == {"id", "status", "error"}, body
    assert case["expect"] in error, f"{case['id']}: {error!r} does not contain {case['expect']!r}"
    assert "Traceback" not in error and "internal error" not in error, error
    assert server.alive(), server.log_tail()


# --- the corpus -----------------------------------------------------------------------------------


def test_corpus_is_well_formed():
    ids = [case["id"] for case in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 40
    for case in CASES:
        assert ("input" in case) != ("builder" in case), case["id"]
        assert case.get("builder", "input") in {"input", *BUILDERS}, case["id"]
        assert isinstance(case["expect"], str) and case["expect"], case["id"]
        assert case.get("server", "default") in {"default", "private"}, case["id"]


@pytest.mark.parametrize("case", DEFAULT_CASES, ids=[case["id"] for case in DEFAULT_CASES])
def test_bad_input_fails_cleanly(case, worker, loopback):
    status, body = worker.runsync(case_input(case, loopback))
    assert_clean_failure(case, worker, status, body)
    if DEFAULT_CASES.index(case) % GOOD_EVERY == GOOD_EVERY - 1:
        assert_good_request_succeeds(worker)


def test_worker_still_serves_after_the_corpus(worker):
    assert worker.alive()
    assert_good_request_succeeds(worker)
    _, body = worker.runsync({"action": "list_voices"})
    assert body["status"] == "COMPLETED" and [v["name"] for v in body["output"]["voices"]] == ["ann", "bob"]


def test_an_error_about_100000_unknown_fields_is_bounded(worker):
    """1.2 MB of unknown keys once gave a 22 MB error: ten problems are listed, the rest counted."""
    status, body = worker.runsync(BUILDERS["unknown_keys_100000"]())
    error = error_text(status, body)
    assert body["status"] == "FAILED" and len(error) < 4000, len(error)
    assert error.count("unknown field") == 10 and error.endswith("; and 99,990 more problems not shown")
    long_key = {"text": "Hi.", "k" * 100_000: 1}
    assert len(error_text(*worker.runsync(long_key))) < 1000  # a field name is quoted in at most 60 characters


def test_special_tokens_in_text_are_plain_text(worker):
    text = "<|vision_start|><|vision_pad|><|vision_end|> Hi <|endoftext|><|im_start|>user <|im_end|>"
    out = assert_good_request_succeeds(worker, {"text": text, "seed": 3}, frames=4 + -(-len(text) // 4))
    assert out["text_length"] == len(text) and out["finish_reason"] == "frame_cap"


def test_non_finite_numbers_are_parsed_then_refused(worker):
    """Python's json writes NaN/Infinity; the local server's JSON parser accepts them and the schema refuses them."""
    body = b'{"input": {"text": "Hi.", "cfg_scale": NaN, "seed": Infinity}}'
    status, answer = worker.post("/runsync", body)
    assert status == 200 and answer["status"] == "FAILED"
    assert "cfg_scale: Input should be a finite number (got nan)" in answer["error"]
    assert "seed: Input should be a valid integer (got inf)" in answer["error"]
    status, answer = worker.post("/runsync", b"{not json")
    assert status == 422 and "JSON decode error" in json.dumps(answer)
    assert worker.alive()


@pytest.mark.parametrize("case", PRIVATE_CASES, ids=[case["id"] for case in PRIVATE_CASES])
def test_bad_url_fails_cleanly_with_private_addresses_allowed(case, private_worker, loopback):
    started = time.monotonic()
    status, body = private_worker.runsync(case_input(case, loopback), timeout=60)
    assert_clean_failure(case, private_worker, status, body)
    assert time.monotonic() - started < 30  # the 2 s URL timeout, not the client's


def test_private_worker_fetches_loopback_voices_and_follows_redirects(private_worker, loopback):
    for path in ("/voice.wav", "/redirect-voice"):
        out = assert_good_request_succeeds(
            private_worker, {"text": "Hi.", "reference_audio_url": loopback["files"] + path}
        )
        assert out["voice_used"] == "reference_audio_url"


# --- the SSRF address check, with a faked resolver: no connection is attempted ----------------------

BLOCKED = [
    "10.0.0.1",
    "10.255.255.255",
    "172.16.0.1",
    "172.31.255.254",
    "192.168.1.1",
    "169.254.169.254",  # cloud instance metadata
    "100.64.0.1",  # carrier-grade NAT
    "127.0.0.1",
    "0.0.0.0",
    "fd00::1",
    "fe80::1",
    "::1",
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "224.0.0.1",
    "not an address",
]


@pytest.fixture
def protected(monkeypatch):
    """SSRF protection on; any attempt to connect fails the test."""
    from runpod.serverless.utils import rp_ssrf

    monkeypatch.delenv("RUNPOD_ALLOW_PRIVATE_DOWNLOAD_URLS", raising=False)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)

    def no_connection(*args, **kwargs):
        raise AssertionError("a connection was attempted")

    monkeypatch.setattr(rp_ssrf, "_get_via_first_reachable_ip", no_connection)
    return rp_ssrf


def _fake_dns(monkeypatch, table: dict[str, list[str]]):
    def getaddrinfo(host, port, *args, **kwargs):
        family = {True: socket.AF_INET6, False: socket.AF_INET}
        return [(family[":" in ip], socket.SOCK_STREAM, 6, "", (ip, port)) for ip in table[host]]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.mark.parametrize("address", BLOCKED)
def test_non_public_addresses_are_not_safe(protected, address):
    assert not protected.is_safe_address(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.216.34", "2606:4700:4700::1111"])
def test_public_addresses_are_safe(protected, address):
    assert protected.is_safe_address(address)


@pytest.mark.parametrize("address", BLOCKED[:-1])
def test_a_host_resolving_to_a_non_public_address_is_refused(protected, monkeypatch, address):
    from vv_worker.voices import VoiceError, fetch_url

    _fake_dns(monkeypatch, {"voices.example": [address]})
    with pytest.raises(protected.SSRFError, match="non-public address"):
        protected.resolve_and_validate("voices.example", 443)
    with pytest.raises(VoiceError, match=rf"^reference_audio_url: refused: .*non-public address {address}$"):
        fetch_url("https://voices.example/a.wav", timeout_s=2, max_bytes=10**6)


def test_a_host_resolving_to_public_and_private_addresses_is_refused(protected, monkeypatch):
    _fake_dns(monkeypatch, {"mixed.example": ["93.184.216.34", "10.0.0.1"]})
    with pytest.raises(protected.SSRFError, match=r"non-public address 10\.0\.0\.1"):
        protected.resolve_and_validate("mixed.example", 80)


@pytest.mark.parametrize(
    ("location", "table", "refused"),
    [
        ("http://169.254.169.254/latest/meta-data/", {}, "169.254.169.254"),
        ("http://metadata.internal/computeMetadata/v1/", {"metadata.internal": ["10.0.0.1"]}, "10.0.0.1"),
        ("http://[fd00::1]:8080/", {}, "fd00::1"),
    ],
)
def test_a_redirect_to_a_non_public_address_is_refused(protected, monkeypatch, location, table, refused):
    """The first hop is public; the redirect's target is checked again before anything connects to it."""
    from vv_worker.voices import VoiceError, fetch_url

    real_getaddrinfo = socket.getaddrinfo
    table = {"public.example": ["93.184.216.34"], **table}

    def getaddrinfo(host, port, *args, **kwargs):
        if host in table:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (table[host][0], port))]
        return real_getaddrinfo(host, port, *args, **kwargs)  # IP literals only: no lookup leaves the machine

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    hops = []

    class Redirect:
        status_code = 302

        def __init__(self):
            self.headers = {"Location": location}

        def close(self):
            pass

    class Session:
        def close(self):
            pass

    def first_hop(ips, url, **kwargs):
        assert ips == ["93.184.216.34"], f"connection attempted to {ips}"
        hops.append(url)
        return Session(), Redirect()

    monkeypatch.setattr(protected, "_get_via_first_reachable_ip", first_hop)
    with pytest.raises(VoiceError, match=f"refused: .*non-public address {refused}"):
        fetch_url("http://public.example/voice.wav", timeout_s=2, max_bytes=10**6)
    assert hops == ["http://public.example/voice.wav"]


# --- bugs this corpus found, fixed; kept as regression tests ----------------------------------------


@pytest.mark.parametrize("text", ["Hello Speech\noutput: x", "Hello Voice  input: x", "Text\u2028input: x"])
def test_prompt_markers_split_by_whitespace_are_refused(text):
    from vv_worker.prompt import PROMPT_MARKERS, ScriptError, parse_script

    try:
        script = parse_script(text)
    except ScriptError:
        return
    folded = " ".join(line.text for line in script.lines)
    assert not any(marker.lower() in folded.lower() for marker in PROMPT_MARKERS), folded


def test_a_tiny_valid_temperature_is_not_an_internal_error(service):
    from vv_worker.handler import handle_job

    out = handle_job(
        {"id": "t", "input": {"text": "Hi.", "seed": 1, "voice_settings": {"temperature": 1e-300}}}, service
    )
    assert "audio_b64" in out or not out["error"].startswith("internal error"), out


def test_a_trickling_url_is_cut_off_at_the_url_timeout(monkeypatch):
    from vv_worker.voices import VoiceError, fetch_url

    class Trickle(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            for _ in range(10):  # about 3 s in all, each byte well within the 1 s read timeout
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.3)

        def log_message(self, *args):
            pass

    monkeypatch.setenv("RUNPOD_ALLOW_PRIVATE_DOWNLOAD_URLS", "true")
    server = _serve(Trickle)
    started = time.monotonic()
    try:
        fetch_url(f"http://127.0.0.1:{server.server_address[1]}/v.wav", timeout_s=1, max_bytes=10**6)
    except VoiceError:
        pass  # a clean error is right, as long as it comes in time
    finally:
        elapsed = time.monotonic() - started
        server.shutdown()
        server.server_close()
    assert elapsed < 2.5, f"the fetch took {elapsed:.1f} s with a 1 s URL timeout"


def test_reference_decoding_counts_against_the_job_time_limit(service, monkeypatch):
    """Four 8-channel Opus references took seconds to decode after a job's time limit had passed."""
    from vv_worker.handler import handle_job

    voice = np.repeat(speechlike(20, 48000)[:, None], 8, axis=1)
    reference = {"reference_audio": _b64(_encode(voice, 48000, "OGG", "OPUS"))}
    script = "\n".join(f"Speaker {n}: line {n}." for n in range(4))
    payload = {"text": script, "speakers": {str(n): reference for n in range(4)}}
    started = time.monotonic()
    decode_all = handle_job(
        {"id": "t", "input": {**payload, "text": "Speaker 0: x", "speakers": {"0": reference}}}, service
    )
    one_decode = time.monotonic() - started
    assert "audio_b64" in decode_all, decode_all  # a valid reference: only the time limit stops the job below
    monkeypatch.setattr(service.settings, "job_timeout", 0.2)
    started = time.monotonic()
    out = handle_job({"id": "t", "input": payload}, service)
    elapsed = time.monotonic() - started
    assert out == {"error": "the job ran longer than its time limit of 0.2 s (VV_JOB_TIMEOUT) and was stopped"}
    # four decodes would take four times one job's decode; the limit stops the first within a block or two
    assert elapsed < 0.2 + one_decode / 2, (elapsed, one_decode)
