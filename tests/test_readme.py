"""The README is the user's map: every in-page link must lead to a heading that exists, and
every file it names under the project's own directories must exist. Sections get condensed and
renamed; a link left pointing at a removed heading is found here, not by a reader."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
ROOT = README.parent

_LINK = re.compile(r"\]\(#([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6} (.+?)\s*$")
_FENCE = re.compile(r"^```")
_PROJECT_PATH = re.compile(
    r"`((?:sollol_proxy|tests|deploy)/[\w./-]+\.(?:py|yaml|yml|html|conf|service))`"
)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(lines: list[str]) -> set[str]:
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    in_code = False
    for line in lines:
        if _FENCE.match(line):
            in_code = not in_code
            continue
        match = None if in_code else _HEADING.match(line)
        if match is None:
            continue
        slug = _slug(match.group(1))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def test_slug_follows_github() -> None:
    assert _slug("Zero configuration: `sollol-proxy bench capacity`") == (
        "zero-configuration-sollol-proxy-bench-capacity"
    )
    assert _slug("The slowest 5% of `shared_prompts` (issue #18)") == (
        "the-slowest-5-of-shared_prompts-issue-18"
    )


def test_every_in_page_link_has_its_heading() -> None:
    text = README.read_text(encoding="utf-8")
    anchors = _anchors(text.splitlines())
    links = _LINK.findall(text)
    assert links, "the README's links were not found: the pattern no longer matches them"
    broken = sorted({target for target in links if target not in anchors})
    assert broken == [], f"README links to headings that do not exist: {broken}"


def test_every_project_file_named_exists() -> None:
    text = README.read_text(encoding="utf-8")
    paths = _PROJECT_PATH.findall(text)
    assert paths, "the README's file names were not found: the pattern no longer matches them"
    missing = sorted({path for path in paths if not (ROOT / path).exists()})
    assert missing == [], f"README names files that do not exist: {missing}"
