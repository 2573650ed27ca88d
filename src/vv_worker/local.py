"""Command-line synthesis on your own machine, through the same service as the worker.

python -m vv_worker.local --text "Hello there" [--voice NAME | --reference FILE]
                          [--seed N] [--out out.wav] [--model ID_OR_DIR] [--threads N]

The request is checked before the model loads, and library voices whose recordings are missing
are downloaded on first use (``scripts/fetch_voices.py``, with progress).
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import logging
import os
import sys
from pathlib import Path
from types import ModuleType

from . import audio
from .audio import AudioError
from .client import EXTENSIONS, SPEAKER_HELP, ClientError, audio_file_base64, output_format_for, speaker_sources
from .config import ConfigError, apply_cpu_threads, load_settings
from .engine.base import EngineError
from .prompt import Script, ScriptError, parse_script
from .provision import path_problem
from .schema import RequestError, parse_request
from .voices import MANIFEST_NAME, VoiceError, VoiceLibrary

FETCH_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "fetch_voices.py"  # in a checkout of the project


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vv_worker.local", description="Synthesize speech to a file.")
    parser.add_argument("--text", required=True, help="what to say: plain text or 'Speaker N:' lines")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--voice", help="a voice library name (see voices/manifest.json)")
    source.add_argument("--reference", type=Path, help="an audio file of the voice to clone")
    parser.add_argument("--seed", type=int, help="same seed, text and voice: same audio")
    parser.add_argument("--speaker", action="append", default=[], metavar="N=VOICE", help=SPEAKER_HELP)
    parser.add_argument("--out", type=Path, help="output path (default out.<format>)")
    parser.add_argument(
        "--format", choices=list(EXTENSIONS), help="output format (default: from --out's extension, else wav)"
    )
    parser.add_argument("--sample-rate", type=int, default=24000, help="output sample rate, 8000 to 48000")
    parser.add_argument("--normalize", type=float, help="target loudness in LUFS, e.g. -16")
    parser.add_argument("--trim-silence", action="store_true", help="trim leading and trailing silence")
    parser.add_argument("--model", help="hub repo id or local folder (default: VV_MODEL)")
    parser.add_argument("--threads", help="torch CPU threads: N or auto (default: VV_CPU_THREADS, auto)")
    parser.add_argument("--cfg-scale", type=float, help="guidance scale (default: VV_CFG_SCALE)")
    parser.add_argument("--steps", type=int, help="diffusion steps (default: VV_DIFFUSION_STEPS)")
    parser.add_argument("--temperature", type=float, help="sample the LM's tokens at this temperature")
    parser.add_argument("--speed", type=float, help="tempo, 0.5 to 2.0, pitch kept")
    return parser.parse_args(argv)


def build_payload(args: argparse.Namespace) -> dict:
    """The same request a RunPod client would send; the format follows --format or --out's extension."""
    output_format = output_format_for(args.out, args.format)
    payload: dict = {"text": args.text, "output_format": output_format, "sample_rate": args.sample_rate}
    if args.normalize is not None:
        payload["normalize"] = args.normalize
    if args.trim_silence:
        payload["trim_silence"] = True
    if args.speaker:
        payload["speakers"] = speaker_sources(args.speaker)
    if args.voice:
        payload["voice"] = args.voice
    if args.reference:
        payload["reference_audio"] = audio_file_base64(args.reference, "--reference")
    if args.seed is not None:
        payload["seed"] = args.seed
    if args.cfg_scale is not None:
        payload["cfg_scale"] = args.cfg_scale
    if args.steps is not None:
        payload["diffusion_steps"] = args.steps
    settings = {k: v for k, v in (("temperature", args.temperature), ("speed", args.speed)) if v is not None}
    if settings:
        payload["voice_settings"] = settings
    return payload


def check_request(payload: dict, max_text_chars: int) -> Script:
    """The checks that need no model (fields, script, output format), so bad input fails at once."""
    request = parse_request(payload, max_text_chars=max_text_chars)
    try:
        script = parse_script(request.text)
    except ScriptError as error:
        raise RequestError(f"invalid input: {error}") from None
    audio.check_output_format(request.output_format, request.sample_rate)
    return script


def _load_fetch_script() -> ModuleType | None:
    if not FETCH_SCRIPT.is_file():
        return None
    spec = importlib.util.spec_from_file_location("fetch_voices", FETCH_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _fix(folder: Path) -> str:
    return (
        f"fix: run `python {FETCH_SCRIPT} --dir {folder}` where the internet is reachable (or copy the recordings "
        "listed in its manifest.json there), or give --reference FILE"
    )


def ensure_voices(payload: dict, script: Script, folder: Path) -> None:
    """Download the library's missing recordings when this request needs library voices; check named ones.

    A request needs the library when it names a voice, or when a speaker has no reference (that
    speaker then gets the default or a free library voice).
    """
    named = [payload["voice"]] if payload.get("voice") else []
    named += [voice for voice in payload.get("speakers", {}).values() if isinstance(voice, str)]
    references = int("reference_audio" in payload) + sum(
        1 for voice in payload.get("speakers", {}).values() if isinstance(voice, dict)
    )
    if not named and references >= len(script.speaker_numbers):
        return
    where = f"{folder.resolve()} (VV_VOICES_DIR; a relative path is taken from the working directory)"
    if not (folder / MANIFEST_NAME).is_file():
        if named:
            raise VoiceError(
                f"voice {named[0]!r}: no voice library at {where}; run from the project folder, or set "
                "VV_VOICES_DIR to the project's voices folder"
            )
        return  # no library at all: the service warns that the text has no voice prompt
    library = VoiceLibrary(folder)
    missing = [entry for entry in library.entries.values() if not (folder / entry.file).is_file()]
    failures: dict[str, str] = {}  # file -> why it could not be downloaded
    if missing:
        fetch = _load_fetch_script()
        if fetch is None:
            failures = {entry.file: f"{FETCH_SCRIPT} is not here to download it" for entry in missing}
        else:
            print(f"downloading {len(missing)} voice recording(s) into {folder} (first use) ...", file=sys.stderr)
            outcomes = fetch.fetch_voices(
                folder / MANIFEST_NAME,
                folder,
                timeout_s=30.0,
                echo=lambda line: print(line, file=sys.stderr),
                progress=fetch.print_progress,
            )
            failures = {o.file: o.detail for o in outcomes if o.status == "failed"}
        library = VoiceLibrary(folder)
    for name in named:
        entry = library.entries.get(name.lower())
        if entry is not None and not (folder / entry.file).is_file():
            raise VoiceError(
                f"voice {name!r}: its recording {entry.file} is not in {where} and could not be downloaded "
                f"({failures.get(entry.file, 'not listed for download')}); {_fix(folder)}"
            )
        library.load(name)  # unknown names: the library's own message, with the voices available
    if failures:
        print(f"warning: {len(failures)} voice recording(s) could not be downloaded; {_fix(folder)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    overrides = {"model": args.model, "cpu_threads": args.threads}
    try:
        settings = load_settings(**{key: value for key, value in overrides.items() if value is not None})
        payload = build_payload(args)
        script = check_request(payload, settings.max_text_chars)
        ensure_voices(payload, script, settings.voices_dir)
    except (ConfigError, RequestError, AudioError, VoiceError, ClientError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.model is not None and (problem := path_problem(args.model)) is not None:
        print(f"error: --model {args.model}: {problem}", file=sys.stderr)
        return 2
    from tqdm import tqdm

    from .service import SynthesisService

    try:
        threads = apply_cpu_threads(settings)
        print(f"loading {settings.model} ({threads} CPU thread{'s' if threads > 1 else ''}) ...", file=sys.stderr)
        service = SynthesisService.from_settings(settings)
        bar = tqdm(desc="generating", unit="frame", total=None, file=sys.stderr)

        def progress(frames: int, cap: int) -> None:
            bar.total = cap
            bar.update(frames - bar.n)

        try:
            result = service.synthesize(payload, on_progress=progress)
        finally:
            bar.close()
    except (ConfigError, EngineError, RequestError, AudioError, VoiceError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    out = args.out or Path(f"out.{payload['output_format']}")
    out.parent.mkdir(parents=True, exist_ok=True)
    if "audio_b64" in result:
        out.write_bytes(base64.b64decode(result["audio_b64"]))
    else:  # too large to return inline: uploaded to the configured bucket
        import requests

        response = requests.get(result["audio_url"], timeout=60)
        response.raise_for_status()
        out.write_bytes(response.content)
    for warning in result["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    metrics = result["metrics"]
    print(
        f"wrote {os.fspath(out)}: {result['duration_seconds']:.2f} s of audio, "
        f"real-time factor {metrics['real_time_factor']:.3f} "
        f"({metrics['generation_seconds']:.2f} s for {metrics['frames']} frames), "
        f"seed {result['seed_used']}, voice {result['voice_used'] or 'none'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
