"""The playground page at ``/`` in a real browser: headless Chromium (Debian's package) driven by Selenium.

Skipped when chromium, chromedriver or selenium is missing (``bash scripts/install_browser.sh`` installs them).
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import speechlike
from speech_server import speech_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
    pytest.skip(
        "chromium and chromedriver are not installed (bash scripts/install_browser.sh)", allow_module_level=True
    )
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--autoplay-policy=no-user-gesture-required",
]


@pytest.fixture(scope="module")
def server(subprocess_env, tmp_path_factory):
    with speech_server(subprocess_env, tmp_path_factory.mktemp("playground-server")) as running:
        yield running


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


def direct(server, body: dict) -> bytes:
    request = urllib.request.Request(
        f"{server.base}/v1/audio/speech", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return response.read()


def fill(browser, server, text: str, seed: int, fmt: str) -> None:
    browser.get(f"{server.base}/")
    box = browser.find_element(By.ID, "text")
    box.clear()
    box.send_keys(text)
    browser.find_element(By.ID, "seed").send_keys(str(seed))
    Select(browser.find_element(By.ID, "format")).select_by_value(fmt)


def speak_and_wait(browser) -> dict:
    browser.find_element(By.ID, "speak").click()
    WebDriverWait(browser, 120).until(
        lambda b: b.execute_script("return window.vvStats && (window.vvStats.done || window.vvStats.error)")
    )
    return browser.execute_script("return window.vvStats")


def downloaded(browser) -> bytes:
    """The bytes behind the page's download link, read inside the page."""
    encoded = browser.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        fetch(document.getElementById("download").href).then((r) => r.arrayBuffer()).then((buffer) => {
          let text = ""; new Uint8Array(buffer).forEach((b) => { text += String.fromCharCode(b); }); done(btoa(text));
        });
        """
    )
    return base64.b64decode(encoded)


def decoded_samples(data: bytes) -> int:
    import av

    with av.open(io.BytesIO(data)) as container:
        return sum(frame.samples for frame in container.decode(audio=0))


TEXT = "Speaker 0: Hello from the playground.\nSpeaker 1: It streams while it speaks, chunk by chunk."


def test_page_streams_pcm_into_web_audio_and_plays_it(browser, server):
    fill(browser, server, TEXT, seed=5, fmt="pcm")
    stats = speak_and_wait(browser)
    assert stats["error"] is None and stats["done"] is True
    expected = direct(server, {"model": "vibevoice", "input": TEXT, "response_format": "pcm", "seed": 5})
    assert stats["bytes"] == len(expected) and stats["chunks"] > 1  # it arrived in pieces, as generated
    assert stats["scheduledSamples"] == len(expected) // 2  # every sample went to the speakers
    # the download is what was played: the same audio as the direct request (a separate generation of it)
    got, want = (np.frombuffer(data, dtype="<i2").astype(int) for data in (downloaded(browser), expected))
    assert got.shape == want.shape and np.abs(got - want).max() <= 4
    # the audio context is rendering: its clock moves on while the scheduled audio plays
    before = browser.execute_script("return window.vvPlayer.context.currentTime")
    WebDriverWait(browser, 10).until(
        lambda b: b.execute_script("return window.vvPlayer.context.currentTime") > before + 0.2
    )
    assert browser.execute_script("return window.vvPlayer.context.state") == "running"
    assert "done in" in browser.find_element(By.ID, "status").text


def test_page_streams_mp3_through_media_source_and_the_audio_element_plays(browser, server):
    fill(browser, server, TEXT, seed=6, fmt="mp3")
    stats = speak_and_wait(browser)
    assert stats["error"] is None
    expected = direct(server, {"model": "vibevoice", "input": TEXT, "response_format": "mp3", "seed": 6})
    assert decoded_samples(downloaded(browser)) == decoded_samples(expected) > 0
    WebDriverWait(browser, 20).until(
        lambda b: b.execute_script("return document.getElementById('player').currentTime > 0.2")
    )
    player = browser.execute_script(
        "const p = document.getElementById('player'); return [p.paused, p.error, p.readyState]"
    )
    assert player[0] is False and player[1] is None and player[2] >= 2


def test_page_uploads_a_reference_and_shows_server_errors(browser, server, tmp_path):
    reference = tmp_path / "voice.wav"
    sf.write(reference, speechlike(3.0), 24000)
    fill(browser, server, "A cloned voice says hello.", seed=7, fmt="wav")
    Select(browser.find_element(By.ID, "voice")).select_by_value("@upload")
    browser.find_element(By.ID, "reference").send_keys(str(reference))
    stats = speak_and_wait(browser)
    assert stats["error"] is None
    samples, rate = sf.read(io.BytesIO(downloaded(browser)), dtype="int16")
    assert rate == 24000 and samples.size == stats["scheduledSamples"] > 0

    fill(browser, server, " ", seed=1, fmt="mp3")
    stats = speak_and_wait(browser)
    assert "input: text is empty" in stats["error"]
    status = browser.find_element(By.ID, "status")
    assert "input: text is empty" in status.text and status.get_attribute("class") == "error"
