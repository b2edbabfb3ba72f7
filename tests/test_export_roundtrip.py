"""The export reproduces the in-memory model it came from: embeddings and head probabilities, LoRA merged."""

import numpy as np
import torch

from mtl.data.tokenization import tokenize
from mtl.inference import ExportedModel
from mtl.inference.export import export_model
from mtl.model.backbone import load_tokenizer
from mtl.model.multitask import build_model
from mtl.model.strategies import apply_strategy

TEXTS = ["the film was great", "who wrote hamlet ?", "a dull , lifeless mess of a film"]


def test_lora_model_and_its_export_agree(make_config, tmp_path):
    config = make_config(finetune={"strategy": "lora", "lora": {"target_modules": ["query", "value"]}})
    model = apply_strategy(build_model(config), config.finetune).eval()
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():  # LoRA B starts at zero; give the adapters a real update so merging matters
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(0.5 * torch.randn(parameter.shape, generator=generator))
    tokens = tokenize(load_tokenizer(config.model), TEXTS, config.model.max_seq_length)
    with torch.no_grad():
        pooled = model.pooled(**tokens).numpy()  # (3, 32)
        logits = model(**tokens)
        base = apply_strategy(build_model(config), config.finetune).eval().pooled(**tokens).numpy()
    assert np.abs(pooled - base).max() > 1e-2, "the adapters should change the encoder"

    export = export_model(model, config, load_tokenizer(config.model), tmp_path / "export", metrics={}, steps=0)
    loaded = ExportedModel.load(export)
    np.testing.assert_allclose(loaded.encode(TEXTS).numpy(), pooled, rtol=1e-4, atol=1e-5)
    probabilities = loaded.head_probabilities(loaded.encode(TEXTS), ["sentiment", "topic"])
    for task, task_logits in logits.items():
        np.testing.assert_allclose(probabilities[task], torch.softmax(task_logits, dim=-1).numpy(), atol=1e-5)
    embedded = loaded.embed(TEXTS)
    np.testing.assert_allclose(embedded, pooled / np.linalg.norm(pooled, axis=1, keepdims=True), atol=1e-5)
