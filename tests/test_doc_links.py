"""Every relative link in the repository's markdown (README, docs/, results/, benchmarks/) and in the configs'
comments names a file that exists, and a ``#anchor`` names a heading of that file (GitHub's slugs)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted(
    [
        ROOT / "README.md",
        *ROOT.glob("docs/*.md"),
        *ROOT.glob("results/**/*.md"),
        *ROOT.glob("benchmarks/*.md"),
    ]
)
LINK = re.compile(r"\]\(([^)\s]+)\)")  # [text](target)
CONFIG_LINK = re.compile(r"(?:docs|results)/[\w./-]+\.md(?:#[\w-]+)?")  # a path a config comment names


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", lambda m: "_" if m.group() == "_" else "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    lines = page.read_text().splitlines()
    in_code, found = False, set()
    for line in lines:
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            found.add(slug(line.lstrip("#")))
    return found


def broken(source: Path, target: str, base: Path) -> str | None:
    if re.match(r"[a-z]+:", target) or target.startswith("<"):  # http(s):, mailto:, placeholders
        return None
    path, _, anchor = target.partition("#")
    page = (base / path).resolve() if path else source
    if not page.exists():
        return f"{source.relative_to(ROOT)}: {target} (no such file)"
    if anchor and page.suffix == ".md" and anchor not in anchors(page):
        return f"{source.relative_to(ROOT)}: {target} (no heading #{anchor} in {page.relative_to(ROOT)})"
    return None


def test_slug_follows_github():
    assert slug(" A CPU-scale demonstration, end to end") == "a-cpu-scale-demonstration-end-to-end"
    assert slug(" Back to transformers: `lmsleep export-hf`") == "back-to-transformers-lmsleep-export-hf"
    assert slug(" rule110_mixed_depth") == "rule110_mixed_depth"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_markdown_links_resolve(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code blocks hold commands, not links
    problems = [p for t in LINK.findall(text) if (p := broken(page, t, page.parent))]
    assert not problems, "\n".join(problems)


def test_config_comments_name_pages_that_exist():
    problems = []
    for config in sorted(ROOT.glob("configs/**/*.yaml")):
        comments = "\n".join(line.split("#", 1)[1] for line in config.read_text().splitlines() if "#" in line)
        problems += [p for t in CONFIG_LINK.findall(comments) if (p := broken(config, t, ROOT))]
    assert not problems, "\n".join(problems)
