"""The command lines README.md and docs/ show for `jobs.train` and `jobs.embed` parse as written: every flag exists,
every `--set` key is a config key whose value validates with the preset (issue: the README's own example was once
refused). Only fenced code blocks count; `[...]` marks optional flags, which are checked too."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from jobs.embed import parse_options
from mtl.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def commands(job: str) -> list[tuple[str, list[str]]]:
    found = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        blocks = re.findall(r"```[a-z]*\n(.*?)```", doc.read_text(), flags=re.S)
        for block in blocks:
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split("  #")[0]
                if f"python -m jobs.{job} " not in line:
                    continue
                tail = line.split(f"python -m jobs.{job} ", 1)[1].replace("[", " ").replace("]", " ")
                words = [word for word in shlex.split(tail) if word != "..."]
                if not words:  # `python -m jobs.train ...`: a placeholder, nothing to check
                    continue
                found.append((f"{doc.name}: {line.strip()[:80]}", words))
    return found


@pytest.mark.parametrize(("where", "words"), commands("train"), ids=lambda value: None)
def test_train_examples_parse_with_their_presets(where, words, monkeypatch):
    monkeypatch.chdir(ROOT)
    config = words[words.index("--config") + 1]
    overrides = [words[i + 1] for i, word in enumerate(words) if word == "--set"]
    load_config(config, overrides)


@pytest.mark.parametrize(("where", "words"), commands("embed"), ids=lambda value: None)
def test_embed_examples_parse(where, words):
    parse_options(words)


def test_the_docs_show_both_commands():
    assert commands("train") and commands("embed")
