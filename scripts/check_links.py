#!/usr/bin/env python3
"""Fails on broken links in the docs, as GitHub reads them and as the built site has them.

Usage: scripts/check_links.py DOCS_DIR [BOOK_DIR]

- Markdown (DOCS_DIR/*.md, and README.md beside DOCS_DIR): every relative link must name a
  file or directory of the repository, and an anchor must be a heading of the linked
  Markdown file (GitHub's and mdBook's ids agree: lower case, punctuation dropped, spaces as
  `-`). Every Markdown file of DOCS_DIR must be a chapter of SUMMARY.md.
- HTML (BOOK_DIR, the output of `mdbook build`): every relative `href` and `src` that stays
  inside the site must name a file of it, and its anchor an `id` of that page. Links that
  leave the site point into the repository; the Markdown check covers them.

mdBook itself reports neither kind.
"""

import html.parser
import os
import re
import sys
import urllib.parse

LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")


def is_external(target):
    return bool(urllib.parse.urlsplit(target).scheme) or target.startswith("//")


def slug(text):
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = text.strip().lower()
    text = "".join(c for c in text if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


def markdown_lines(path):
    """The lines of a Markdown file outside fenced code blocks, with inline code removed."""
    fenced = False
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if FENCE.match(line):
                fenced = not fenced
                continue
            if not fenced:
                yield number, re.sub(r"`[^`]*`", "``", line)


def anchors_of_markdown(path, cache={}):
    if path not in cache:
        seen, anchors = {}, set()
        fenced = False
        with open(path, encoding="utf-8") as f:
            for line in f:
                if FENCE.match(line):
                    fenced = not fenced
                    continue
                m = None if fenced else HEADING.match(line)
                if m:
                    base = slug(m.group(2))
                    n = seen.get(base, 0)
                    seen[base] = n + 1
                    anchors.add(base if n == 0 else f"{base}-{n}")
                for m in re.finditer(r"<a\s+(?:name|id)=\"([^\"]+)\"", line):
                    anchors.add(m.group(1))
        cache[path] = anchors
    return cache[path]


def check_markdown(docs, errors):
    root = os.path.dirname(os.path.abspath(docs))
    files = [os.path.join(docs, f) for f in sorted(os.listdir(docs)) if f.endswith(".md")]
    readme = os.path.join(root, "README.md")
    if os.path.exists(readme):
        files.append(readme)
    chapters = set()
    summary = os.path.join(docs, "SUMMARY.md")
    for path in files:
        base = os.path.dirname(os.path.abspath(path))
        for number, line in markdown_lines(path):
            for m in LINK.finditer(line):
                target = m.group(1)
                if is_external(target) or target.startswith("mailto:"):
                    continue
                place = f"{os.path.relpath(path)}:{number}"
                file_part, _, anchor = target.partition("#")
                linked = os.path.normpath(os.path.join(base, urllib.parse.unquote(file_part))) if file_part else os.path.abspath(path)
                if not os.path.exists(linked):
                    errors.append(f"{place}: `{target}`: no such file `{os.path.relpath(linked)}`")
                    continue
                if os.path.commonpath([linked, root]) != root:
                    errors.append(f"{place}: `{target}` leaves the repository")
                    continue
                if path == summary:
                    chapters.add(linked)
                if anchor and linked.endswith(".md") and anchor not in anchors_of_markdown(linked):
                    errors.append(f"{place}: `{target}`: no heading `#{anchor}` in `{os.path.relpath(linked)}`")
    if os.path.exists(summary):
        for path in files:
            absolute = os.path.abspath(path)
            if os.path.dirname(absolute) == os.path.abspath(docs) and absolute != os.path.abspath(summary) and absolute not in chapters:
                errors.append(f"{os.path.relpath(path)}: not a chapter of `{os.path.relpath(summary)}`")


class Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.ids = [], set()

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("id", "name") and value:
                self.ids.add(value)
            if name in ("href", "src") and value is not None:
                self.links.append((self.getpos()[0], value))


def parse_html(path, cache={}):
    if path not in cache:
        parser = Links()
        with open(path, encoding="utf-8") as f:
            parser.feed(f.read())
        cache[path] = parser
    return cache[path]


def check_html(book, errors):
    book = os.path.abspath(book)
    if not os.path.exists(os.path.join(book, "index.html")):
        errors.append(f"`{book}` has no index.html: build the site first (`mdbook build docs`)")
        return
    for directory, _, names in os.walk(book):
        for name in sorted(names):
            if not name.endswith(".html"):
                continue
            path = os.path.join(directory, name)
            for line, target in parse_html(path).links:
                if not target or is_external(target) or target.startswith(("mailto:", "javascript:", "data:")):
                    continue
                place = f"{os.path.relpath(path)}:{line}"
                file_part, _, anchor = target.partition("#")
                file_part = file_part.split("?")[0]
                linked = os.path.normpath(os.path.join(directory, urllib.parse.unquote(file_part))) if file_part else path
                if os.path.commonpath([linked, book]) != book:
                    continue
                if os.path.isdir(linked):
                    linked = os.path.join(linked, "index.html")
                if not os.path.exists(linked):
                    errors.append(f"{place}: `{target}`: no such file in the site")
                elif anchor and linked.endswith(".html") and urllib.parse.unquote(anchor) not in parse_html(linked).ids:
                    errors.append(f"{place}: `{target}`: no `id=\"{anchor}\"` in `{os.path.relpath(linked)}`")


def main():
    if len(sys.argv) not in (2, 3):
        raise SystemExit(__doc__)
    errors = []
    check_markdown(sys.argv[1], errors)
    if len(sys.argv) == 3:
        check_html(sys.argv[2], errors)
    for error in errors:
        print(f"broken link: {error}", file=sys.stderr)
    if errors:
        raise SystemExit(f"{len(errors)} broken links")
    print("links: all good", file=sys.stderr)


if __name__ == "__main__":
    main()
