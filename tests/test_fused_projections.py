"""``encoder.text.fused_projections``: one matmul for query/key/value (and cross-attention key/value),
the same parameters and the same function as three (two) separate projections."""

from __future__ import annotations

import torch

from vlkit.build import build_encoder
from vlkit.encoders.albef import AlbefConfig

torch.set_num_threads(1)


def _encoder(fused: bool):
    torch.manual_seed(3)
    return build_encoder(AlbefConfig.from_dict({"size": "tiny", "attention": "math",
                                                "text": {"fused_projections": fused, "dropout": 0.0,
                                                         "attention_dropout": 0.0}}))


def test_fused_projections_compute_the_same_outputs_and_gradients():
    plain, fused = _encoder(False), _encoder(True)
    assert plain.state_dict().keys() == fused.state_dict().keys()  # checkpoints are interchangeable
    fused.load_state_dict(plain.state_dict())
    images, ids = torch.randn(3, 3, 32, 32), torch.randint(104, 500, (3, 7))
    mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2, [1] * 3 + [0] * 4])
    outs = []
    for encoder in (plain, fused):
        image = encoder.encode_image(images)
        text = encoder.encode_text(ids, mask)
        fusedpairs = encoder.fuse(image, text, image_index=torch.tensor([0, 1, 2, 0]),
                                  text_index=torch.tensor([0, 1, 2, 1]))
        loss = fusedpairs.cls.pow(2).sum() + text.feat.sum() * image.feat.sum()
        loss.backward()
        outs.append((fusedpairs.cls.detach(), {n: p.grad for n, p in encoder.named_parameters()}))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-5, atol=1e-6)
    for name, grad in outs[0][1].items():
        torch.testing.assert_close(outs[1][1][name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_fused_projections_run_fewer_matmuls():
    calls = {}
    for fused in (False, True):
        encoder = _encoder(fused)
        count = 0

        def hook(*_args) -> None:
            nonlocal count
            count += 1

        handles = [m.register_forward_hook(hook) for m in encoder.modules() if isinstance(m, torch.nn.Linear)]
        image = encoder.encode_image(torch.randn(2, 3, 32, 32))
        encoder.fuse(image, encoder.encode_text(torch.randint(104, 500, (2, 5)), torch.ones(2, 5, dtype=torch.long)))
        for handle in handles:
            handle.remove()
        calls[fused] = count
    layers = len(_encoder(False).text_encoder.layers)  # self-attention: 3 → 0 Linear calls (one F.linear)
    assert calls[False] - calls[True] >= 3 * layers
