"""One job, top to bottom: plan (every request check, ``plan.py``) -> engine -> output (``output.py``).

The service owns what lives as long as the worker: the settings, the loaded engine, the voice library.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from . import memory, output
from .config import ConfigError, Settings
from .engine.base import Engine, GenerationResult, ProgressCallback
from .limits import ERROR_PROBLEMS_SHOWN
from .plan import Plan, frame_cap, make_plan
from .schema import RequestError, field_label
from .voices import VoiceLibrary

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
        return cls(settings, engine, VoiceLibrary(settings.voices_dir))

    # --- entry points -------------------------------------------------------------------------

    def handle(self, payload: object, on_progress: ProgressCallback | None = None) -> dict:
        """A job's input, dispatched on its ``action``: ``synthesize`` (the default) or ``list_voices``."""
        try:
            if isinstance(payload, dict) and payload.get("action") == "list_voices":
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
        """The whole audio in one response."""
        plan = self.plan(payload, streaming_endpoint=False)
        return self.respond(plan, self.engine.generate(plan.job, on_progress=on_progress))

    def stream(self, payload: object, on_progress: ProgressCallback | None = None) -> Iterator[dict]:
        """For a streaming endpoint: chunks of PCM 16-bit 24 kHz while generating, then a summary.

        A request without ``stream: true`` yields its ordinary response as the single item.
        """
        try:
            plan = self.plan(payload)
            if not plan.request.stream:
                yield self.respond(plan, self.engine.generate(plan.job, on_progress=on_progress))
                return
            yield from output.stream_items(plan, self.engine.stream(plan.job, on_progress=on_progress), self.engine)
        finally:
            memory.release()

    def list_voices(self) -> dict:
        return {
            "voices": [entry.public() for entry in self.voices.available()],
            "default_voice": self.default_voice(),
        }

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
