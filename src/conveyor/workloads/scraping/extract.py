"""Extraction with selectolax (lexbor): CSS selectors to named fields, and the page's links.

A rule is a selector (the first match's text) or {"selector", "attr", "all"}: an attribute
instead of the text, every match instead of the first.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from selectolax.lexbor import LexborHTMLParser, SelectolaxError

MAX_FIELDS = 50
MAX_VALUE_CHARS = 10_000
MAX_VALUES = 200


class BadRule(ValueError):
    """An extraction rule that cannot be used; the message names the field."""


@dataclass(frozen=True)
class Rule:
    selector: str
    attr: str | None = None
    all: bool = False


_PROBE = LexborHTMLParser("<html><body></body></html>")


def parse_rules(raw: Mapping[str, Any]) -> dict[str, Rule]:
    """Check the request's rules (BadRule names the field) and return them parsed."""
    if len(raw) > MAX_FIELDS:
        raise BadRule(f"at most {MAX_FIELDS} fields, got {len(raw)}")
    rules: dict[str, Rule] = {}
    for name, spec in raw.items():
        if not name or name == "url" or len(name) > 100:
            raise BadRule(f"{name!r}: a field name is 1 to 100 characters, and not 'url'")
        if isinstance(spec, str):
            rule = Rule(spec)
        elif isinstance(spec, Mapping) and isinstance(spec.get("selector"), str):
            unknown = set(spec) - {"selector", "attr", "all"}
            if unknown:
                raise BadRule(f"{name}: unknown keys {sorted(unknown)}")
            attr, every = spec.get("attr"), spec.get("all", False)
            if attr is not None and not isinstance(attr, str):
                raise BadRule(f"{name}: attr must be a string such as 'href'")
            if not isinstance(every, bool):
                raise BadRule(f"{name}: all must be true or false")
            rule = Rule(spec["selector"], attr, every)
        else:
            raise BadRule(
                f'{name}: a CSS selector, or {{"selector": ..., "attr": ..., "all": ...}}'
            )
        try:
            _PROBE.css(rule.selector)
        except SelectolaxError:
            raise BadRule(f"{name}: {rule.selector!r} is not a valid CSS selector") from None
        rules[name] = rule
    return rules


def rules_hash(raw: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()[:32]


def _value(node: Any, rule: Rule) -> str | None:
    if rule.attr is not None:
        value = node.attributes.get(rule.attr)
    else:
        # Text as a reader sees it: runs of whitespace (markup, indentation) as one space.
        value = " ".join(node.text(deep=True, separator=" ").split())
    return None if value is None else str(value)[:MAX_VALUE_CHARS]


@dataclass(frozen=True)
class Extracted:
    item: dict[str, Any] | None  # None when no rule matched anything
    links: list[str]  # raw hrefs, in page order, unresolved
    base: str | None = None  # the page's <base href>, which links resolve against


def extract(html: str, rules: Mapping[str, Rule], *, want_links: bool = True) -> Extracted:
    tree = LexborHTMLParser(html)
    item: dict[str, Any] = {}
    for name, rule in rules.items():
        if rule.all:
            values = [_value(node, rule) for node in tree.css(rule.selector)[:MAX_VALUES]]
            item[name] = [value for value in values if value is not None]
        else:
            node = tree.css_first(rule.selector)
            item[name] = None if node is None else _value(node, rule)
    links: list[str] = []
    if want_links:
        base = tree.css_first("base[href]")
        base_href = base.attributes.get("href") if base is not None else None
        for anchor in tree.css("a[href], area[href]"):
            if (anchor.attributes.get("rel") or "").lower().find("nofollow") >= 0:
                continue
            href = anchor.attributes.get("href")
            if href:
                links.append(href)
    else:
        base_href = None
    matched = any(value not in (None, []) for value in item.values())
    return Extracted(item if matched else None, links, base_href)
