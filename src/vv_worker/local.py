"""Command-line synthesis on your own machine, through the same service as the worker.

python -m vv_worker.local --text "Hello there" [--voice NAME | --reference FILE]
                          [--seed N] [--out out.wav] [--model ID_OR_DIR]
"""

from __future__ import annotations

import argparse
import base64
import logging
import os
import sys
from pathlib import Path

from .audio import AudioError
from .config import ConfigError, load_settings
from .engine.base import EngineError
from .provision import path_problem
from .schema import RequestError
from .voices import VoiceError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vv_worker.local", description="Synthesize speech to a file.")
    parser.add_argument("--text", required=True, help="what to say")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--voice", help="a voice library name (see voices/manifest.json)")
    source.add_argument("--reference", type=Path, help="an audio file of the voice to clone")
    parser.add_argument("--seed", type=int, help="same seed, text and voice: same audio")
    parser.add_argument("--speaker", action="append", default=[], metavar="N=VOICE", help="voice of Speaker N")
    parser.add_argument("--out", type=Path, help="output path (default out.<format>)")
    parser.add_argument("--format", choices=["wav", "flac", "mp3", "ogg"], default="wav", help="output format")
    parser.add_argument("--sample-rate", type=int, default=24000, help="output sample rate, 8000 to 48000")
    parser.add_argument("--normalize", type=float, help="target loudness in LUFS, e.g. -16")
    parser.add_argument("--trim-silence", action="store_true", help="trim leading and trailing silence")
    parser.add_argument("--model", help="hub repo id or local folder (default: VV_MODEL)")
    parser.add_argument("--cfg-scale", type=float, help="guidance scale (default: VV_CFG_SCALE)")
    parser.add_argument("--steps", type=int, help="diffusion steps (default: VV_DIFFUSION_STEPS)")
    parser.add_argument("--temperature", type=float, help="sample the LM's tokens at this temperature")
    parser.add_argument("--speed", type=float, help="tempo, 0.5 to 2.0, pitch kept")
    return parser.parse_args(argv)


def build_payload(args: argparse.Namespace) -> dict:
    """The same request a RunPod client would send."""
    payload: dict = {"text": args.text, "output_format": args.format, "sample_rate": args.sample_rate}
    if args.normalize is not None:
        payload["normalize"] = args.normalize
    if args.trim_silence:
        payload["trim_silence"] = True
    speakers = {}
    for item in args.speaker:
        number, _, voice = item.partition("=")
        path = Path(voice)
        if path.is_file():
            speakers[number.strip()] = {"reference_audio": base64.b64encode(path.read_bytes()).decode("ascii")}
        else:
            speakers[number.strip()] = voice
    if speakers:
        payload["speakers"] = speakers
    if args.voice:
        payload["voice"] = args.voice
    if args.reference:
        payload["reference_audio"] = base64.b64encode(args.reference.read_bytes()).decode("ascii")
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.reference is not None and not args.reference.is_file():
        print(f"error: --reference {args.reference}: no such file", file=sys.stderr)
        return 2
    if args.model is not None and (problem := path_problem(args.model)) is not None:
        print(f"error: --model {args.model}: {problem}", file=sys.stderr)
        return 2
    from tqdm import tqdm

    from .service import SynthesisService

    try:
        settings = load_settings(**({"model": args.model} if args.model else {}))
        print(f"loading {settings.model} ...", file=sys.stderr)
        service = SynthesisService.from_settings(settings)
        payload = build_payload(args)
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

    out = args.out or Path(f"out.{args.format}")
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
