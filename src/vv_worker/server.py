"""The HTTP mode: an OpenAI-compatible speech server over the same service and engine as the queue worker.

python -m vv_worker.server                      # 127.0.0.1:8000 (VV_HOST, VV_PORT)
python -m vv_worker.server --host 0.0.0.0 --port 8080

Configured by the same ``VV_*`` settings as the queue worker, plus where to listen. On a RunPod
load-balancing endpoint the port comes from ``PORT`` and the health port from ``PORT_HEALTH``.
The socket opens at once and ``GET /ping`` answers 204 while the model loads, 200 when it is ready.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
import threading

from pydantic import AliasChoices, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from .config import ConfigError, Settings, apply_cpu_threads, load_settings

log = logging.getLogger("vv_worker.server")


class ListenSettings(BaseSettings):
    """Where the HTTP server listens: ``VV_HOST``, ``VV_PORT`` (or RunPod's ``PORT``), ``PORT_HEALTH``."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    host: str = Field("127.0.0.1", validation_alias=AliasChoices("VV_HOST"), min_length=1)
    port: int = Field(8000, validation_alias=AliasChoices("VV_PORT", "PORT"), ge=1, le=65535)
    health_port: int | None = Field(None, validation_alias=AliasChoices("PORT_HEALTH"), ge=1, le=65535)


def load_listen_settings(**overrides: object) -> ListenSettings:
    try:
        return ListenSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as error:
        # each problem is named by the variable it came from (VV_PORT or PORT, ...)
        problems = "; ".join(f"{item['loc'][0]}: {item['msg']} (got {item.get('input')!r})" for item in error.errors())
        raise ConfigError(f"invalid configuration: {problems}") from None


def check_streaming_engine(settings: Settings) -> None:
    """The HTTP server streams every response and serves requests together: it needs the fast engine."""
    if settings.engine not in ("auto", "fast"):
        raise ConfigError(
            f"VV_ENGINE={settings.engine} cannot stream, and the HTTP server streams every response; use fast or auto"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vv_worker.server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", help="address to listen on (default: VV_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: VV_PORT, else PORT, else 8000)")
    return parser.parse_args(argv)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .fitness import FitnessError, check_gpu
    from .joblog import install_json_handler

    install_json_handler()
    try:
        settings = load_settings()
        check_streaming_engine(settings)
        listen = load_listen_settings(host=args.host, port=args.port)
        check_gpu(settings)
        apply_cpu_threads(settings)
        sockets = [_bind(listen.host, listen.port)]
        if listen.health_port and listen.health_port != listen.port:
            sockets.append(_bind(listen.host, listen.health_port))  # the same routes; RunPod pings /ping there
    except (ConfigError, FitnessError, OSError) as error:
        print(f"vv-worker cannot start: {error}", file=sys.stderr)
        return 2

    import uvicorn

    from .engine.base import EngineError
    from .http.app import ServerState, create_app
    from .provision import ProvisionError
    from .service import SynthesisService

    state = ServerState()
    server = uvicorn.Server(uvicorn.Config(create_app(state), log_level="info", timeout_graceful_shutdown=5))
    failure: list[str] = []

    def load() -> None:
        try:
            state.service = SynthesisService.from_settings(settings)
            addresses = ", ".join(f"http://{listen.host}:{s.getsockname()[1]}" for s in sockets)
            log.info("model loaded; serving on %s", addresses)
        except (ConfigError, EngineError, ProvisionError) as error:
            failure.append(str(error))
            server.should_exit = True
        except Exception as error:  # anything else is a bug: the log gets the traceback, the process stops
            log.exception("loading the model failed")
            failure.append(f"{type(error).__name__}: {error}")
            server.should_exit = True

    threading.Thread(target=load, name="load-model", daemon=True).start()
    server.run(sockets=sockets)
    if failure:
        print(f"vv-worker cannot start: {failure[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
