"""The export as other tools read it: heads applied by hand, as the README documents, reproduce our predictions."""

import json

import numpy as np
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer

from mtl.inference.exported_model import ExportedModel

TEXTS = ["the film was great", "who wrote hamlet ?", "a dull mess"]


def test_heads_on_the_pooled_unnormalised_vector_reproduce_predictions(tiny_export):
    manifest = json.loads((tiny_export / "mtl.json").read_text())
    assert manifest["pooling"] == "mean"
    tokenizer = AutoTokenizer.from_pretrained(tiny_export)
    encoder = AutoModel.from_pretrained(tiny_export).eval()
    tokens = tokenizer(TEXTS, padding=True, truncation=True, max_length=manifest["max_seq_length"], return_tensors="pt")
    with torch.no_grad():
        hidden = encoder(**tokens).last_hidden_state
    mask = tokens["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)  # mean over real tokens, not normalised
    ours = ExportedModel.load(tiny_export).predict(TEXTS)
    for task, spec in manifest["tasks"].items():
        head = load_file(str(tiny_export / "heads" / f"{task}.safetensors"))
        assert head["weight"].shape == (len(spec["labels"]), manifest["hidden_size"])
        probabilities = torch.softmax(pooled @ head["weight"].T + head["bias"], dim=-1).numpy()
        for row, prediction in enumerate(ours):
            assert spec["labels"][int(probabilities[row].argmax())] == prediction[task]["label"]
            np.testing.assert_allclose(probabilities[row], list(prediction[task]["probabilities"].values()), atol=1e-5)
