"""Registered voices that persist across requests, worker processes and, on a network volume, workers.

Where: RunPod's network volume, ``/runpod-volume/vv-worker/voices``, when ``/runpod-volume`` is mounted (one
store shared by every worker of the endpoint); else a local folder from the settings. A bucket is not used:
the worker only uploads results there and has no listing or reading of it.

What: one file per voice, ``<name>.npz`` (numpy's zip of arrays, read with ``allow_pickle=False``), holding

- ``samples``: the processed reference, float32 mono at 24 kHz, exactly what the acoustic encoder consumes
  (decoded, checked, trimmed and resampled like any reference), so a stored voice is bit-identical to the
  reference it came from;
- ``meta``: JSON (name, description, seconds, sample rate, sha256 of the samples, creation time).

The sha256 is the key of the engine's voice-prompt cache, so a registered voice is encoded once per process
and served from that cache afterwards. Encoder latents are not stored: they depend on the checkpoint, the
device and the dtype, and encoding a voice is one encoder pass.

Safety: a name must match ``NAME_PATTERN``; it is lower-cased and is the only part of a path that comes from
a request. Writes go to a temporary file in the same folder, are flushed to disk, then linked to the final
name, which fails if the name exists (two workers registering one name: exactly one wins); deleting is one
unlink. Readers therefore see a whole file or none. The count cap is checked before writing, so workers
registering at the same instant may pass it together by one each.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import threading
import time
import uuid
import zipfile
from collections import OrderedDict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from .audio import MODEL_SAMPLE_RATE
from .limits import DEFAULT_MAX_REGISTERED_VOICES, REGISTERED_VOICE_DESCRIPTION_CHARS
from .voices import VoiceError, VoiceLibrary

RUNPOD_VOLUME = Path("/runpod-volume")
VOLUME_FOLDER = "vv-worker/voices"  # under the volume
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,47}")
NAME_RULE = "1 to 48 characters: letters, digits, '-' and '_', starting with a letter or digit"
MAX_DESCRIPTION_CHARS = REGISTERED_VOICE_DESCRIPTION_CHARS
SUFFIX = ".npz"
FORMAT_VERSION = 1
CACHED_VOICES = 16  # decoded voices kept in memory per process
STALE_TEMP_SECONDS = 3600  # temporary files older than this were left by a crashed writer


def default_root(local: Path, volume: Path = RUNPOD_VOLUME) -> Path:
    """The network volume's folder when the volume is mounted, else ``local``."""
    return volume / VOLUME_FOLDER if volume.is_dir() else Path(local)


def check_name(name: object, field: str = "name") -> str:
    """The store key (lower case) of a valid voice name; raise VoiceError otherwise."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        shown = repr(name) if len(repr(name)) <= 60 else repr(name)[:57] + "..."
        raise VoiceError(f"{field}: {shown} is not a valid voice name; allowed: {NAME_RULE}")
    return name.lower()


def samples_sha256(samples: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(samples, dtype=np.float32).tobytes()).hexdigest()


class VoiceStore:
    """Registered voices under ``root``; safe to share between threads, processes and workers."""

    def __init__(
        self,
        root: Path,
        *,
        max_voices: int = DEFAULT_MAX_REGISTERED_VOICES,
        min_seconds: float = 1.0,
        max_seconds: float = 60.0,
    ):
        self.root = Path(root)
        self.max_voices = max_voices
        self.min_seconds = min_seconds
        self.max_seconds = max_seconds
        self._cache: OrderedDict[str, tuple[tuple[int, int, int], np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    def _path(self, key: str) -> Path:
        return self.root / f"{key}{SUFFIX}"  # key comes from check_name only

    def _max_file_bytes(self) -> int:
        return int(self.max_seconds * MODEL_SAMPLE_RATE) * 4 + 64 * 1024  # samples plus metadata and zip headers

    # --- reading -----------------------------------------------------------------------------

    def _keys(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            entry.name[: -len(SUFFIX)]
            for entry in os.scandir(self.root)
            if entry.name.endswith(SUFFIX) and NAME_PATTERN.fullmatch(entry.name[: -len(SUFFIX)]) and entry.is_file()
        )

    def names(self) -> list[str]:
        return self._keys()

    def has(self, name: str) -> bool:
        """Whether ``name`` is a registered voice (a name that is not valid never is)."""
        return isinstance(name, str) and NAME_PATTERN.fullmatch(name) is not None and self._path(name.lower()).is_file()

    def _open(self, key: str) -> tuple[np.lib.npyio.NpzFile, tuple[int, int, int]]:
        """The voice's archive, open, and its file signature (inode, size, mtime) for the cache."""
        path = self._path(key)
        try:
            stat = path.stat()
            if stat.st_size > self._max_file_bytes():
                raise self._unreadable(key, f"{stat.st_size} bytes, more than a voice may take")
            archive = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise VoiceError(f"voice: no registered voice {key!r}") from None
        except (OSError, ValueError) as error:
            raise self._unreadable(key, type(error).__name__) from None
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise self._unreadable(key, "not an archive of arrays")
        return archive, (stat.st_ino, stat.st_size, stat.st_mtime_ns)

    def _read(self, key: str, with_samples: bool) -> tuple[dict, np.ndarray | None, tuple[int, int, int]]:
        """(metadata, samples when asked for and checked against the metadata's sha256, file signature)."""
        archive, signature = self._open(key)
        try:
            with archive:
                meta = json.loads(bytes(archive["meta"]).decode("utf-8"))
                samples = archive["samples"] if with_samples else None
        except (OSError, ValueError, KeyError, UnicodeDecodeError, zipfile.BadZipFile) as error:
            raise self._unreadable(key, type(error).__name__) from None
        if not isinstance(meta, dict) or str(meta.get("name", "")).lower() != key:
            raise self._unreadable(key, "its metadata is not this voice's")
        if samples is not None and (
            samples.dtype != np.float32 or samples.ndim != 1 or meta.get("sha256") != samples_sha256(samples)
        ):
            raise self._unreadable(key, "its samples do not match its metadata")
        return meta, samples, signature

    @staticmethod
    def _unreadable(key: str, why: str) -> VoiceError:
        return VoiceError(f"voice: the registered voice {key!r} is unreadable ({why}); delete it and register it again")

    def load(self, name: str) -> np.ndarray:
        """A registered voice's samples (float32 mono, 24 kHz); re-read when the file changed."""
        key = check_name(name, "voice")
        path = self._path(key)
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise VoiceError(f"voice: no registered voice {name!r}") from None
        with self._lock:
            cached = self._cache.get(key)
            if cached and cached[0] == (stat.st_ino, stat.st_size, stat.st_mtime_ns):
                self._cache.move_to_end(key)
                return cached[1]
        _, samples, signature = self._read(key, with_samples=True)
        with self._lock:
            self._cache[key] = (signature, samples)
            self._cache.move_to_end(key)
            while len(self._cache) > CACHED_VOICES:
                self._cache.popitem(last=False)
        return samples

    def info(self, name: str) -> dict:
        """The public metadata of one registered voice."""
        meta, _, _ = self._read(check_name(name, "voice"), with_samples=False)
        return self._public(meta)

    @staticmethod
    def _public(meta: dict) -> dict:
        return {key: meta.get(key) for key in ("name", "description", "seconds", "created_at")}

    def list(self) -> list[dict]:
        """Public metadata of every readable registered voice, by name; unreadable files are skipped."""
        voices = []
        for key in self._keys():
            try:
                voices.append(self._public(self._read(key, with_samples=False)[0]))
            except VoiceError:
                continue  # deleted meanwhile or damaged: load() reports it when the voice is asked for
        return voices

    # --- writing -----------------------------------------------------------------------------

    def register(self, name: str, samples: np.ndarray, description: str | None = None) -> dict:
        """Store a processed reference (float32 mono 24 kHz) under a new name; return its public metadata."""
        key = check_name(name)
        if description is not None and len(description) > MAX_DESCRIPTION_CHARS:
            raise VoiceError(f"description: {len(description)} characters; at most {MAX_DESCRIPTION_CHARS}")
        samples = np.asarray(samples)
        if samples.dtype != np.float32 or samples.ndim != 1 or not np.isfinite(samples).all():
            raise VoiceError("samples: a voice is float32 mono samples without NaN or infinite values")
        seconds = samples.size / MODEL_SAMPLE_RATE
        if not self.min_seconds <= seconds <= self.max_seconds:
            raise VoiceError(
                f"reference: {seconds:.2f} s of voice; allowed: {self.min_seconds:g} to {self.max_seconds:g} s"
            )
        if self._path(key).exists():
            raise VoiceError(f"name: a voice named {key!r} is already registered; delete it first to replace it")
        count = len(self._keys())
        if count >= self.max_voices:
            raise VoiceError(
                f"name: the store holds {count} voices, the most it may; delete one before registering another"
            )
        meta = {
            "format_version": FORMAT_VERSION,
            "name": name,
            "description": description,
            "seconds": round(seconds, 4),
            "sample_rate": MODEL_SAMPLE_RATE,
            "sha256": samples_sha256(samples),
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        buffer = io.BytesIO()
        np.savez(buffer, samples=samples, meta=np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8))
        self._write_new(key, buffer.getvalue())
        return self._public(meta)

    def _write_new(self, key: str, data: bytes) -> None:
        """Write ``data`` as ``<key>.npz`` unless it exists, so that no reader ever sees a partial file."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temporaries()
        final = self._path(key)
        temporary = self.root / f".{uuid.uuid4().hex}.tmp"
        try:
            with temporary.open("xb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(temporary, final)  # atomic and never replaces an existing file
            except FileExistsError:
                raise VoiceError(
                    f"name: a voice named {key!r} is already registered; delete it first to replace it"
                ) from None
            except OSError as error:
                if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                    raise
                # a file system without hard links: rename is atomic but replaces, so check first
                if final.exists():
                    raise VoiceError(f"name: a voice named {key!r} is already registered") from None
                os.replace(temporary, final)
        finally:
            temporary.unlink(missing_ok=True)

    def _remove_stale_temporaries(self) -> None:
        cutoff = time.time() - STALE_TEMP_SECONDS
        for entry in os.scandir(self.root):
            if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                try:
                    if entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)
                except FileNotFoundError:
                    continue  # another worker removed it

    def delete(self, name: str) -> None:
        """Remove a registered voice (also a damaged one)."""
        key = check_name(name)
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            raise VoiceError(f"name: no registered voice {name!r}") from None
        with self._lock:
            self._cache.pop(key, None)


class VoiceCatalog(VoiceLibrary):
    """The voice library plus the registered voices, for looking voices up by name.

    A name is looked up in the library first (a registered voice cannot take a library name), then in the
    store. Only library voices are handed to speakers a request gives no voice (``names``, ``default``).
    """

    def __init__(self, folder: Path, store: VoiceStore):
        super().__init__(folder)
        self.store = store

    def in_library(self, name: str) -> bool:
        entry = self.entries.get(name.lower()) if isinstance(name, str) else None
        return entry is not None and (self.folder / entry.file).is_file()

    def load(self, name: str) -> np.ndarray:
        if self.in_library(name):
            return super().load(name)
        if self.store.has(name):
            return self.store.load(name)
        registered = self.store.names()
        shown = ", ".join(registered[:20]) + (f" and {len(registered) - 20} more" if len(registered) > 20 else "")
        raise VoiceError(
            f"voice: unknown voice {name!r}; available voices: {', '.join(self.names()) or 'none'}; "
            f"registered voices: {shown or 'none'}"
        )

    def canonical(self, name: str) -> str:
        if self.in_library(name):
            return super().canonical(name)
        self.load(name)
        return str(self.store.info(name)["name"])
