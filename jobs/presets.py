"""The training presets shipped inside the package (`jobs/configs/*.yaml`), found by name.

`--config production` is the shipped `production.yaml` wherever the package is installed; a path that names an
existing file is read as today, and wins over a preset of the same name. Paths inside a preset (`data.train:
../shared/data/...`, `run.storage_path: runs`) stay relative to the current directory either way. The shipped Serve
config is found the same way by `mtl-serve` (`serve_app.local.SHIPPED_CONFIG`).
"""

from __future__ import annotations

from pathlib import Path

from mtl.config import ConfigError

PRESETS_DIR = Path(__file__).resolve().parent / "configs"


def shipped_presets() -> list[str]:
    """The preset names, sorted: `head_b_only`, `lora`, `poc`, `production`, ..."""
    return sorted(path.stem for path in PRESETS_DIR.glob("*.yaml"))


def resolve_config(value: str | Path) -> Path:
    """The YAML for `--config value`: the file at `value` if there is one, else the shipped preset of that name
    (`production` or `production.yaml`, no directory part)."""
    path = Path(value)
    if path.is_file():
        return path
    preset = PRESETS_DIR / f"{path.name.removesuffix('.yaml')}.yaml"
    if path.parent == Path(".") and preset.is_file():
        return preset
    raise ConfigError(
        f"--config {value}: no such file, and no shipped preset of that name "
        f"(shipped presets: {', '.join(shipped_presets())}; a preset is named without a directory)"
    )
