#!/usr/bin/env python
"""Download a transformers-format VibeVoice checkpoint from the Hugging Face hub and verify it.

    python scripts/download_model.py [--repo ID] [--out DIR] [--revision REV] [--token-file PATH]
    python scripts/download_model.py --verify-only --out DIR

Only the files the checkpoint needs are fetched (config, processor and tokenizer files, chat
template, safetensors weights and index). Interrupted downloads resume when run again. Then the
folder is checked offline: it loads as a VibeVoice config and processor, the safetensors index
names only shards that are present, non-empty and readable, and each shard holds the tensors the
index assigns to it. Exit status 0 when the folder is usable, 1 otherwise.

``--revision`` (default: ``VV_MODEL_REVISION``, else the main branch) pins a branch, tag or commit;
the commit actually downloaded is printed at the end, and recorded in the folder, where the worker
checks it against ``VV_MODEL_REVISION``. One quick request first checks that the hub answers, so an
unreachable hub fails in seconds instead of after minutes of retries.

The token (for gated or private repos) comes from ``--token-file`` (a BuildKit secret mount such
as /run/secrets/hf_token) or else from ``HF_TOKEN``; it is never printed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DEFAULT_REPO = "vibevoice/VibeVoice-7B-hf"


def _checkpoint():
    try:
        from vv_worker import checkpoint
    except ImportError:  # run from a checkout without the package installed
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
        from vv_worker import checkpoint
    return checkpoint


def read_token(token_file: Path | None) -> str | None:
    """The hub token from ``token_file`` when it exists and is non-empty, else ``HF_TOKEN``, else None."""
    if token_file is not None:
        if token_file.is_file():
            token = token_file.read_text(encoding="utf-8").strip()
            if token:
                return token
            print(f"note: {token_file} is empty; trying HF_TOKEN", file=sys.stderr)
        else:
            print(f"note: no token file at {token_file}; trying HF_TOKEN", file=sys.stderr)
    return os.environ.get("HF_TOKEN") or None


def download(repo: str, out: Path, revision: str | None, token: str | None) -> Path:
    """Fetch the checkpoint files of ``repo`` into ``out`` (resumable, with progress bars)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url, snapshot_download

    # no retries and a short timeout: an unreachable hub fails now, not after minutes of retries per file
    get_hf_file_metadata(hf_hub_url(repo, "config.json", revision=revision), timeout=10, token=token)
    path = snapshot_download(
        repo_id=repo,
        revision=revision,
        local_dir=str(out),
        allow_patterns=_checkpoint().CHECKPOINT_PATTERNS,
        token=token,
    )
    return Path(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", default=DEFAULT_REPO, help=f"hub repo id (default {DEFAULT_REPO})")
    parser.add_argument("--out", type=Path, help="target folder (default models/NAME)")
    parser.add_argument(
        "--revision",
        default=os.environ.get("VV_MODEL_REVISION") or None,
        help="branch, tag or commit (default: VV_MODEL_REVISION, else the repo's main branch)",
    )
    parser.add_argument("--token-file", type=Path, help="file holding the hub token (else HF_TOKEN)")
    parser.add_argument("--verify-only", action="store_true", help="only verify the folder given by --out")
    args = parser.parse_args(argv)
    out = args.out or Path("models") / args.repo.split("/")[-1]
    checkpoint = _checkpoint()

    if not args.verify_only:
        token = read_token(args.token_file)
        using = "with" if token else "without"
        print(f"downloading {args.repo}@{args.revision or 'main'} into {out} ({using} a token)")
        try:
            download(args.repo, out, args.revision, token)
        except Exception as error:  # hub errors: not found, gated, network
            message = str(error)
            if token:
                message = message.replace(token, "[token]")
            print(f"download_model: the download failed: {type(error).__name__}: {message}", file=sys.stderr)
            return 1
    problems = checkpoint.checkpoint_problems(out)
    if problems:
        print(f"download_model: {out} is not a complete VibeVoice checkpoint:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    size = sum(path.stat().st_size for path in out.glob("*.safetensors"))
    print(f"ok: {out} is a complete VibeVoice checkpoint ({size / 1e9:.2f} GB of weights)")
    commit = checkpoint.recorded_commit(out)
    if commit:
        print(f"commit {commit}: set VV_MODEL_REVISION={commit} (or --revision) to get exactly this again")
    return 0


if __name__ == "__main__":
    sys.exit(main())
