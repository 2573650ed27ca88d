"""Job event logging: one JSON line per event, the right fields, and no secrets or audio."""

from __future__ import annotations

import base64
import io
import json
import logging

import pytest

from vv_worker import joblog
from vv_worker.joblog import JobEvents, install_json_handler, scrub, scrub_text

HF_TOKEN = "hf_" + "AbCdEfGh1234567890" * 2
RUNPOD_KEY = "rpa_" + "Z9" * 20
AUDIO_B64 = base64.b64encode(bytes(range(256)) * 8).decode()


@pytest.fixture
def lines():
    stream = io.StringIO()
    handler = install_json_handler(stream)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    joblog.log.removeHandler(handler)
    joblog.log.propagate = True


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_a_successful_job_logs_received_started_finished(lines):
    clock = Clock()
    job = {"id": "job-1", "input": {"text": "Hello there.", "voice": "alice", "seed": 7}}
    events = JobEvents.received(job, clock=clock)
    clock.now += 0.5
    events.started()
    clock.now += 2.0
    output = {
        "audio_b64": AUDIO_B64,
        "duration_seconds": 4.2667,
        "voice_used": "alice",
        "seed_used": 7,
        "finish_reason": "end_of_speech",
        "warnings": [],
        "metrics": {"frames": 32, "frame_cap": 36, "real_time_factor": 0.68, "generation_seconds": 1.9},
    }
    events.done(output)
    received, started, finished = lines()
    assert received == {
        "event": "received",
        "job_id": "job-1",
        "text_length": 12,
        "voice_source": "library",
        "voice": "alice",
        "seed": 7,
    }
    assert started == {"event": "started", "job_id": "job-1", "wait_seconds": 0.5}
    assert finished["event"] == "finished" and finished["job_id"] == "job-1"
    assert finished["frames"] == 32 and finished["real_time_factor"] == 0.68 and finished["audio_seconds"] == 4.2667
    assert finished["run_seconds"] == 2.0 and finished["total_seconds"] == 2.5
    assert "audio_b64" not in json.dumps(finished) and AUDIO_B64[:40] not in json.dumps(finished)


def test_a_failed_job_logs_the_error_without_secrets(lines):
    job = {
        "id": "job-2",
        "input": {
            "text": "x" * 40,
            "reference_audio_url": f"https://user:pw@host.example/a.wav?token={HF_TOKEN}&sig=abc",
        },
    }
    events = JobEvents.received(job)
    events.started()
    url = "https://host.example/a.wav?X-Amz-Signature=secret123"
    events.done({"error": f"reference_audio_url: could not fetch {url} with {HF_TOKEN}"})
    received, _, failed = lines()
    assert received["voice_source"] == "reference_audio_url" and received["reference_audio_host"] == "host.example"
    assert failed["event"] == "failed" and "could not fetch https://host.example/a.wav" in failed["error"]
    text = json.dumps(lines())
    for secret in (HF_TOKEN, "secret123", "X-Amz-Signature", "sig=abc", "user:pw", "?"):
        assert secret not in text


def test_reference_audio_is_never_logged(lines):
    JobEvents.received({"id": "j", "input": {"text": "hi", "reference_audio": "data:audio/wav;base64," + AUDIO_B64}})
    (record,) = lines()
    assert record["voice_source"] == "reference_audio" and record["reference_audio_chars"] > 2000
    assert AUDIO_B64[:64] not in json.dumps(record)


@pytest.mark.parametrize(
    ("raw", "leaked"),
    [
        (f"token is {HF_TOKEN} here", HF_TOKEN),
        (f"Authorization: Bearer {RUNPOD_KEY}", RUNPOD_KEY),
        ("authorization=Bearer abc.def-ghi", "abc.def-ghi"),
        ("Bearer sk-live-1234567890", "sk-live-1234567890"),
        (f"x-api-key: {RUNPOD_KEY}", RUNPOD_KEY),
        (f"blob {AUDIO_B64} end", AUDIO_B64[:65]),
        ("see https://bucket.s3.amazonaws.com/v.wav?X-Amz-Credential=AKIA123&X-Amz-Signature=f00", "AKIA123"),
    ],
)
def test_scrub_text_removes_secrets(raw, leaked):
    assert leaked not in scrub_text(raw)


def test_scrub_keeps_ordinary_text_and_redacts_secret_keys():
    assert scrub_text("text: text is empty; allowed: 1 to 5000 characters") == (
        "text: text is empty; allowed: 1 to 5000 characters"
    )
    assert scrub_text("sha256 " + "ab" * 32) == "sha256 " + "ab" * 32  # a 64-char hex digest is not redacted
    cleaned = scrub({"api_key": "abc", "HF_TOKEN": "x", "nested": {"password": "p", "frames": 3}, "list": [HF_TOKEN]})
    assert cleaned == {
        "api_key": "[redacted]",
        "HF_TOKEN": "[redacted]",
        "nested": {"password": "[redacted]", "frames": 3},
        "list": ["[hf-token]"],
    }


def test_unknown_fields_are_not_logged(lines):
    JobEvents.received({"id": "j", "input": {"text": "hi", "api_key": "k", "webhook": "https://x/y?s=1"}})
    (record,) = lines()
    assert set(record) == {"event", "job_id", "text_length", "voice_source"}


def test_each_event_is_one_line_and_goes_through_logging(caplog):
    with caplog.at_level(logging.INFO, logger=joblog.LOGGER_NAME):
        joblog.log_event("received", 3, note="multi\nline")
    (message,) = [r.getMessage() for r in caplog.records if r.name == joblog.LOGGER_NAME]
    assert "\n" not in message and json.loads(message) == {"event": "received", "job_id": "3", "note": "multi\nline"}


def test_a_lone_surrogate_in_the_input_does_not_break_the_log_line():
    """A UTF-8 stream cannot write a lone surrogate: the line used to be lost ('--- Logging error ---')."""
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="utf-8", errors="strict", write_through=True)
    handler = install_json_handler(stream)
    try:
        JobEvents.received({"id": "job-\udc80", "input": {"text": "hi \ud800", "voice": "al\ud800ice"}})
    finally:
        joblog.log.removeHandler(handler)
        joblog.log.propagate = True
    [line] = [json.loads(text) for text in raw.getvalue().decode("utf-8").splitlines()]
    assert line["event"] == "received" and line["voice"] == "al\ufffdice" and line["job_id"] == "job-\ufffd"
