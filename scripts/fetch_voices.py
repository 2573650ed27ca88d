#!/usr/bin/env python
"""Download the voice library's recordings listed in the manifest and check each one's sha256.

    python scripts/fetch_voices.py [--dir DIR] [--manifest PATH]

Defaults: ``--dir voices`` and ``--manifest DIR/manifest.json``. A file already present with the
right sha256 is skipped; one with the wrong sha256 is downloaded again. Each download goes to a
temporary file in DIR and is renamed into place only once its sha256 matches, so DIR never holds a
partial or wrong file. Progress (bytes received of the declared size) goes to stderr. Exit status
0 when every voice is in place, 1 when any failed (each failure is listed), 2 for a bad manifest.
Standard library only: it runs before or without the package.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CHUNK = 1 << 16
DEFAULT_MAX_BYTES = 100_000_000


Progress = Callable[[str, int, "int | None"], None]  # (file name, bytes so far, declared size or None)


class ManifestError(ValueError):
    pass


@dataclass
class Outcome:
    name: str
    file: str
    status: str  # "present", "downloaded", "failed"
    detail: str = ""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(path: Path) -> list[dict]:
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))["voices"]
    except FileNotFoundError:
        raise ManifestError(f"no manifest at {path}") from None
    except (ValueError, KeyError, TypeError) as error:
        raise ManifestError(f"{path} is not a voice manifest ({type(error).__name__}: {error})") from None
    for entry in entries:
        missing = [key for key in ("name", "file", "url", "sha256") if not entry.get(key)]
        if missing:
            raise ManifestError(f"{path}: entry {entry.get('name', '?')!r} lacks {', '.join(missing)}")
        if Path(entry["file"]).name != entry["file"] or entry["file"].startswith("."):
            raise ManifestError(f"{path}: file name {entry['file']!r} must be a plain file name")
        if not entry["url"].startswith(("https://", "http://")):
            raise ManifestError(f"{path}: {entry['name']}: only http(s) URLs are fetched")
    return entries


def download(
    url: str,
    folder: Path,
    final_name: str,
    sha256: str,
    *,
    timeout_s: float,
    max_bytes: int,
    progress: Progress | None = None,
) -> None:
    """Fetch ``url`` into ``folder/final_name`` atomically, or raise with the reason (nothing left behind)."""
    descriptor, name = tempfile.mkstemp(dir=folder, prefix=f".{final_name}.", suffix=".part")
    temp = Path(name)
    try:
        digest, size = hashlib.sha256(), 0
        request = urllib.request.Request(url, headers={"User-Agent": "vv-worker-fetch-voices"})
        with os.fdopen(descriptor, "wb") as handle, urllib.request.urlopen(request, timeout=timeout_s) as response:
            declared = response.headers.get("Content-Length")
            total = int(declared) if declared and declared.isdigit() else None
            while block := response.read(CHUNK):
                size += len(block)
                if size > max_bytes:
                    raise OSError(f"larger than {max_bytes} bytes")
                digest.update(block)
                handle.write(block)
                if progress:
                    progress(final_name, size, total)
        if digest.hexdigest() != sha256.lower():
            raise OSError(f"sha256 mismatch: expected {sha256.lower()}, got {digest.hexdigest()} ({size} bytes)")
        os.chmod(temp, 0o644)
        os.replace(temp, folder / final_name)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def print_progress(name: str, done: int, total: int | None) -> None:
    """One line per file, rewritten in place on a terminal; elsewhere only the finished line."""
    finished = total is not None and done >= total
    if not (sys.stderr.isatty() or finished):
        return
    shown = f"{done // 1000:,} of {total // 1000:,} kB ({100 * done // total}%)" if total else f"{done // 1000:,} kB"
    print(f"\rdownloading {name}: {shown}", end="\n" if finished else "", file=sys.stderr, flush=True)


def fetch_voices(
    manifest: Path,
    folder: Path,
    *,
    timeout_s: float = 60.0,
    max_bytes: int = DEFAULT_MAX_BYTES,
    echo=print,
    progress: Progress | None = None,
) -> list[Outcome]:
    """Make ``folder`` hold every voice in ``manifest`` with the right sha256; one outcome per voice."""
    entries = read_manifest(manifest)
    folder.mkdir(parents=True, exist_ok=True)
    outcomes = []
    for entry in entries:
        target = folder / entry["file"]
        expected = entry["sha256"].lower()
        if target.is_file():
            if sha256_file(target) == expected:
                outcomes.append(Outcome(entry["name"], entry["file"], "present"))
                echo(f"ok        {entry['file']} (already present)")
                continue
            echo(f"replacing {entry['file']}: its sha256 does not match the manifest")
        try:
            download(
                entry["url"],
                folder,
                entry["file"],
                expected,
                timeout_s=timeout_s,
                max_bytes=max_bytes,
                progress=progress,
            )
        except urllib.error.HTTPError as error:
            detail = f"HTTP {error.code} from {entry['url']}"
        except (urllib.error.URLError, OSError, ValueError) as error:
            reason = getattr(error, "reason", None) or error
            detail = f"{reason} ({entry['url']})"
        else:
            outcomes.append(Outcome(entry["name"], entry["file"], "downloaded"))
            echo(f"fetched   {entry['file']}")
            continue
        outcomes.append(Outcome(entry["name"], entry["file"], "failed", detail))
        echo(f"FAILED    {entry['file']}: {detail}")
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("voices"), help="folder for the recordings (default voices)")
    parser.add_argument("--manifest", type=Path, help="voice manifest (default DIR/manifest.json)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default 60)")
    args = parser.parse_args(argv)
    manifest = args.manifest or args.dir / "manifest.json"
    try:
        outcomes = fetch_voices(manifest, args.dir, timeout_s=args.timeout, progress=print_progress)
    except ManifestError as error:
        print(f"fetch_voices: {error}", file=sys.stderr)
        return 2
    failed = [outcome for outcome in outcomes if outcome.status == "failed"]
    for outcome in failed:
        print(f"fetch_voices: {outcome.name} ({outcome.file}) failed: {outcome.detail}", file=sys.stderr)
    print(f"{len(outcomes) - len(failed)} of {len(outcomes)} voices in place in {args.dir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
