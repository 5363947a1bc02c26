"""Presets from settings: the built-in set, JSON from the environment, clear errors."""

from __future__ import annotations

import json
import re

import pytest

from conveyor.core.settings import SettingsError, section
from conveyor.workloads.images.presets import BUILTIN, parse_presets
from conveyor.workloads.images.settings import ImagesSettings


def test_the_builtin_default_preset() -> None:
    default = parse_presets("")["default"]
    assert default == BUILTIN["default"]
    assert [(v.name, v.width, v.crop) for v in default.variants] == [
        ("thumbnail", 200, True),
        ("medium", 800, False),
        ("large", 1600, False),
    ]
    assert default.formats == ("jpeg", "webp", "avif")
    assert default.strip_metadata


def test_presets_from_json_with_watermark_and_format_overrides() -> None:
    text = json.dumps(
        {
            "shop": {
                "variants": [
                    {"name": "card", "width": 400, "height": 300, "crop": True},
                    {"name": "zoom", "width": 2000, "formats": ["avif"]},
                ],
                "formats": ["webp"],
                "watermark": {"text": "Shop", "position": "center", "opacity": 0.3},
            }
        }
    )
    shop = parse_presets(text)["shop"]
    card, zoom = shop.variants
    assert shop.formats_of(card) == ("webp",)
    assert shop.formats_of(zoom) == ("avif",)
    assert shop.watermark is not None
    assert shop.watermark.text == "Shop"
    assert shop.variant("zoom") == zoom


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "must be JSON"),
        ("[]", "JSON object of presets"),
        ('{"Bad Name": {"variants": [{"name": "a", "width": 1}]}}', "preset name 'Bad Name'"),
        ('{"p": {"variants": []}}', "preset 'p': variants"),
        ('{"p": {"variants": [{"name": "a", "width": 0}]}}', "variants.0.width"),
        ('{"p": {"variants": [{"name": "a", "width": 9, "formats": ["gif"]}]}}', "formats"),
        (
            '{"p": {"variants": [{"name": "a", "width": 9}, {"name": "a", "width": 5}]}}',
            "variant names must be unique",
        ),
        (
            '{"p": {"variants": [{"name": "a", "width": 9}], "watermark": {"opacity": 0.5}}}',
            "exactly one of text or image",
        ),
    ],
)
def test_bad_presets_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_presets(text)


def test_a_bad_preset_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_IMAGE_PRESETS", '{"p": {"variants": []}}')
    with pytest.raises(SettingsError, match="CONVEYOR_IMAGE_PRESETS: preset 'p'"):
        section(ImagesSettings)
