"""Sections: a workload's own settings, read like Settings and cached alongside them."""

from __future__ import annotations

from pathlib import Path
from typing import Self

import pytest
from pydantic import Field

from conveyor.core.settings import (
    Settings,
    SettingsError,
    SettingsSection,
    get_settings,
    section,
    use_settings,
)


class Demo(SettingsSection):
    demo_batch_size: int = Field(default=10, ge=1, description="Items per batch.")
    demo_label: str = Field(default="", description="Where the data directory came from.")

    def resolve(self, settings: Settings) -> Self:
        return self.model_copy(update={"demo_label": settings.data_dir.name})


def test_a_section_is_read_once_while_the_settings_are_cached(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CONVEYOR_DEMO_BATCH_SIZE", "25")
    first = section(Demo)
    assert first.demo_batch_size == 25
    monkeypatch.setenv("CONVEYOR_DEMO_BATCH_SIZE", "50")
    assert section(Demo) is first


def test_clearing_the_settings_cache_reads_the_section_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert section(Demo).demo_batch_size == 10
    monkeypatch.setenv("CONVEYOR_DEMO_BATCH_SIZE", "50")
    get_settings.cache_clear()
    assert section(Demo).demo_batch_size == 50


def test_given_settings_are_what_a_section_is_resolved_with(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert section(Demo).demo_label == ".conveyor"
    monkeypatch.setenv("CONVEYOR_DEMO_BATCH_SIZE", "7")
    try:
        use_settings(Settings(data_dir=Path("elsewhere")))
        assert (section(Demo).demo_label, section(Demo).demo_batch_size) == ("elsewhere", 7)
    finally:
        use_settings(None)
    assert section(Demo).demo_label == ".conveyor"


def test_a_bad_section_value_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CONVEYOR_DEMO_BATCH_SIZE", "0")
    with pytest.raises(SettingsError) as info:
        section(Demo)
    assert str(info.value) == (
        "invalid configuration: CONVEYOR_DEMO_BATCH_SIZE: Input should be greater than or "
        "equal to 1"
    )
    assert info.value.__cause__ is None
