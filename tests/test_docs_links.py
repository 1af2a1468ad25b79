"""Every relative link in the README, docs/*.md and saved_models/README.md points at a file that
exists, and every #anchor at a heading of the page it names (GitHub's heading ids)."""

import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = sorted(
    [os.path.join(ROOT, "README.md"), os.path.join(ROOT, "saved_models", "README.md")]
    + glob.glob(os.path.join(ROOT, "docs", "*.md"))
)

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
# [text](target) and ![alt](target); the target ends at whitespace or the closing parenthesis.
LINK = re.compile(r"!?\[(?:[^\]\n]|\n(?!\n))*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)


def without_code(text: str) -> str:
    """The page without fenced blocks and inline code, where brackets are not links."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def heading_ids(text: str) -> set:
    """The anchors GitHub gives a page's headings: lowercase, punctuation dropped except '-'
    and '_', each space a '-', a repeated id suffixed -1, -2, ..."""
    ids, seen = set(), {}
    for title in HEADING.findall(FENCE.sub("", text)):
        title = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", title)  # a link in a heading: its text
        slug = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        ids.add(slug if count == 0 else f"{slug}-{count}")
    return ids


def relative_links(page: str) -> list:
    with open(page, encoding="utf-8") as handle:
        text = without_code(handle.read())
    return [t for t in LINK.findall(text) if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.I)]


def broken_links(page: str) -> list:
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
        if not os.path.exists(resolved):
            broken.append(f"{target}: no such file")
        elif anchor and resolved.endswith(".md"):
            with open(resolved, encoding="utf-8") as handle:
                if anchor not in heading_ids(handle.read()):
                    broken.append(f"{target}: no heading #{anchor} in {os.path.relpath(resolved, ROOT)}")
    return broken


def test_the_checker_finds_broken_links_and_anchors(tmp_path):
    (tmp_path / "other.md").write_text("# Speed: bf16, XLA\n\n## Speed: bf16, XLA\n\n## The `fit` way\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md) [ok](other.md#speed-bf16-xla) [ok](other.md#speed-bf16-xla-1)\n"
        "[ok](other.md#the-fit-way) ![ok](other.md) [web](https://example.com/missing.md)\n"
        "`[code](missing.md)`\n```\n[fenced](missing.md)\n```\n"
        "[gone](missing.md) [bad anchor](other.md#nope) [two\nlines](gone/too.png)\n"
    )
    assert broken_links(str(page)) == [
        "missing.md: no such file",
        "other.md#nope: no heading #nope in " + os.path.relpath(str(tmp_path / "other.md"), ROOT),
        "gone/too.png: no such file",
    ]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: os.path.relpath(p, ROOT))
def test_relative_links_resolve(page):
    assert broken_links(page) == []
