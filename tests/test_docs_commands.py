"""README.md and docs/*.md cannot drift from the code: every `python -m jobs.<name>` / `jobs.bench.<name>` command
line they show (and `mtl-<name>`, its console script) parses with that module's own argparse parser, every `--set`
key validates against the line's `--config` preset, and every relative link points to an existing file and heading.

Command lines come from fenced code blocks (backslash continuations joined, `  # comments` dropped) and from inline
code spans in the text (the measurement captions, the benchmark table). `[...]` marks optional flags, which are
checked too. Placeholders are skipped word by word: `...` after a flag that takes a value stands for a value (the
flag is still checked), elsewhere it is dropped, and a line holding one may leave out required flags; a value such
as `jobs/configs/<preset>.yaml` is parsed as a string but not loaded.

Each module's parser is the real one: its `main(argv)` is called with `ArgumentParser.parse_args` patched to hand
back the parser it built instead of parsing, so nothing runs (issue: the README's own example was once refused)."""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from jobs.presets import resolve_config
from mtl.config import load_config

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^```[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
INLINE_CODE = re.compile(r"`([^`]+)`")
COMMAND = re.compile(r"python -m (jobs(?:\.bench)?\.[A-Za-z_]\w*)(.*)", re.S)
# `mtl-train` is `python -m jobs.train` ([project.scripts]); `mtl-serve` wraps `serve run`, no jobs module.
SCRIPTS = {
    script: "jobs." + script.removeprefix("mtl-").replace("-", "_")
    for script in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    if script != "mtl-serve"
}
SCRIPT = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, SCRIPTS)) + r")(?![\w-])(.*)", re.S)
ELLIPSIS = {"...", "…"}
PLACEHOLDER = "<placeholder>"

# Every command a user or a measurement runs; the collector must find each of them in the docs.
SHOWN = {
    "jobs.train",
    "jobs.evaluate",
    "jobs.embed",
    "jobs.prepare_data",
    "jobs.compare_strategies",
    "jobs.compare_backbones",
    "jobs.bench.train",
    "jobs.bench.embed",
    "jobs.bench.serve",
    "jobs.bench.fuzz_serve",
}


@dataclass(frozen=True)
class Shown:
    doc: str
    line: str
    module: str
    words: tuple[str, ...]
    fenced: bool

    def __str__(self) -> str:
        return f"{self.doc}: {self.line[:100]}"


def without_fences(text: str) -> str:
    return FENCE.sub("", text)


def split_words(tail: str) -> list[str]:
    """shlex words of a command tail, with `[` / `]` that mark optional flags removed (not those inside quotes or
    inside a word, as in `--set finetune.lora.target_modules=[query,value]`)."""
    out, stack, quote = [], [], None
    for i, char in enumerate(tail):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "[":
            optional = i == 0 or tail[i - 1].isspace()
            stack.append(optional)
            if optional:
                char = " "
        elif char == "]" and stack and stack.pop():
            char = " "
        out.append(char)
    return shlex.split("".join(out))


def shown_commands() -> list[Shown]:
    found = []
    for doc in DOCS:
        text = doc.read_text()
        candidates = []
        for block in FENCE.findall(text):
            for line in block.replace("\\\n", " ").splitlines():
                if not line.lstrip().startswith("#"):
                    candidates.append((line.split("  #")[0], True))
        candidates += [(span.replace("\n", " "), False) for span in INLINE_CODE.findall(without_fences(text))]
        for line, fenced in candidates:
            match = COMMAND.search(line) or SCRIPT.search(line)
            if match:
                words = tuple(split_words(match.group(2)))
                module = SCRIPTS.get(match.group(1), match.group(1))
                found.append(Shown(doc.relative_to(ROOT).as_posix(), line.strip(), module, words, fenced))
    return found


class _Built(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser


def parser_of(module_name: str) -> argparse.ArgumentParser:
    """The parser `module.main` builds, taken from its `parse_args` call: nothing after it runs."""
    main = getattr(importlib.import_module(module_name), "main", None)
    assert main is not None, f"{module_name} has no main(argv): its command line cannot be checked"

    def hand_back(self, args=None, namespace=None):
        raise _Built(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", hand_back)
        try:
            main([])
        except _Built as built:
            return built.parser
    raise AssertionError(f"{module_name}.main([]) built no argparse parser")


def value_for(action: argparse.Action) -> str:
    """A stand-in for a `...` value that the flag's type and choices accept."""
    if action.choices:
        return str(next(iter(action.choices)))
    if action.default is not None and not isinstance(action.default, list | bool):
        return str(action.default)
    return PLACEHOLDER


def argv_for(parser: argparse.ArgumentParser, words: tuple[str, ...]) -> tuple[list[str], bool]:
    """The words as argv (`--debug` dropped, as `jobs.cli.run_command` does) and whether a placeholder was skipped."""
    argv, skipped = [], False
    for word in words:
        if word == "--debug":
            continue
        if word not in ELLIPSIS:
            argv.append(word)
            continue
        skipped = True
        action = parser._option_string_actions.get(argv[-1]) if argv else None
        if action is not None and action.nargs != 0:
            argv.append(value_for(action))
    return argv, skipped


def is_placeholder(value: object) -> bool:
    return value is None or value == PLACEHOLDER or bool(re.search(r"<[^>]*>", str(value)))


COMMANDS = shown_commands()


def test_the_docs_show_every_command():
    assert SHOWN <= {shown.module for shown in COMMANDS}, sorted(SHOWN - {shown.module for shown in COMMANDS})


# In the text, a bare `python -m jobs.embed` names the command ("the whole ... process"); in a code block it is one.
@pytest.mark.parametrize("shown", [shown for shown in COMMANDS if shown.fenced or shown.words], ids=str)
def test_shown_command_parses(shown: Shown, monkeypatch):
    """Every flag exists and takes the value shown (argparse's own types, choices and required flags)."""
    monkeypatch.chdir(ROOT)
    parser = parser_of(shown.module)
    argv, skipped = argv_for(parser, shown.words)
    if skipped:  # `--model ... --data ...`: a sketch may leave out required flags, never add unknown ones
        for action in parser._actions:
            action.required = False

    def refuse(message):
        raise AssertionError(f"{shown}\n  python -m {shown.module} {shlex.join(argv)}\n  argparse: {message}")

    monkeypatch.setattr(parser, "error", refuse)
    args = parser.parse_args(argv)

    config = getattr(args, "config", None)
    if config is not None and not is_placeholder(config):
        overrides = [value for value in getattr(args, "overrides", []) if not is_placeholder(value)]
        load_config(resolve_config(config), overrides)  # every `--set` key exists and validates with the preset
    module = importlib.import_module(shown.module)
    if hasattr(module, "parse_options") and not skipped:
        module.parse_options(argv)  # jobs.embed: its option model too (pydantic, after argparse)


# ----------------------------------------------------------------------------------------------- links, headings


def anchor(heading: str) -> str:
    """GitHub's heading anchor: markup dropped, lowercase, punctuation dropped, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for match in re.finditer(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", without_fences(doc.read_text()), flags=re.M):
        slug = anchor(match.group(1))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def relative_links() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        text = INLINE_CODE.sub("code", without_fences(doc.read_text()))
        for target in re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text):
            if not re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                found.append((doc.relative_to(ROOT).as_posix(), target))
    return found


LINKS = relative_links()


def test_the_docs_link_to_each_other():
    assert any(doc == "README.md" and target.startswith("docs/") for doc, target in LINKS)


@pytest.mark.parametrize(("doc", "target"), LINKS, ids=lambda value: value)
def test_relative_link_resolves(doc, target):
    path, _, fragment = target.partition("#")
    file = (ROOT / doc).parent / path if path else ROOT / doc
    assert file.exists(), f"{doc}: link {target!r}: no file {file}"
    if fragment:
        assert file.suffix == ".md", f"{doc}: link {target!r}: an anchor into a file that is not markdown"
        assert fragment in anchors(file), f"{doc}: link {target!r}: no heading with that anchor in {path or doc}"


@pytest.mark.parametrize("doc", sorted((ROOT / "docs").glob("*.md")), ids=lambda doc: doc.name)
def test_each_docs_page_opens_with_a_title_and_what_it_covers(doc):
    first, blank, sentence = (doc.read_text().splitlines() + ["", "", ""])[:3]
    assert first.startswith("# ") and not blank and sentence, f"{doc.name}: title line, blank, what it covers"
