"""One job, top to bottom: plan (every request check, ``plan.py``) -> engine -> output (``output.py``).

The service owns what lives as long as the worker: the settings, the loaded engine, the voice library.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from . import memory, output
from .compose import compose
from .compose import run as run_composition
from .config import ConfigError, Settings
from .engine.base import Engine, GenerationResult, ProgressCallback
from .limits import ERROR_PROBLEMS_SHOWN
from .plan import Plan, TimeLimit, frame_cap, load_voice, make_plan
from .schema import DeleteVoiceRequest, RegisterVoiceRequest, RequestError, SpeakerVoice, field_label, parse_action
from .voice_store import VoiceCatalog, VoiceStore, check_name, default_root
from .voices import VoiceError, VoiceLibrary

log = logging.getLogger(__name__)


class SynthesisService:
    """Owns the engine and the voice library for the life of the worker process."""

    def __init__(self, settings: Settings, engine: Engine, voices: VoiceLibrary):
        self.settings = settings
        self.engine = engine
        self.voices = voices
        tokenizer = engine.loaded.processor.tokenizer
        self.count_tokens = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])
        available = voices.names()
        if settings.default_voice_required and settings.default_voice.lower() not in {n.lower() for n in available}:
            raise ConfigError(
                f"VV_DEFAULT_VOICE={settings.default_voice!r} is not in the voice library at "
                f"{voices.folder} (available: {', '.join(available) or 'none'}; scripts/fetch_voices.py fetches "
                "the listed recordings)"
            )
        default = self.default_voice()
        if default is not None and default.lower() != settings.default_voice.lower():
            log.warning(
                "default voice %r has no recording in %s (run scripts/fetch_voices.py); using %r",
                settings.default_voice,
                voices.folder,
                default,
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> SynthesisService:
        """Find the model (local folder, RunPod cache, volume, baked, or hub), load it, open the library."""
        from .engine import load_engine
        from .provision import resolve_model

        source = resolve_model(settings.model, revision=settings.model_revision)
        engine = load_engine(settings, path=source.path)
        store = VoiceStore(
            default_root(settings.voice_store_dir),
            max_voices=settings.max_registered_voices,
            min_seconds=settings.reference_min_s,
            max_seconds=settings.reference_max_s,
        )
        return cls(settings, engine, VoiceCatalog(settings.voices_dir, store))

    # --- entry points -------------------------------------------------------------------------

    def handle(self, payload: object, on_progress: ProgressCallback | None = None) -> dict:
        """A job's input, dispatched on its ``action``: ``synthesize`` (the default), ``list_voices``,
        ``register_voice`` or ``delete_voice``."""
        try:
            action = payload.get("action") if isinstance(payload, dict) else None
            if action in ("register_voice", "delete_voice"):
                return self.manage_voice(payload)
            if action == "list_voices":
                extra = sorted((key for key in payload if key != "action"), key=str)
                if extra:
                    shown = ", ".join(field_label(key) for key in extra[:ERROR_PROBLEMS_SHOWN])
                    more = (
                        f" and {len(extra) - ERROR_PROBLEMS_SHOWN:,} more" if len(extra) > ERROR_PROBLEMS_SHOWN else ""
                    )
                    raise RequestError(f"invalid input: list_voices takes no other fields, got {shown}{more}")
                return self.list_voices()
            return self.synthesize(payload, on_progress)
        finally:
            memory.release()

    def synthesize(self, payload: object, on_progress: ProgressCallback | None = None) -> dict:
        """The whole audio in one response: pause tags, long texts and segments included (``compose.py``)."""
        composition = compose(payload, settings=self.settings, library=self.voices, count_tokens=self.count_tokens)
        return run_composition(composition, self.engine, self.settings, on_progress)

    def stream(self, payload: object, on_progress: ProgressCallback | None = None) -> Iterator[dict]:
        """For a streaming endpoint: chunks of PCM 16-bit 24 kHz while generating, then a summary.

        A job without ``stream: true`` (any action) yields its ordinary output as the single item.
        """
        try:
            if not (isinstance(payload, dict) and payload.get("stream") is True):
                yield self.handle(payload, on_progress)  # every action, and synthesis without stream
                return
            plan = self.plan(payload)
            yield from output.stream_items(plan, self.engine.stream(plan.job, on_progress=on_progress), self.engine)
        finally:
            memory.release()

    def list_voices(self) -> dict:
        registered = self.voices.store.list() if isinstance(self.voices, VoiceCatalog) else []
        return {
            "voices": [entry.public() for entry in self.voices.available()],
            "default_voice": self.default_voice(),
            "registered_voices": registered,
        }

    def manage_voice(self, payload: dict) -> dict:
        """``register_voice`` (a reference, decoded and checked like any other, stored under a name) or
        ``delete_voice``."""
        if not isinstance(self.voices, VoiceCatalog):
            raise RequestError(f"invalid input: action: {payload['action']} needs a voice store; this worker has none")
        store = self.voices.store
        if payload["action"] == "delete_voice":
            request = parse_action(payload, DeleteVoiceRequest)
            store.delete(request.name)
            return {"success": True, "deleted": request.name}
        request = parse_action(payload, RegisterVoiceRequest)
        key = check_name(request.name)
        if self.voices.in_library(key):
            raise VoiceError(f"name: {request.name!r} is a library voice; choose another name")
        source = SpeakerVoice(reference_audio=request.reference_audio, reference_audio_url=request.reference_audio_url)
        voice = load_voice(source, "", self.settings, self.voices, TimeLimit(self.settings.job_timeout))
        return {"success": True, "registered": store.register(request.name, voice.samples, request.description)}

    # --- the steps ----------------------------------------------------------------------------

    def plan(self, payload: object, *, streaming_endpoint: bool = True) -> Plan:
        """Validate ``payload`` and resolve everything generation needs (``plan.make_plan``). Raises on bad input."""
        return make_plan(
            payload,
            settings=self.settings,
            library=self.voices,
            count_tokens=self.count_tokens,
            streaming_endpoint=streaming_endpoint,
            can_stream=hasattr(self.engine, "stream"),
        )

    def respond(self, plan: Plan, result: GenerationResult) -> dict:
        """The documented non-streaming response for a finished generation (``output.respond``)."""
        return output.respond(plan, result, self.engine, self.settings)

    def default_voice(self) -> str | None:
        """The library voice a request that names none gets (``VV_DEFAULT_VOICE``, else the first available)."""
        return self.voices.default(self.settings.default_voice)

    def frame_cap(self, text: str) -> int:
        return frame_cap(self.settings, text)
