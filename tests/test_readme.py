"""README.md: every in-page link (``[text](#anchor)``) names a heading that exists, with the
anchor GitHub derives from it (lower case, punctuation dropped, spaces to hyphens), and
every relative file link points to a file or folder of the repository."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def anchors(text: str) -> set[str]:
    """GitHub's anchors of the Markdown headings outside code blocks."""
    out, fenced = set(), False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        m = None if fenced else re.match(r"^#{1,6} (.*)", line)
        if m:
            out.add(re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-"))
    return out


def test_anchor_rule_matches_github():
    assert anchors("## Sanity check before deploying: `ntkdyn check`\n") == {
        "sanity-check-before-deploying-ntkdyn-check"}
    assert anchors("```\n# not a heading\n```\n") == set()


def test_readme_links_resolve():
    text = (ROOT / "README.md").read_text()
    known = anchors(text)
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert any(link.startswith("#") for link in links)
    missing = [link for link in links if link.startswith("#") and link[1:] not in known]
    assert not missing, f"README links to headings that do not exist: {missing}"
    files = [link.split("#")[0] for link in links
             if not link.startswith(("#", "http://", "https://", "mailto:"))]
    absent = [f for f in files if f and not (ROOT / f).exists()]
    assert not absent, f"README links to paths that do not exist: {absent}"
