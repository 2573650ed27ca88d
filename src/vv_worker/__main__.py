"""``python -m vv_worker``: the image's start command. ``VV_MODE`` picks the mode:

- ``queue`` (default): the RunPod handler (``python -m vv_worker.handler``) for queue endpoints (/run, /runsync);
- ``http``: the OpenAI-compatible server (``python -m vv_worker.server``) for load-balancing endpoints.
"""

from __future__ import annotations

import sys
from typing import Literal

from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict


class ModeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VV_", extra="ignore")

    mode: Literal["queue", "http"] = "queue"


def main() -> int:
    try:
        mode = ModeSettings().mode
    except ValidationError as error:
        item = error.errors()[0]
        print(f"vv-worker cannot start: VV_MODE: {item['msg']} (got {item.get('input')!r})", file=sys.stderr)
        return 2
    if mode == "http":
        from .server import main as serve

        return serve()
    from .handler import main as handle

    handle()
    return 0


if __name__ == "__main__":
    sys.exit(main())
