"""Display names for uploaded files: what a client called a file, made safe to store and echo.

A client's file name is untrusted text: `../../etc/passwd`, `C:\\evil\\x.exe`, a NUL that
cuts the name short in C code, CR/LF that forge a header, a right-to-left override that
shows `photo<U+202E>gpj.exe` as `photoexe.jpg`, or a megabyte of characters. The display name
keeps the last path component in printable characters, bounded, and is never used as a path:
storage keys are made by the server.
"""

from __future__ import annotations

import re
import unicodedata
from typing import overload

MAX_DISPLAY_NAME = 128
# The longest extension kept whole when a long name is cut.
MAX_EXTENSION = 16
# Unsafe on common file systems or in a Content-Disposition header.
_RESERVED = re.compile(r'[<>:"|?*]')
_SPACES = re.compile(r"\s+")
# Unicode categories dropped: controls, format characters (bidi overrides, zero-width),
# surrogates, private use, unassigned, line and paragraph separators.
_DROPPED = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


@overload
def display_name(raw: str | None, *, default: str) -> str: ...


@overload
def display_name(raw: str | None, *, default: None = None) -> str | None: ...


def display_name(raw: str | None, *, default: str | None = None) -> str | None:
    """`raw` reduced to a safe base name of at most MAX_DISPLAY_NAME characters, or
    `default` when nothing usable is left."""
    if not raw:
        return default
    text = unicodedata.normalize("NFC", raw)
    text = "".join(" " if ch.isspace() else ch for ch in text if ch.isspace() or _kept(ch))
    # Both separators: a Windows client sends `C:\dir\name`, a hostile one `..\..\name`.
    text = re.split(r"[/\\]", text)[-1]
    text = _RESERVED.sub("_", text)
    # Dots at the ends make hidden files, `..`, or names Windows silently changes.
    text = _SPACES.sub(" ", text).strip(" .")
    if not text:
        return default
    return _bounded(text)


def _kept(ch: str) -> bool:
    return unicodedata.category(ch) not in _DROPPED


def _bounded(name: str) -> str:
    if len(name) <= MAX_DISPLAY_NAME:
        return name
    stem, dot, extension = name.rpartition(".")
    if dot and stem and 0 < len(extension) <= MAX_EXTENSION:
        keep = MAX_DISPLAY_NAME - len(extension) - 1
        return stem[:keep].rstrip(" .") + "." + extension
    return name[:MAX_DISPLAY_NAME].rstrip(" .")
