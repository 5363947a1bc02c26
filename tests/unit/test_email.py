"""The email workload's pure parts: templates, text from HTML, addresses, messages, limits."""

from __future__ import annotations

import asyncio
import email
from collections.abc import Sequence
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from conveyor.core.rate_limit import Bucket, Decision
from conveyor.local.mail_sink import Mailbox, SinkHandler
from conveyor.workloads.email.addresses import (
    Address,
    check_header_value,
    parse_address,
    parse_addresses,
)
from conveyor.workloads.email.errors import InvalidInput
from conveyor.workloads.email.html_text import html_to_text
from conveyor.workloads.email.limits import RESERVE_HORIZON, EmailLimits, Pacer, as_rate
from conveyor.workloads.email.message import Attachment, Draft, build_message
from conveyor.workloads.email.service import list_unsubscribe
from conveyor.workloads.email.templates import BUILTIN_DIR, RenderError, TemplateRegistry

WELCOME = {"name": "Ada", "app_name": "Conveyor", "confirm_url": "https://example.com/c"}


def registry(*extra: Path) -> TemplateRegistry:
    return TemplateRegistry([*extra, BUILTIN_DIR])


def test_html_to_text_keeps_structure_and_links_and_drops_style() -> None:
    html = (
        "<html><head><style>p{color:red}</style><title>T</title></head><body>"
        "<h1>Hello&nbsp;<b>Ada</b></h1><p>One\n   two</p><ul><li>a</li><li>b</li></ul>"
        "<p><a href='https://example.com/x'>Open</a> or <a href='#top'>top</a><br>end</p>"
        "<script>alert(1)</script></body></html>"
    )
    assert html_to_text(html) == (
        "Hello Ada\n\nOne two\n\n- a\n- b\n\nOpen (https://example.com/x) or top\nend\n"
    )


def test_welcome_renders_subject_html_and_text_with_layout_and_partials() -> None:
    rendered = registry().render("welcome", {**WELCOME, "name": "<Ada & co>"})
    assert rendered.subject == "Welcome to Conveyor, <Ada & co>!"  # plain text: not escaped
    assert "<h1>Welcome, &lt;Ada &amp; co&gt;!</h1>" in rendered.html  # HTML: escaped
    assert 'href="https://example.com/c"' in rendered.html  # the button partial
    assert "You receive this email" in rendered.html  # the layout's footer partial
    assert "Welcome, <Ada & co>!" in rendered.text
    assert "Confirm my email (https://example.com/c)" in rendered.text


def test_a_template_with_its_own_text_part_uses_it() -> None:
    context = {"name": "Ada", "app_name": "C", "minutes": 5, "reset_url": "https://e.com/r"}
    rendered = registry().render("password-reset", context)
    assert rendered.text.startswith("Hello Ada,\n\nSomeone asked")
    assert "within 5 minutes: https://e.com/r" in rendered.text


@pytest.mark.parametrize(
    ("name", "context", "field"),
    [
        ("nope", WELCOME, "template"),
        ("../welcome", WELCOME, "template"),
        ("welcome", {"name": "Ada", "app_name": "C"}, "context.confirm_url"),
        ("welcome", {**WELCOME, "app_name": "X\r\nBcc: a@example.com"}, "subject"),
    ],
)
def test_render_errors_name_the_field(name: str, context: dict[str, Any], field: str) -> None:
    with pytest.raises(RenderError) as caught:
        registry().render(name, context)
    assert caught.value.field == field


def test_an_application_directory_overrides_and_extends_the_builtin_templates(
    tmp_path: Path,
) -> None:
    (tmp_path / "welcome").mkdir()
    (tmp_path / "welcome" / "subject.txt").write_text("Hi {{ name }}")
    (tmp_path / "welcome" / "html.html").write_text(
        '{% extends "_layouts/base.html" %}{% block content %}<p>Own {{ name }}</p>{% endblock %}'
    )
    (tmp_path / "_partials").mkdir()
    (tmp_path / "_partials" / "footer.html").write_text("<p>Own footer</p>")
    own = registry(tmp_path)
    rendered = own.render("welcome", {"name": "Ada"})
    assert rendered.subject == "Hi Ada"
    assert "<p>Own Ada</p>" in rendered.html
    assert "Own footer" in rendered.html
    assert own.sample("welcome") == WELCOME | {
        "confirm_url": "https://example.com/confirm?token=abc123"
    }
    assert {"welcome", "password-reset"} <= set(own.names())


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("ada@example.com", Address("ada@example.com")),
        ("Ada Lovelace <ada@EXAMPLE.com>", Address("ada@example.com", "Ada Lovelace")),
        ('"Lovelace, Ada" <ada@example.com>', Address("ada@example.com", "Lovelace, Ada")),
        ("ada@bücher.example", Address("ada@xn--bcher-kva.example", "")),
    ],
)
def test_addresses_are_parsed_and_normalized(value: str, expected: Address) -> None:
    assert parse_address(value, "to[0]") == expected


@pytest.mark.parametrize(
    "value",
    [
        "not-an-address",
        "a@b",
        "ada@example.com, bob@example.com",
        "Ada\r\nBcc: x@example.com <ada@example.com>",
        "ada@example.com\n",
        "ada\x00@example.com",
        "",
    ],
)
def test_bad_addresses_are_refused_naming_the_field(value: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_address(value, "cc[2]")
    assert caught.value.field == "cc[2]"


def test_too_many_recipients_are_refused() -> None:
    with pytest.raises(InvalidInput, match="at most 2"):
        parse_addresses(["a@example.com"] * 3, "to", limit=2)


def _draft(**changes: Any) -> Draft:
    values: dict[str, Any] = {
        "sender": Address("noreply@example.com", "Conveyor"),
        "to": [Address("ada@example.com", "Ada Lovelace")],
        "cc": [Address("bob@example.com")],
        "subject": "Hello Ada",
        "text": "Plain body\n",
        "html": "<p>HTML body</p>",
        "message_id": "<abc123@mail.example.com>",
    }
    return Draft(**{**values, **changes})


def _parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=default_policy)
    assert isinstance(message, EmailMessage)
    return message


def test_message_has_both_parts_headers_and_attachments() -> None:
    attachment = Attachment("data.bin", "application/octet-stream", bytes(range(256)))
    draft = _draft(
        headers={"List-Unsubscribe": "<mailto:u@example.com>"}, attachments=(attachment,)
    )
    data = build_message(draft).as_bytes()
    assert b"\r\n" in data
    message = _parse(data)
    assert message["From"] == "Conveyor <noreply@example.com>"
    assert message["To"] == "Ada Lovelace <ada@example.com>"
    assert message["Cc"] == "bob@example.com"
    assert message["Message-ID"] == "<abc123@mail.example.com>"
    assert message["List-Unsubscribe"] == "<mailto:u@example.com>"
    assert message["Date"]
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert text is not None
    assert text.get_content().rstrip() == "Plain body"
    assert html is not None
    assert html.get_content().rstrip() == "<p>HTML body</p>"
    [part] = list(message.iter_attachments())
    assert part.get_filename() == "data.bin"
    assert part.get_payload(decode=True) == bytes(range(256))


def test_the_smtp_policy_refuses_a_header_with_a_line_break() -> None:
    with pytest.raises(ValueError, match=r"linefeed|newline|CR|LF"):
        build_message(_draft(subject="Hi\r\nBcc: victim@example.com")).as_bytes()


def test_list_unsubscribe_encodes_the_address_and_offers_one_click() -> None:
    headers = list_unsubscribe("a+b@example.com", "https://e.com/u?e={email}", "u@e.com")
    assert headers == {
        "List-Unsubscribe": "<mailto:u@e.com?subject=unsubscribe>, <https://e.com/u?e=a%2Bb%40example.com>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
    assert "List-Unsubscribe-Post" not in list_unsubscribe("a@example.com", None, "u@e.com")


class FakeTakeAll:
    """Records the buckets of each call; answers with `answer`."""

    def __init__(self, answer: Decision | None = None) -> None:
        self.answer = answer or Decision(allowed=True)
        self.calls: list[list[tuple[str, int, float]]] = []

    def __call__(self, buckets: Sequence[Bucket]) -> Decision:
        self.calls.append([(bucket.key, bucket.cost, bucket.horizon) for bucket in buckets])
        return self.answer


def test_rates_are_evenly_spaced_and_zero_is_off() -> None:
    rate = as_rate(100)
    assert rate is not None
    assert rate.interval == pytest.approx(0.01)
    assert rate.burst == 1
    assert as_rate(0) is None
    assert as_rate(0.5) is not None


def test_domain_limits_use_overrides_and_skip_unlimited_domains() -> None:
    limits = EmailLimits(domain=0, domain_overrides={"slow.example.org": 10})
    take_all = FakeTakeAll()
    pacer = Pacer(limits, take_all=take_all)
    assert pacer.take("acme", {"fast.example.com": 3}, 3).allowed
    assert take_all.calls == [[]]  # no limit for that domain (nor any other): no bucket
    pacer.take("acme", {"slow.example.org": 2, "fast.example.com": 1}, 3)
    # A domain's slot is taken only if free now (horizon 0), one per recipient there.
    assert take_all.calls[-1] == [("email:domain:slow.example.org", 2, 0.0)]


def test_one_call_takes_domain_slots_and_books_owner_and_provider_slots() -> None:
    limits = EmailLimits(provider=100, owner=50, domain=20)
    busy = Decision(False, retry_after=0.07, refused_by="email:domain:b.example")
    take_all = FakeTakeAll(busy)
    decision = Pacer(limits, take_all=take_all).take("acme", {"b.example": 1, "a.example": 2}, 3)
    assert decision is busy
    assert take_all.calls == [
        [
            ("email:domain:a.example", 2, 0.0),
            ("email:domain:b.example", 1, 0.0),
            ("email:owner:acme", 3, RESERVE_HORIZON),
            ("email:provider", 3, RESERVE_HORIZON),
        ]
    ]


def test_mailbox_keeps_the_newest_messages_and_parses_them(tmp_path: Path) -> None:
    mailbox = Mailbox(tmp_path / "box", max_messages=10)
    raw = build_message(_draft()).as_bytes()
    ids = [mailbox.save("s@example.com", ["ada@example.com"], raw) for _ in range(60)]
    assert mailbox.ids() == ids[-20:]  # pruned to 10 at the 50th save; 10 more since
    detail = mailbox.detail(ids[-1])
    assert detail is not None
    assert detail["subject"] == "Hello Ada"
    assert detail["envelope_to"] == ["ada@example.com"]
    assert detail["text"].rstrip() == "Plain body"
    assert mailbox.read("../../etc/passwd") is None
    assert mailbox.clear() == 20
    assert mailbox.ids() == []


def test_the_long_running_sink_keeps_messages_on_disk_not_in_memory(tmp_path: Path) -> None:
    handler = SinkHandler(mailbox=Mailbox(tmp_path), keep_received=False)
    envelope = SimpleNamespace(
        mail_from="a@example.com",
        rcpt_tos=["b@example.com"],
        original_content=b"Subject: hi\r\n\r\nbody\r\n",
        content=None,
    )
    reply = asyncio.run(handler.handle_DATA(None, None, envelope))
    assert reply.startswith("250 ")
    assert handler.received == []
    saved = Mailbox(tmp_path).ids()
    assert len(saved) == 1
    message = Mailbox(tmp_path).read(saved[0])
    assert message is not None
    assert message["Subject"] == "hi"


def _refused_by_the_email_package(char: str) -> bool:
    try:
        build_message(_draft(subject=f"Hello{char}Ada")).as_bytes()
    except ValueError:
        return True
    return False


def test_header_values_refuse_every_character_the_email_package_breaks_lines_at() -> None:
    # Passing the API and then failing in the worker was a dead letter for bad input.
    # Latin-1, the General Punctuation block (U+2028 and U+2029) and a few odd spaces.
    codes = [*range(0x200), *range(0x2000, 0x2070), 0x3000, 0xFEFF]
    breaking = [chr(code) for code in codes if _refused_by_the_email_package(chr(code))]
    assert {"\r", "\n", "\u0085", "\u2028", "\u2029"} <= set(breaking)
    for char in breaking:
        with pytest.raises(InvalidInput, match="must not contain line breaks") as caught:
            check_header_value(f"Hello{char}Ada", "subject")
        assert caught.value.field == "subject"


@pytest.mark.parametrize("char", ["\x00", "\x1b", "\x7f", "\x9b"])
def test_header_values_refuse_c0_and_c1_controls(char: str) -> None:
    with pytest.raises(InvalidInput, match="control characters"):
        check_header_value(f"Hello{char}Ada", "reply_to")


def test_display_names_with_a_line_separator_are_refused() -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_address("Ada\u2028Lovelace <ada@example.com>", "from")
    assert caught.value.field == "from"
    assert check_header_value("Tab\tand ünïcode", "subject") == "Tab\tand ünïcode"
