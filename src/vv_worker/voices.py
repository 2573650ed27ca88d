"""Where a request's voice comes from: the voice library, base64 audio, or a URL."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .audio import AudioError, ReferenceLimits, StopCheck, decode_base64, prepare_reference

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"


class VoiceError(ValueError):
    """A voice could not be found or fetched; the message says which and why."""


@dataclass(frozen=True)
class VoiceEntry:
    name: str
    file: str
    url: str
    sha256: str
    license: str
    language: str
    gender: str
    description: str

    def public(self) -> dict:
        """Metadata for list_voices (no paths or hashes)."""
        return {
            "name": self.name,
            "language": self.language,
            "gender": self.gender,
            "description": self.description,
            "license": self.license,
        }


class VoiceLibrary:
    """The voices listed in ``<dir>/manifest.json`` whose recordings are present in ``<dir>``."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.entries: dict[str, VoiceEntry] = {}
        manifest = self.folder / MANIFEST_NAME
        if manifest.is_file():
            data = json.loads(manifest.read_text(encoding="utf-8"))
            for item in data.get("voices", []):
                entry = VoiceEntry(**item)
                self.entries[entry.name.lower()] = entry
        self._samples: dict[str, np.ndarray] = {}

    def available(self) -> list[VoiceEntry]:
        """Manifest entries whose audio file exists, in manifest order."""
        return [entry for entry in self.entries.values() if (self.folder / entry.file).is_file()]

    def names(self) -> list[str]:
        return [entry.name for entry in self.available()]

    def default(self, preferred: str) -> str | None:
        """``preferred`` (canonical spelling) when available, else the first available voice, else None."""
        entry = self.entries.get(preferred.lower())
        if entry is not None and (self.folder / entry.file).is_file():
            return entry.name
        return next(iter(self.names()), None)

    def canonical(self, name: str) -> str:
        """The manifest's spelling of an available voice's name (lookup is case-insensitive)."""
        self.load(name)
        return self.entries[name.lower()].name

    def load(self, name: str) -> np.ndarray:
        """The voice's samples (float32 mono, 24 kHz), decoded once and kept in memory."""
        key = name.lower()
        entry = self.entries.get(key)
        if entry is None or not (self.folder / entry.file).is_file():
            known = ", ".join(self.names()) or "none (the voice library is empty)"
            raise VoiceError(f"voice: unknown voice {name!r}; available voices: {known}")
        if key not in self._samples:
            raw = (self.folder / entry.file).read_bytes()
            self._samples[key] = prepare_reference(raw, f"voice {entry.name}", ReferenceLimits())
        return self._samples[key]


def fetch_url(url: str, *, timeout_s: float, max_bytes: int, field: str = "reference_audio_url") -> bytes:
    """Download a reference with the runpod SDK's SSRF-safe fetch (public addresses only).

    Private and loopback targets are refused unless RUNPOD_ALLOW_PRIVATE_DOWNLOAD_URLS=true,
    the SDK's own switch for that.
    """
    import requests
    from runpod.serverless.utils.rp_ssrf import SSRFError, safe_get

    deadline = time.monotonic() + timeout_s
    try:
        # requests' timeout bounds the connection and each read; the deadline bounds the whole download
        response = safe_get(url, timeout=timeout_s, max_bytes=max_bytes)
        try:
            if response.status_code != 200:
                raise VoiceError(f"{field}: the server answered HTTP {response.status_code}")
            parts, total = [], 0
            # read1 returns after one receive, so a server trickling bytes cannot outlast the deadline
            while part := response.raw.read1(65536, decode_content=True):
                total += len(part)
                if total > max_bytes:
                    raise SSRFError(f"download exceeds size cap: >{max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise requests.Timeout()
                parts.append(part)
            return b"".join(parts)
        finally:
            response.close()
    except SSRFError as error:
        raise VoiceError(f"{field}: refused: {error}") from None
    except requests.Timeout:
        raise VoiceError(f"{field}: no answer within {timeout_s:g} s") from None
    except requests.RequestException as error:
        raise VoiceError(f"{field}: could not fetch: {type(error).__name__}") from None


def reference_from_base64(
    data: str, field: str, bounds: ReferenceLimits, check_stop: StopCheck | None = None
) -> np.ndarray:
    return prepare_reference(decode_base64(data, field), field, bounds, check_stop)


__all__ = [
    "AudioError",
    "VoiceEntry",
    "VoiceError",
    "VoiceLibrary",
    "fetch_url",
    "reference_from_base64",
]
