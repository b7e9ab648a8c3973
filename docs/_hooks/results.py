"""MkDocs hook: serve the study outputs from where the scripts write them (one copy, no drift).

- Every figure and CSV under experiments/results/ and benchmarks/results/ joins the site at the same path
  (``experiments/results/compare_bases.png`` ...), so pages link to them as ``../experiments/results/...``
  and ``mkdocs build --strict`` checks those links.
- A line ``<!-- include: experiments/results/compare_bases.md -->`` in a page is replaced by that report, its
  headings moved one level down (the report's title becomes a section of the page); ``shift=N`` moves them N
  levels, and ``PATH#Heading`` takes only the section under that heading (without the heading line). A missing
  report or section fails the build.
- Lists written for GitHub (a list right after a paragraph, sub-items indented by two spaces) are given the blank
  line and the four-space indentation Python-Markdown needs, in pages and reports alike.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

RESULT_DIRS = ("experiments/results", "benchmarks/results")
SERVED = {".png", ".csv"}
INCLUDE = re.compile(
    r"^<!-- include: (?P<path>[^#\s]+)(?:#(?P<section>[^=]+?))?(?: shift=(?P<shift>\d))? -->$", re.MULTILINE
)
HEADING = re.compile(r"^(?P<level>#{1,6}) (?P<title>.*?)\s*$")


def _root(config) -> Path:
    return Path(config["config_file_path"]).resolve().parent


def on_files(files, config):
    root = _root(config)
    for folder in RESULT_DIRS:
        for path in sorted((root / folder).rglob("*")):
            relative = path.relative_to(root)
            if path.is_file() and path.suffix in SERVED and not any(p.startswith(".") for p in relative.parts):
                files.append(File.generated(config, relative.as_posix(), abs_src_path=str(path)))
    return files


def _headings(text: str):
    """(line index, level, title) of each heading outside code fences."""
    fenced = False
    for index, line in enumerate(text.splitlines()):
        if line.startswith("```"):
            fenced = not fenced
        heading = None if fenced else HEADING.match(line)
        if heading:
            yield index, len(heading["level"]), heading["title"]


def _section(text: str, title: str) -> str | None:
    lines, headings = text.splitlines(), list(_headings(text))
    for number, (index, level, found) in enumerate(headings):
        if found == title:
            end = next((i for i, lv, _ in headings[number + 1 :] if lv <= level), len(lines))
            return "\n".join(lines[index + 1 : end])
    return None


def _shift_headings(text: str, shift: int) -> str:
    lines = text.splitlines()
    for index, level, _ in _headings(text):
        lines[index] = "#" * min(level + shift, 6) + lines[index][level:]
    return "\n".join(lines)


LIST_ITEM = re.compile(r"^(?P<indent> *)(?:[-*+]|\d+\.) ")


def _github_lists(text: str) -> str:
    out, fenced, in_list = [], False, False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        item = None if fenced else LIST_ITEM.match(line)
        if item:
            if not in_list and out and out[-1].strip():
                out.append("")
            line = item["indent"] * 2 + line.lstrip(" ")
            in_list = True
        elif not line.strip():
            in_list = False
        out.append(line)
    return "\n".join(out)


def on_page_markdown(markdown, page, config, files):
    root = _root(config)

    def include(match: re.Match) -> str:
        where = f"{page.file.src_uri}: cannot include {match[0]}"
        path = (root / match["path"]).resolve()
        if root not in path.parents or path.suffix != ".md" or not path.is_file():
            raise PluginError(f"{where}: no such .md file in the repository")
        text = path.read_text(encoding="utf-8")
        if match["section"]:
            text = _section(text, match["section"])
            if text is None:
                raise PluginError(f"{where}: {match['path']} has no heading {match['section']!r}")
        return _shift_headings(text, int(match["shift"] or 1))

    return _github_lists(INCLUDE.sub(include, markdown))
