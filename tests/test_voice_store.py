"""The registered-voice store: names, caps, round trips, atomic writes, concurrent writers, damaged files."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pytest
from conftest import speechlike

from vv_worker import voice_store
from vv_worker.voice_store import NAME_RULE, VoiceStore, default_root, samples_sha256
from vv_worker.voices import VoiceError


@pytest.fixture
def store(tmp_path) -> VoiceStore:
    return VoiceStore(tmp_path / "voices")


def test_register_list_load_round_trip_is_bit_exact(store):
    samples = speechlike(2.0)
    meta = store.register("Narrator_1", samples, description="warm, low")
    assert meta["name"] == "Narrator_1" and meta["seconds"] == 2.0 and meta["description"] == "warm, low"
    loaded = store.load("narrator_1")  # names are case-insensitive
    assert loaded.dtype == np.float32 and np.array_equal(loaded, samples)
    assert store.list() == [meta] and store.info("NARRATOR_1") == meta
    assert store.names() == ["narrator_1"] and store.has("Narrator_1") and not store.has("other")
    assert [p.name for p in store.root.iterdir()] == ["narrator_1.npz"]  # no temporary left behind


@pytest.mark.parametrize(
    "name", ["", "../etc/passwd", "a/b", "a.b", ".hidden", "-dash-first", "x" * 49, " pad", "ñame", "a b", None, 5]
)
def test_invalid_names_are_refused_and_never_become_paths(store, tmp_path, name):
    for call in (lambda: store.register(name, speechlike(1.5)), lambda: store.load(name), lambda: store.delete(name)):
        with pytest.raises(VoiceError, match=NAME_RULE.replace("(", r"\(").replace(")", r"\)")):
            call()
    assert not store.has(name)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == []


def test_duplicates_are_refused_until_deleted(store):
    store.register("host", speechlike(1.5))
    with pytest.raises(VoiceError, match="'host' is already registered; delete it first"):
        store.register("HOST", speechlike(1.5, seed=1))
    store.delete("Host")
    assert store.list() == [] and not store.has("host")
    with pytest.raises(VoiceError, match="no registered voice 'host'"):
        store.load("host")
    with pytest.raises(VoiceError, match="no registered voice 'host'"):
        store.delete("host")
    other = speechlike(1.5, seed=2)
    store.register("host", other)
    assert np.array_equal(store.load("host"), other)  # the cache noticed the new file


def test_caps_on_count_length_description_and_samples(tmp_path):
    store = VoiceStore(tmp_path, max_voices=2, min_seconds=1.0, max_seconds=3.0)
    store.register("a", speechlike(1.0))
    store.register("b", speechlike(3.0))
    with pytest.raises(VoiceError, match="holds 2 voices, the most it may"):
        store.register("c", speechlike(1.5))
    store.delete("a")
    with pytest.raises(VoiceError, match=r"3.50 s of voice; allowed: 1 to 3 s"):
        store.register("c", speechlike(3.5))
    with pytest.raises(VoiceError, match=r"0.50 s of voice"):
        store.register("c", speechlike(0.5))
    with pytest.raises(VoiceError, match="description: 201 characters; at most 200"):
        store.register("c", speechlike(1.5), description="x" * 201)
    bad = speechlike(1.5)
    bad[10] = np.nan
    for samples in (bad, speechlike(1.5).astype(np.float64), np.stack([speechlike(1.5)] * 2)):
        with pytest.raises(VoiceError, match="float32 mono samples without NaN"):
            store.register("c", samples)
    assert store.names() == ["b"]


def test_storage_root_is_the_network_volume_when_mounted(tmp_path):
    local = tmp_path / "local"
    assert default_root(local, volume=tmp_path / "absent") == local
    (tmp_path / "volume").mkdir()
    assert default_root(local, volume=tmp_path / "volume") == tmp_path / "volume" / "vv-worker" / "voices"


def test_stale_temporaries_are_removed_and_fresh_ones_kept(store):
    store.root.mkdir(parents=True)
    stale, fresh = store.root / ".old.tmp", store.root / ".busy.tmp"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"x")
    old = time.time() - voice_store.STALE_TEMP_SECONDS - 10
    os.utime(stale, (old, old))
    store.register("v", speechlike(1.5))
    assert not stale.exists() and fresh.exists()
    assert store.names() == ["v"]  # temporaries are never listed


def test_without_hard_links_the_rename_path_still_refuses_duplicates(store, monkeypatch):
    def no_links(*_args):
        raise OSError(errno.EPERM, "no hard links here")

    monkeypatch.setattr(os, "link", no_links)
    store.register("v", speechlike(1.5))
    assert np.array_equal(store.load("v"), speechlike(1.5))
    with pytest.raises(VoiceError, match="already registered"):
        store.register("v", speechlike(1.5))
    assert [p.name for p in store.root.iterdir()] == ["v.npz"]


def _register_in_process(root: str, seed: int) -> str:
    try:
        VoiceStore(Path(root)).register("shared", speechlike(1.5, seed=seed))
        return "ok"
    except VoiceError as error:
        return str(error)


def test_concurrent_workers_registering_one_name_exactly_one_wins(store):
    with ProcessPoolExecutor(4, mp_context=get_context("spawn")) as pool:
        results = list(pool.map(_register_in_process, [str(store.root)] * 8, range(8)))
    assert results.count("ok") == 1, results
    assert all("already registered" in r for r in results if r != "ok")
    winner = results.index("ok")
    assert np.array_equal(store.load("shared"), speechlike(1.5, seed=winner))
    assert [p.name for p in store.root.iterdir()] == ["shared.npz"]


def test_readers_never_see_a_partial_voice_while_it_is_replaced(store):
    versions = [speechlike(2.0, seed=s) for s in range(3)]
    hashes = {samples_sha256(v) for v in versions}
    store.register("v", versions[0])
    stop = threading.Event()
    seen: set[str] = set()

    def writer():
        i = 0
        while not stop.is_set():
            i += 1
            VoiceStore(store.root).delete("v")
            VoiceStore(store.root).register("v", versions[i % 3])
            time.sleep(0.002)  # the voice exists for a while between deletions

    def reader():
        reading = VoiceStore(store.root)
        deadline = time.monotonic() + 5
        while len(seen) < 3 and time.monotonic() < deadline:
            try:
                seen.add(samples_sha256(reading.load("v")))
            except VoiceError as error:
                assert "no registered voice" in str(error)  # between a deletion and the next registration

    with ThreadPoolExecutor(2) as pool:
        written = pool.submit(writer)
        pool.submit(reader).result()
        stop.set()
        written.result()
    assert seen == hashes  # every version was read, each of them whole


def test_damaged_files_are_reported_skipped_in_lists_and_deletable(store):
    store.register("good", speechlike(1.5))
    (store.root / "garbage.npz").write_bytes(b"not a zip at all")
    np.save(store.root / "plain.npy", np.zeros(3))
    os.replace(store.root / "plain.npy", store.root / "plain.npz")
    good = (store.root / "good.npz").read_bytes()
    tampered = bytearray(good)
    tampered[len(good) // 2] ^= 0xFF  # flips a sample byte: the sha256 no longer matches
    (store.root / "tampered.npz").write_bytes(bytes(tampered))
    (store.root / "copied.npz").write_bytes(good)  # a file renamed by hand: its name is not its own
    (store.root / "huge.npz").write_bytes(b"\0" * (store._max_file_bytes() + 1))
    assert [v["name"] for v in store.list()] == ["good"]
    for name in ("garbage", "plain", "tampered", "copied", "huge"):
        with pytest.raises(VoiceError, match=f"registered voice '{name}' is unreadable .*delete it and register"):
            store.load(name)
        store.delete(name)
    assert store.names() == ["good"]


def test_a_voice_registered_here_is_loaded_by_a_fresh_process(store):
    samples = speechlike(1.5, seed=7)
    store.register("persisted", samples)
    code = (
        "import sys; from pathlib import Path; from vv_worker.voice_store import VoiceStore, samples_sha256;"
        "print(samples_sha256(VoiceStore(Path(sys.argv[1])).load('Persisted')))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(store.root)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == samples_sha256(samples)


def test_catalog_finds_library_voices_first_then_registered_ones(library_dir, tmp_path):
    from vv_worker.voice_store import VoiceCatalog

    store = VoiceStore(tmp_path / "store")
    catalog = VoiceCatalog(library_dir, store)
    samples = speechlike(1.5, seed=4)
    store.register("Guest-1", samples)
    assert np.array_equal(catalog.load("guest-1"), samples) and catalog.canonical("GUEST-1") == "Guest-1"
    assert catalog.canonical("ALICE") == "alice" and catalog.load("alice").size > 24000
    assert "guest-1" not in [n.lower() for n in catalog.names()]  # never handed out to unnamed speakers
    with pytest.raises(
        VoiceError, match=r"unknown voice 'nobody'; available voices: alice, .*registered voices: guest-1"
    ):
        catalog.load("nobody")
    with pytest.raises(VoiceError, match=r"unknown voice '\.\./guest-1'"):
        catalog.load("../guest-1")
