"""Each bound and format is declared once (limits.py, Settings): the schema, the settings, the CLI and the docs
agree with those declarations."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vv_worker import limits
from vv_worker.config import Settings, load_settings
from vv_worker.schema import SynthesisRequest, VoiceSettings

REPO = Path(__file__).resolve().parents[1]
DOCS = {name: (REPO / name).read_text(encoding="utf-8") for name in ("README.md", "docs/API.md")}
REQUEST_BOUNDS = {
    "seed": limits.SEED,
    "cfg_scale": limits.CFG_SCALE,
    "diffusion_steps": limits.DIFFUSION_STEPS,
    "voice_settings.speed": limits.SPEED,
    "voice_settings.temperature": limits.TEMPERATURE,
    "normalize": limits.LOUDNESS_LUFS,
    "sample_rate": limits.OUTPUT_SAMPLE_RATE,
}


def row(doc: str, key: str) -> str:
    """The first table row whose first cell is `key`."""
    found = re.search(rf"^\| `{re.escape(key)}` \|.*$", DOCS[doc], re.MULTILINE)
    assert found, f"{doc} has no table row for {key}"
    return found.group(0)


def numbers(text: str) -> set[float]:
    return {float(n) for n in re.findall(r"-?\d+(?:\.\d+)?", text.replace(",", ""))}


def schema_bounds(model, name: str) -> tuple[float | None, float | None]:
    prop = model.model_json_schema()["properties"][name]
    prop = next((p for p in prop.get("anyOf", [prop]) if p.get("type") != "null"), prop)
    return prop.get("minimum", prop.get("exclusiveMinimum")), prop.get("maximum")


@pytest.mark.parametrize("doc", DOCS)
@pytest.mark.parametrize("field", REQUEST_BOUNDS)
def test_request_tables_state_each_bound_as_declared(doc, field):
    bound = REQUEST_BOUNDS[field]
    assert {float(bound.low), float(bound.high)} <= numbers(row(doc, field)), (doc, field, bound)


@pytest.mark.parametrize("doc", DOCS)
def test_request_tables_list_the_formats_as_declared(doc):
    formats = row(doc, "output_format")
    assert all(f"`{name}`" in formats for name in limits.OUTPUT_FORMATS)
    rates = row(doc, "sample_rate")
    for name, entry in limits.OUTPUT_FORMATS.items():
        if entry.rates is not None and (doc == "docs/API.md" or name == "ogg"):  # the README names the MPEG rates
            assert ", ".join(map(str, entry.rates)) in rates, (doc, name)
    reference = row(doc, "reference_audio")
    assert limits.INPUT_FORMATS_TEXT in reference
    low, high = limits.REFERENCE_FILE_RATE.low // 1000, limits.REFERENCE_FILE_RATE.high // 1000
    assert f"{low} to {high} kHz" in reference and f"at most {limits.REFERENCE_FILE_CHANNELS} channels" in reference


def test_the_limits_table_states_the_reference_formats():
    assert limits.INPUT_FORMATS_TEXT in DOCS["README.md"].split("## Limits and errors")[1]


def test_the_schema_and_the_settings_take_their_ranges_from_limits():
    pairs = [
        (SynthesisRequest, "cfg_scale", limits.CFG_SCALE),
        (Settings, "cfg_scale", limits.CFG_SCALE),
        (SynthesisRequest, "diffusion_steps", limits.DIFFUSION_STEPS),
        (Settings, "diffusion_steps", limits.DIFFUSION_STEPS),
        (SynthesisRequest, "seed", limits.SEED),
        (SynthesisRequest, "sample_rate", limits.OUTPUT_SAMPLE_RATE),
        (SynthesisRequest, "normalize", limits.LOUDNESS_LUFS),
        (VoiceSettings, "speed", limits.SPEED),
        (VoiceSettings, "temperature", limits.TEMPERATURE),
    ]
    for model, name, bound in pairs:
        assert schema_bounds(model, name) == (bound.low, bound.high), (model.__name__, name)
    formats = SynthesisRequest.model_json_schema()["properties"]["output_format"]["enum"]
    assert formats == list(limits.OUTPUT_FORMATS)


@pytest.mark.parametrize(
    "field",
    ["cfg_scale", "diffusion_steps", "max_text_chars", "max_text_tokens", "extra_frames", "max_frames", "job_timeout"]
    + ["url_timeout_s", "url_max_bytes", "max_inline_bytes", "default_voice"],
)
def test_the_configuration_table_states_each_default(field, monkeypatch):
    for name in [n for n in __import__("os").environ if n.startswith("VV_")]:
        monkeypatch.delenv(name)
    default = getattr(load_settings(), field)
    shown = f"`{default:g}`" if isinstance(default, float) else f"`{default}`"
    assert shown in row("README.md", f"VV_{field.upper()}"), (field, default)


def test_the_cli_offers_the_declared_formats():
    from vv_worker.local import parse_args

    for name in limits.OUTPUT_FORMATS:
        assert parse_args(["--text", "x", "--format", name]).format == name
    with pytest.raises(SystemExit):
        parse_args(["--text", "x", "--format", "aiff"])


def test_bounds_word_their_ranges():
    assert limits.CFG_SCALE.allowed == "a number from 1 to 10"
    assert limits.DIFFUSION_STEPS.allowed == "an integer from 1 to 50"
    assert limits.TEMPERATURE.allowed == "a number above 0 and at most 2"
    assert 0.5 in limits.SPEED and 2.0 in limits.SPEED and 2.01 not in limits.SPEED
    assert 0.0 not in limits.TEMPERATURE and 1e-9 in limits.TEMPERATURE
