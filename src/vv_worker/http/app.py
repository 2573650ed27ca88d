"""The HTTP server's routes (FastAPI): OpenAI's speech API, voices, models, RunPod's /ping, the playground."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from ..ahead import RunAhead
from ..audio import AudioError
from ..engine.base import JobStopped
from ..joblog import JobEvents
from ..schema import RequestError
from ..service import SynthesisService
from ..voices import VoiceError
from .encoders import SPEECH_FORMATS
from .openai import SpeechError, from_worker_error, models_list, parse_speech, sse_event
from .speech import Chunk, Done, speech_chunks

log = logging.getLogger("vv_worker.server")

MAX_BODY_BYTES = 32 * 1024 * 1024  # a request with a 60 s reference in base64 WAV is about 4 MB
RUN_AHEAD_CHUNKS = 8  # generation may run this many audio frames (about 1 s) ahead of a slow client


@dataclass
class ServerState:
    """What the routes need; ``service`` is None while the model loads."""

    service: SynthesisService | None = None
    faulted: str | None = None  # set when the GPU reported a fault: /ping then says unhealthy
    created: int = field(default_factory=lambda: int(time.time()))


def _speech_error(error: BaseException, request_id: str, state: ServerState) -> SpeechError:
    """Any failure of a speech request as an OpenAI error; a traceback only ever reaches the log."""
    from ..handler import device_may_be_corrupted, error_output

    if isinstance(error, (RequestError, AudioError, VoiceError)):
        return from_worker_error(error)
    if isinstance(error, JobStopped):
        return SpeechError(str(error), status=504, kind="timeout_error")
    if device_may_be_corrupted(error):
        state.faulted = f"{type(error).__name__}: {error}"
    message = error_output(error, {"id": request_id})["error"]
    status = 503 if "out of memory" in message else 500
    return SpeechError(message, status=status, kind="server_error")


async def _read_json(request: Request) -> object:
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > MAX_BODY_BYTES:
            raise SpeechError(f"the request body is over {MAX_BODY_BYTES:,} bytes", status=413)
    try:
        return json.loads(body)
    except ValueError as error:
        raise SpeechError(f"the request body is not valid JSON: {error}") from None


def create_app(state: ServerState) -> FastAPI:
    app = FastAPI(title="vv-worker", docs_url="/docs", redoc_url=None)

    def ready() -> SynthesisService:
        if state.service is None:
            raise SpeechError(
                "the model is still loading; retry in a moment (GET /ping answers 200 when ready)",
                status=503,
                kind="server_error",
            )
        return state.service

    @app.exception_handler(SpeechError)
    async def speech_error(_: Request, error: SpeechError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status)

    @app.get("/ping")
    async def ping() -> Response:
        if state.faulted:
            return JSONResponse({"status": "unhealthy", "reason": state.faulted}, status_code=503)
        if state.service is None:
            return Response(status_code=204)  # RunPod's load balancer: initializing
        return JSONResponse({"status": "healthy"})

    @app.get("/v1/models")
    async def models() -> dict:
        return models_list(ready().engine.model_id, state.created)

    @app.get("/v1/audio/voices")
    async def voices() -> dict:
        return ready().list_voices()

    async def voice_action(payload: dict) -> JSONResponse:
        """``register_voice`` / ``delete_voice`` through the worker's own action (docs/API.md, Registered voices)."""
        try:
            return JSONResponse(await asyncio.to_thread(ready().handle, payload))
        except SpeechError:
            raise
        except Exception as error:
            failure = _speech_error(error, f"http-{uuid.uuid4().hex[:12]}", state)
            return JSONResponse(failure.body(), status_code=failure.status)

    @app.post("/v1/audio/voices")
    async def register_voice(request: Request) -> JSONResponse:
        payload = await _read_json(request)
        if not isinstance(payload, dict):
            raise SpeechError(f"the request body must be a JSON object, got {type(payload).__name__}")
        return await voice_action({**payload, "action": "register_voice"})

    @app.delete("/v1/audio/voices/{name}")
    async def delete_voice(name: str) -> JSONResponse:
        return await voice_action({"action": "delete_voice", "name": name})

    @app.get("/", response_class=HTMLResponse)
    async def playground() -> str:
        return resources.files("vv_worker.http").joinpath("static/index.html").read_text(encoding="utf-8")

    @app.post("/v1/audio/speech")
    async def speech(request: Request) -> Response:
        service = ready()
        speech_request = parse_speech(await _read_json(request), service.engine.model_id)
        request_id = f"http-{uuid.uuid4().hex[:12]}"
        events = JobEvents.received({"id": request_id, "input": speech_request.worker_payload()})
        # each request runs in its own thread; the engine batches the generations of concurrent requests
        ahead = RunAhead(lambda: speech_chunks(service, speech_request), RUN_AHEAD_CHUNKS)
        run = _Run(ahead, ahead.aiter(), events, request_id, state)
        try:
            first = await anext(run.items)  # bad input fails here, before any byte: a clean 4xx
        except Exception as error:
            failure = run.fail(error)
            return JSONResponse(failure.body(), status_code=failure.status)
        except BaseException:  # cancelled: the client left while we waited for the first chunk
            run.stop()
            raise
        events.started()
        if speech_request.stream_format == "sse":
            headers = {"Cache-Control": "no-cache"}
            return StreamingResponse(_sse(first, run), media_type="text/event-stream", headers=headers)
        media_type = SPEECH_FORMATS[speech_request.response_format].mime_type
        return StreamingResponse(_audio(first, run), media_type=media_type)

    return app


@dataclass
class _Run:
    """One speech request in flight: its generation thread, its items, its log events."""

    ahead: RunAhead
    items: AsyncIterator
    events: JobEvents
    request_id: str
    state: ServerState
    ended: bool = False

    def done(self, summary: dict) -> None:
        self.ended = True
        self.events.done(summary)

    def fail(self, error: Exception) -> SpeechError:
        failure = _speech_error(error, self.request_id, self.state)
        self.ended = True
        self.ahead.close()
        self.events.done({"error": failure.message})
        return failure

    def stop(self) -> None:
        """The client went away: stop generating (no await: this also runs while the task is cancelled)."""
        self.ahead.close()
        if not self.ended:
            self.ended = True
            self.events.done({"error": "the client disconnected; generation stopped"})


async def _audio(first: Chunk | Done, run: _Run) -> AsyncIterator[bytes]:
    """Raw audio bytes, chunked as generated. A failure mid-way aborts the connection (never a short file)."""
    try:
        item = first
        while not isinstance(item, Done):
            if item.data:
                yield item.data
            item = await anext(run.items)
        run.done(item.summary)
    except Exception as error:
        run.fail(error)
        raise
    finally:
        run.stop()


async def _sse(first: Chunk | Done, run: _Run) -> AsyncIterator[str]:
    """OpenAI's speech events: ``speech.audio.delta`` (base64 audio) per chunk, then ``speech.audio.done``."""
    try:
        item = first
        while not isinstance(item, Done):
            if item.data:
                yield sse_event({"type": "speech.audio.delta", "audio": base64.b64encode(item.data).decode("ascii")})
            item = await anext(run.items)
        run.done(item.summary)
        yield sse_event({"type": "speech.audio.done", "usage": item.usage})
    except Exception as error:
        yield sse_event({"type": "error", **run.fail(error).body()})
    finally:
        run.stop()
