from pathlib import Path

import pytest

from mtl.config import load_config

CONFIGS = sorted(Path("jobs/configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[path.name for path in CONFIGS])
def test_shipped_config_is_valid_and_starts_with_its_command(path):
    config = load_config(path)
    assert config.tasks
    first_lines = path.read_text().splitlines()[:4]
    assert any("python -m jobs." in line or "make demo" in line for line in first_lines), path


def test_there_are_shipped_configs():
    assert CONFIGS
