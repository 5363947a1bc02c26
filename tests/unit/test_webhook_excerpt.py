"""A receiver's answer is kept as a short printable excerpt, never its raw bytes."""

from __future__ import annotations

from collections.abc import Iterator

import httpx

from conveyor.webhooks.delivery import EXCERPT_CHARS, _excerpt, sanitize_excerpt


def test_controls_escapes_and_line_breaks_are_gone_and_spaces_collapsed() -> None:
    raw = "ok\r\n\x1b[31mred\x1b[0m\tdone\u2028next\x00\x85end\u200b!".encode()
    assert sanitize_excerpt(raw) == "ok [31mred [0m done next end !"


def test_at_most_200_characters_are_kept_and_bad_utf8_is_replaced() -> None:
    assert len(sanitize_excerpt(b"x" * 5000)) == EXCERPT_CHARS == 200
    assert sanitize_excerpt(b"caf\xc3") == "caf\ufffd"
    assert sanitize_excerpt("Grüße, 世界".encode()) == "Grüße, 世界"


def test_the_excerpt_of_a_response_reads_only_its_start() -> None:
    served: list[int] = []

    def body() -> Iterator[bytes]:
        yield b"<html>\n  <h1>Oops</h1>\n</html>"
        for _ in range(1000):
            served.append(1)
            yield b"y" * 1000

    excerpt = _excerpt(httpx.Response(500, content=body()))
    assert excerpt.startswith("<html> <h1>Oops</h1> </html>yyy")
    assert len(excerpt) == EXCERPT_CHARS
    assert len(served) <= 2  # the rest of a large answer is never read
