"""The documentation holds together: every Markdown file that a tracked file cites exists, every
cited section of the method's description is there, nothing cites the notes the project was
started from, and the README stays a short user's guide. Reads tracked files only (``git
ls-files``); no network."""

from __future__ import annotations

import re
import subprocess
from functools import lru_cache
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parents[1]
METHOD = "docs/method.md"
README_MAX_LINES = 250
# Written in two parts so that this file does not contain what it forbids.
FORBIDDEN = ("METHOD" ".md", "DESIGN" ".md", "../" "shared")

# "docs/method.md section 4", "docs/method.md sections 2-4", "section 2/3", also after a
# Markdown link to the file: "[docs/method.md](docs/method.md) section 9".
SECTION_CITATION = re.compile(
    r"docs/method\.md(?:\]\([^)\s]*\))?,?\s+sections?\s+"
    r"(\d+(?:\s*(?:-|/|,|and|to)\s*\d+)*)")
# A repository-relative doc path anywhere in a file: a Markdown file under docs/, the docker
# folder's README or the README (not part of a longer path such as ~/vb-sweep/README.md, nor of
# a URL).
PLAIN_DOC_PATH = re.compile(r"(?<![\w./~-])(docs/[\w./-]*\.md|docker/README\.md|README\.md)\b")
# `anything.md` in backticks: repository-relative. It cites a document of the repository when
# it starts with one of the repository's top-level folders (`docs/...`) or, without a folder,
# when it is named like a top-level document (`README.md`); lowercase bare names and paths under
# a placeholder (`grid.md`, `OUT/grid.md`) are files that the code writes.
BACKTICKED_MD = re.compile(r"`([^`\s]+\.md)(?:#[^`\s]*)?`")
# [text](target.md#anchor) in Markdown: relative to the file that holds the link.
MARKDOWN_LINK = re.compile(r"\]\(([^)\s#]+\.md)(#[^)\s]*)?\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$", re.MULTILINE)
NUMBERED_SECTION = re.compile(r"^## (\d+)\.\s", re.MULTILINE)


@lru_cache(maxsize=1)
def tracked_files() -> tuple[str, ...]:
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                                check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        pytest.skip("not a git checkout: the tracked files cannot be listed")
    return tuple(name for name in listed.decode().split("\0") if name)


def text_of(name: str) -> str | None:
    """A tracked file's text; None for a binary file or one deleted from the working tree."""
    path = ROOT / name
    if not path.is_file():
        return None
    data = path.read_bytes()
    if b"\0" in data:
        return None
    return data.decode("utf-8", errors="replace")


def tracked_texts() -> list[tuple[str, str]]:
    return [(name, text) for name in tracked_files() if (text := text_of(name)) is not None]


def normalise(path: PurePosixPath) -> str | None:
    """``a/b/../c.md`` -> ``a/c.md``; None when it climbs out of the repository."""
    parts: list[str] = []
    for part in path.parts:
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                return None
            parts.pop()
        else:
            parts.append(part)
    return "/".join(parts)


def cited_doc_paths(name: str, text: str) -> list[tuple[str, str | None]]:
    """(repository path, anchor or None) for every Markdown file ``name`` cites."""
    cited = [(match, None) for match in PLAIN_DOC_PATH.findall(text)]
    cited += [(match, None) for match in BACKTICKED_MD.findall(text) if names_a_document(match)]
    if name.endswith(".md"):
        folder = PurePosixPath(name).parent
        for target, anchor in MARKDOWN_LINK.findall(text):
            if re.match(r"[a-z]+:", target):  # a URL, not a file of this repository
                continue
            resolved = normalise(folder / target) if not target.startswith("/") else None
            cited.append((resolved or target, anchor[1:] if anchor else None))
    return cited


def names_a_document(path: str) -> bool:
    first, _, rest = path.partition("/")
    if rest:
        return first in top_level_folders()
    return path[:1].isupper()


@lru_cache(maxsize=1)
def top_level_folders() -> frozenset[str]:
    return frozenset(name.split("/")[0] for name in tracked_files() if "/" in name)


def section_numbers(citation: str) -> set[int]:
    numbers = [int(n) for n in re.findall(r"\d+", citation)]
    if re.search(r"\d+\s*(?:-|to)\s*\d+", citation) and len(numbers) == 2:
        return set(range(numbers[0], numbers[1] + 1))
    return set(numbers)


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors_of(text: str) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for _, heading in HEADING.findall(strip_code_blocks(text)):
        anchor = github_anchor(heading)
        count = seen.get(anchor, 0)
        anchors.add(anchor if count == 0 else f"{anchor}-{count}")
        seen[anchor] = count + 1
    return anchors


def strip_code_blocks(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)


# ---------------------------------------------------------------------------------------------
def test_every_cited_doc_exists():
    tracked = set(tracked_files())
    missing = []
    for name, text in tracked_texts():
        for path, anchor in cited_doc_paths(name, text):
            if path not in tracked:
                missing.append(f"{name} cites {path}, which is not a tracked file")
            elif anchor and anchor not in anchors_of(text_of(path) or ""):
                missing.append(f"{name} links {path}#{anchor}, which has no such heading")
    assert not missing, "\n".join(missing)


def test_every_cited_method_section_exists():
    method = text_of(METHOD)
    assert method is not None, f"{METHOD} is missing"
    headings = {int(n) for n in NUMBERED_SECTION.findall(method)}
    dangling = []
    for name, text in tracked_texts():
        for citation in SECTION_CITATION.findall(text):
            for number in section_numbers(citation) - headings:
                dangling.append(f"{name} cites {METHOD} section {number}")
    assert not dangling, "\n".join(dangling)


def test_method_sections_are_numbered_in_order():
    """Code cites the sections by number: they run 1, 2, 3, ... with none missing or moved."""
    numbers = [int(n) for n in NUMBERED_SECTION.findall(text_of(METHOD) or "")]
    assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) >= 10, numbers


def test_the_method_cites_its_own_sections_correctly():
    method = text_of(METHOD) or ""
    headings = {int(n) for n in NUMBERED_SECTION.findall(method)}
    cited = set()
    for citation in re.findall(r"(?<!\w)sections?\s+(\d+(?:\s*(?:-|/|,|and|to)\s*\d+)*)",
                               strip_code_blocks(method)):
        cited |= section_numbers(citation)
    assert cited <= headings, sorted(cited - headings)


def test_no_file_cites_the_starting_notes():
    found = [f"{name}: {word}" for name, text in tracked_texts() for word in FORBIDDEN
             if word in text]
    assert not found, "\n".join(found)


def test_readme_is_a_short_guide_that_starts_with_the_quickstart():
    readme = text_of("README.md")
    assert readme is not None
    lines = readme.splitlines()
    assert len(lines) < README_MAX_LINES, f"README.md has {len(lines)} lines"
    assert lines[0] == "# vb-sweep"
    headings = [line for line in lines if line.startswith("## ")]
    assert headings and headings[0] == "## Quickstart", headings[:3]
    presets = [i for i, line in enumerate(headings) if line.startswith("## Presets")]
    assert presets and presets[0] > 0
    for page in ("docs/method.md", "docs/results.md", "docs/benchmarks.md"):
        assert f"]({page})" in readme, f"README.md does not link {page}"


def test_readme_lists_every_results_column():
    """The README's description of OUT/trials and OUT/history names every column they hold."""
    from vb_sweep.results import HISTORY_SCHEMA, TRIAL_SCHEMA

    readme = strip_code_blocks(text_of("README.md") or "")
    listed = set(re.findall(r"\w+", " ".join(re.findall(r"`([^`]+)`", readme))))
    missing = [name for schema in (TRIAL_SCHEMA, HISTORY_SCHEMA) for name in schema.names
               if name not in listed]
    assert not missing, f"README.md does not describe the columns {missing}"
