"""Display names of uploads: base name only, printable, bounded, never a path."""

from __future__ import annotations

import pytest

from conveyor.core.filenames import MAX_DISPLAY_NAME, display_name


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("photo.jpg", "photo.jpg"),
        ("Foto München 写真.jpg", "Foto München 写真.jpg"),
        ("../../etc/passwd", "passwd"),
        ("..\\..\\windows\\win.ini", "win.ini"),
        ("C:\\Users\\me\\cat.png", "cat.png"),
        ("evil.php\x00.jpg", "evil.php.jpg"),
        ("a\r\nX-Evil: 1.jpg", "a X-Evil_ 1.jpg"),
        ("photo\u202egpj.exe", "photogpj.exe"),
        ("zero\u200bwidth.png", "zerowidth.png"),
        ('say "hi" <now>?.png', "say _hi_ _now__.png"),
        ("  lots   of\tspace .png  ", "lots of space .png"),
        (".htaccess", "htaccess"),
        ("name.", "name"),
    ],
)
def test_names_keep_the_base_name_in_safe_characters(raw: str, expected: str) -> None:
    assert display_name(raw) == expected


@pytest.mark.parametrize("raw", [None, "", "..", "../", "\x00\x01", " . ", "dir/"])
def test_nothing_usable_gives_the_default(raw: str | None) -> None:
    assert display_name(raw) is None
    assert display_name(raw, default="attachment") == "attachment"


def test_long_names_are_cut_and_keep_their_extension() -> None:
    name = display_name("x" * 10_000 + ".jpeg")
    assert name is not None
    assert len(name) == MAX_DISPLAY_NAME
    assert name.endswith("x.jpeg")
    odd = display_name("y" * 500 + "." + "z" * 40)
    assert odd is not None
    assert len(odd) == MAX_DISPLAY_NAME
