#!/usr/bin/env python
"""Refuse a Dockerfile that could bake a secret into the image.

    python deploy/check_dockerfile.py [Dockerfile]

Flags (exit status 1, one line per finding):
- an ``ARG`` or ``ENV`` whose name contains TOKEN, KEY, SECRET or PASSWORD (build args and
  environment values are recorded in the image's metadata and history);
- a ``RUN`` that mentions ``HF_TOKEN``, ``HUGGING_FACE_HUB_TOKEN``, ``--token`` or a ``hf_...`` literal
  without a ``--mount=type=secret`` on that same instruction;
- a ``COPY``/``ADD`` of a file that looks like a credential (``.env``, ``*token*``, ``*.pem``, ``*key*``).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

SECRET_NAME = re.compile(r"(?i)(token|key|secret|passw)")
TOKEN_USE = re.compile(r"(HF_TOKEN|HUGGING_FACE_HUB_TOKEN|--token(?!-file)\b|\bhf_[A-Za-z0-9]{8,})")
SECRET_MOUNT = re.compile(r"--mount=(?:[^\s]*,)?type=secret\b")
SECRET_FILE = re.compile(r"(?i)(^|/)(\.env|[^/\s]*token[^/\s]*|[^/\s]*\.pem|[^/\s]*key[^/\s]*)$")


def instructions(text: str) -> list[tuple[int, str]]:
    """(first line number, instruction with continuations joined), comments and blank lines dropped."""
    result, current, start = [], "", 0
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not current:
            start = number
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        result.append((start, current + stripped))
        current = ""
    if current:
        result.append((start, current))
    return result


def _declared_names(keyword: str, rest: str) -> list[str]:
    if keyword == "ARG":
        return [rest.split("=", 1)[0].strip()]
    # ENV KEY=VALUE [KEY2=VALUE2 ...] or the legacy ENV KEY VALUE
    if "=" in rest.split(" ", 1)[0]:
        return re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)=", rest)
    return [rest.split(" ", 1)[0]]


def findings(text: str) -> list[str]:
    problems = []
    for number, instruction in instructions(text):
        keyword, _, rest = instruction.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        if keyword in ("ARG", "ENV"):
            for name in _declared_names(keyword, rest):
                if SECRET_NAME.search(name):
                    problems.append(f"line {number}: {keyword} {name} would store a secret in the image metadata")
        elif keyword == "RUN":
            if TOKEN_USE.search(rest) and not SECRET_MOUNT.search(rest):
                problems.append(f"line {number}: RUN uses a token without --mount=type=secret")
        elif keyword in ("COPY", "ADD"):
            sources = [part for part in rest.split() if not part.startswith("--")][:-1]
            for source in sources:
                if SECRET_FILE.search(source.rstrip("/")):
                    problems.append(f"line {number}: {keyword} {source} looks like a credential file")
    return problems


def main(argv: list[str] | None = None) -> int:
    path = Path((argv or sys.argv[1:] or ["Dockerfile"])[0])
    problems = findings(path.read_text(encoding="utf-8"))
    for problem in problems:
        print(f"{path}: {problem}", file=sys.stderr)
    if not problems:
        print(f"{path}: no secret can end up in the image")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
