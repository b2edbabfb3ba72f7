"""FastDropout: nn.Dropout's keep rate, scaling and gradient with a cheaper mask; eval mode and set_seed as before."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import AutoModel

from mtl.model.fast_dropout import FastDropout, use_fast_dropout


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_keeps_one_minus_p_and_scales_the_kept_ones(p):
    out = FastDropout(p).train()(torch.ones(1000, 1000))
    kept = out != 0
    assert abs(float(kept.float().mean()) - (1 - p)) < 0.003
    assert torch.equal(out[kept], torch.full_like(out[kept], 1 / (1 - p)))


def test_gradient_is_the_mask_and_bf16_stays_bf16():
    hidden = torch.randn(8, 16, 32, dtype=torch.bfloat16, requires_grad=True)
    out = FastDropout(0.2).train()(hidden)
    assert out.dtype == torch.bfloat16
    out.sum().backward()
    expected = torch.where(out != 0, torch.tensor(1 / 0.8, dtype=torch.bfloat16), torch.tensor(0, dtype=torch.bfloat16))
    assert torch.equal(hidden.grad, expected)


def test_eval_mode_and_p_zero_are_the_identity():
    hidden = torch.randn(4, 8)
    assert torch.equal(FastDropout(0.3).eval()(hidden), hidden)
    assert torch.equal(FastDropout(0.0).train()(hidden), hidden)


def test_p_that_16_bits_cannot_tell_from_one_and_inplace_are_torchs_dropout():
    torch.manual_seed(0)
    assert int((FastDropout(1 - 1e-6).train()(torch.ones(100_000)) != 0).sum()) < 5  # not everything kept x 1e6
    hidden = torch.ones(1000)
    FastDropout(0.5, inplace=True).train()(hidden)
    assert 0.4 < float((hidden == 0).float().mean()) < 0.6  # dropped in place, as nn.Dropout does


def test_torch_seed_makes_the_masks_repeatable():
    def masks(seed):
        torch.manual_seed(seed)
        layer = FastDropout(0.1).train()
        return [layer(torch.ones(64, 64)) for _ in range(3)]

    first, again, other = masks(0), masks(0), masks(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], other[0]) and not torch.equal(first[0], first[1])


def test_every_bert_dropout_becomes_fast_and_keeps_its_p(tiny_backbone):
    encoder = AutoModel.from_pretrained(tiny_backbone)
    before = {name: module.p for name, module in encoder.named_modules() if isinstance(module, nn.Dropout)}
    assert use_fast_dropout(encoder) == len(before) > 0
    after = {name: module for name, module in encoder.named_modules() if isinstance(module, nn.Dropout)}
    assert all(type(module) is FastDropout and module.p == before[name] for name, module in after.items())
    ids = torch.randint(0, 100, (2, 7))
    encoder.train()(input_ids=ids).last_hidden_state.sum().backward()  # trains as before
    encoder.eval()
    with torch.no_grad():
        assert torch.equal(encoder(input_ids=ids).last_hidden_state, encoder(input_ids=ids).last_hidden_state)
