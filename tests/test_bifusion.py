"""ALBEF's NLVR2 bi-fusion: duplicated fusion layers with shared cross-attention keys/values, their
aliases to the pre-training checkpoint, and the ``classify_bifusion`` objective."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from vlkit.build import build_encoder, build_objective, build_pretrain_model
from vlkit.core.batch import Batch
from vlkit.encoders.albef import AlbefEncoder
from vlkit.models.model import PretrainModel
from vlkit.models.momentum import MomentumConfig
from vlkit.nn.bert import BertLayer
from vlkit.nn.bifusion import BiFusionLayers, bifusion_aliases
from vlkit.objectives.bifusion import BiFusionClassifyConfig
from vlkit.objectives.distill import DistillConfig
from vlkit.recipe import load_recipe
from vlkit.schema import RecipeError, validate_component
from vlkit.train.optim import param_groups
from vlkit.weights.init_from import load_matching

SHAPES = ["encoder.image.image_size=32", "encoder.attention=sdpa"]  # 4×4 patches: fast on 2 cores
STACK = "encoder.text_encoder.encoder.layer"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiny models gain nothing from threads, and on a shared 2-core machine OpenMP threads that
    wait on each other make a 25 ms step take seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_encoder(seed: int = 0) -> AlbefEncoder:
    torch.manual_seed(seed)
    return build_encoder(load_recipe("albef/tiny", SHAPES).encoder)


def tiny_model(seed: int = 0, distill: DistillConfig | None = None, name: str = "nlvr2") -> PretrainModel:
    encoder = tiny_encoder(seed)
    cfg = BiFusionClassifyConfig(type="classify_bifusion", distill=distill)
    momentum = MomentumConfig(decay=0.9) if distill is not None else None
    return build_pretrain_model(encoder, {name: cfg}, momentum)


def pair_batch(b: int = 8, length: int = 10, vocab: int = 512, seed: int = 0) -> Batch:
    """``b`` samples: ``2b`` images (first images, then second), text ``[b, L]`` with padding, labels."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (b, length), generator=g)
    ids[:, 0] = 2
    mask = torch.ones(b, length, dtype=torch.long)
    for row in range(1, b, 2):
        mask[row, length - 3:] = 0
    labels = torch.arange(b) % 2
    return Batch(torch.randn(2 * b, 3, 32, 32, generator=g), ids.masked_fill(mask == 0, 0), mask, torch.arange(b),
                 extras={"labels": labels[torch.randperm(b, generator=g)]})


@torch.no_grad()
def perturb(module: torch.nn.Module, scale: float = 0.05) -> None:
    """Make every copy differ (a shared tensor is perturbed once)."""
    for p in module.parameters():
        p.add_(scale * torch.randn_like(p))


def reference_bifusion(layers: list[BertLayer], hidden: torch.Tensor, mask: torch.Tensor,
                       image_0: torch.Tensor, image_1: torch.Tensor) -> torch.Tensor:
    """Written out: layer i attends to image i mod 2 with keys/values from its own projections."""
    for i, layer in enumerate(layers):
        image = image_0 if i % 2 == 0 else image_1
        kv = layer.crossattention.kv(image)
        hidden = layer(hidden, mask, cross_kv=kv)
    return hidden


def unshared_copy(fusion: BiFusionLayers) -> list[BertLayer]:
    """A deep copy whose odd layers own separate key/value projections (same values)."""
    layers = copy.deepcopy(fusion).layer
    for layer in layers[1::2]:
        for name in ("key", "value"):
            setattr(layer.crossattention.self, name, copy.deepcopy(getattr(layer.crossattention.self, name)))
    return list(layers)


def inputs(b: int = 3, length: int = 7, m: int = 17, seed: int = 1) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, length, 64, generator=g)
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[1:, -2:] = False
    return hidden, mask, torch.randn(b, m, 64, generator=g), torch.randn(b, m, 64, generator=g)


# ------------------------------------------------------------------------------------------ the layers
def test_copies_run_each_stack_fusion_layer_on_the_first_then_the_second_image():
    """After copy_from_stack, layers 2k and 2k+1 are stack fusion layer k: the module applies it with
    the first image's tokens, then again with the second's."""
    stack = tiny_encoder().text_encoder.eval()
    fusion = BiFusionLayers.from_stack(stack, copy_weights=False).eval()
    hidden, mask, image_0, image_1 = inputs()
    with torch.no_grad():
        before = fusion(hidden, mask, image_0, image_1)
        fusion.copy_from_stack(stack)
        out = fusion(hidden, mask, image_0, image_1)
        expected = hidden
        for n in stack.fusion_layers:
            layer = stack.layers[n]
            for image in (image_0, image_1):
                expected = layer(expected, mask, cross_kv=layer.cross_kv(image))
        swapped = fusion(hidden, mask, image_1, image_0)
    assert out.shape == (3, 7, 64)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert (out - before).abs().max() > 1e-2  # the copy changed the weights
    assert (out - swapped).abs().max() > 1e-3  # the order of the images matters


def test_module_equals_a_plain_layer_by_layer_reference_with_distinct_copies():
    fusion = BiFusionLayers.from_stack(tiny_encoder().text_encoder).eval()
    perturb(fusion)  # the two members of a pair now differ, except for their shared key/value
    hidden, mask, image_0, image_1 = inputs(seed=2)
    with torch.no_grad():
        out = fusion(hidden, mask, image_0, image_1)
        expected = reference_bifusion(list(fusion.layer), hidden, mask, image_0, image_1)
        stacked = fusion.run(hidden, mask, fusion.image_kv(torch.cat([image_0, image_1])))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(stacked, out, rtol=0, atol=0)


def test_pairs_share_key_and_value_and_accumulate_both_gradients():
    fusion = BiFusionLayers.from_stack(tiny_encoder().text_encoder).eval()
    perturb(fusion)
    per_layer = len(list(fusion.layer[0].parameters()))
    assert len(list(fusion.parameters())) == 2 * fusion.num_fusion * per_layer - 4 * fusion.num_fusion
    for k in range(fusion.num_fusion):
        even, odd = fusion.layer[2 * k].crossattention.self, fusion.layer[2 * k + 1].crossattention.self
        for name in ("key", "value"):
            for tensor in ("weight", "bias"):
                a, b = getattr(getattr(even, name), tensor), getattr(getattr(odd, name), tensor)
                assert a is b and a.data_ptr() == b.data_ptr()
        assert even.query.weight is not odd.query.weight
        assert even.query.weight.data_ptr() != odd.query.weight.data_ptr()
        assert not torch.equal(even.query.weight, odd.query.weight)  # perturbed separately

    reference = unshared_copy(fusion)
    hidden, mask, image_0, image_1 = inputs(seed=3)
    target = torch.randn(3, 7, 64)
    (fusion(hidden, mask, image_0, image_1) * target).sum().backward()
    (reference_bifusion(reference, hidden, mask, image_0, image_1) * target).sum().backward()
    for k in range(fusion.num_fusion):
        shared = fusion.layer[2 * k].crossattention.self
        first, second = reference[2 * k].crossattention.self, reference[2 * k + 1].crossattention.self
        for name in ("key", "value"):
            for tensor in ("weight", "bias"):
                grad = getattr(getattr(shared, name), tensor).grad
                g0, g1 = getattr(getattr(first, name), tensor).grad, getattr(getattr(second, name), tensor).grad
                assert g0.abs().max() > 0 and g1.abs().max() > 0  # both uses contribute
                torch.testing.assert_close(grad, g0 + g1, rtol=1e-4, atol=1e-6)
        for j in (0, 1):
            torch.testing.assert_close(fusion.layer[2 * k + j].crossattention.self.query.weight.grad,
                                       reference[2 * k + j].crossattention.self.query.weight.grad,
                                       rtol=1e-5, atol=1e-7)


def test_teacher_copy_keeps_the_sharing():
    fusion = BiFusionLayers.from_stack(tiny_encoder().text_encoder)
    clone = copy.deepcopy(fusion)
    assert clone.layer[1].crossattention.self.key is clone.layer[0].crossattention.self.key
    assert clone.layer[1].crossattention.self.key is not fusion.layer[0].crossattention.self.key


def test_shapes_are_checked():
    fusion = BiFusionLayers.from_stack(tiny_encoder().text_encoder)
    hidden, mask, image_0, image_1 = inputs()
    with pytest.raises(ValueError, match="differ in shape"):
        fusion(hidden, mask, image_0, image_1[:, :5])
    with pytest.raises(ValueError, match="even number"):
        fusion.image_kv(torch.randn(3, 17, 64))
    with pytest.raises(ValueError, match="2 texts against"):
        fusion(hidden[:2], mask[:2], image_0, image_1)
    with pytest.raises(ValueError, match="num_fusion"):
        bifusion_aliases("fusion.", "encoder.text_encoder.", 2, 0, ["x"])


# ------------------------------------------------------------------------------------------ aliases
def test_aliases_name_the_duplicated_fusion_layer():
    aliases = bifusion_aliases("fusion", "encoder.text_encoder", 6, 6, ["attention.self.query.weight"])
    assert len(aliases) == 12
    assert aliases["fusion.layer.3.attention.self.query.weight"] == f"{STACK}.7.attention.self.query.weight"
    assert aliases["fusion.layer.0.attention.self.query.weight"] == f"{STACK}.6.attention.self.query.weight"
    assert aliases["fusion.layer.11.attention.self.query.weight"] == f"{STACK}.11.attention.self.query.weight"


def test_init_from_copies_each_pretrained_fusion_layer_into_both_members():
    model = tiny_model(seed=0, distill=DistillConfig(alpha=0.4))
    objective = model.objectives["nlvr2"]
    fusion_layer = model.encoder.text_encoder.fusion_layer
    own = objective.state_dict()
    aliases = objective.init_aliases()
    fusion_keys = [k for k in own if k.startswith("fusion.")]
    assert fusion_keys and set(fusion_keys) == set(aliases)  # shared keys are listed under both layers
    assert "fusion.layer.1.crossattention.self.key.weight" in aliases

    pretrained = tiny_model(seed=1).encoder  # another run's weights, in the pre-training layout
    state = {f"encoder.{k}": v.clone() for k, v in pretrained.state_dict().items()}
    state["objectives.mlm.head.bias"] = torch.zeros(3)  # a pre-training head the fine-tuned model lacks
    report = load_matching(model, state, model.init_aliases())

    assert report.new and all(k.startswith(("objectives.nlvr2.head.", "teacher.copies.nlvr2__head."))
                              for k in report.new), report.new
    assert report.unused == ["objectives.mlm.head.bias"] and not report.reshaped
    loaded = model.state_dict()
    for key in fusion_keys:
        i, suffix = int(key.split(".")[2]), key.split(".", 3)[3]
        source = state[f"{STACK}.{fusion_layer + i // 2}.{suffix}"]
        assert torch.equal(loaded[f"objectives.nlvr2.{key}"], source), key
        assert torch.equal(loaded[f"teacher.copies.nlvr2__{key}"], source), key
    fusion = objective.fusion
    assert fusion.layer[3].crossattention.self.key.weight is fusion.layer[2].crossattention.self.key.weight
    teacher = model.teacher.modules_by_name["nlvr2.fusion"]
    assert teacher.layer[3].crossattention.self.value.bias is teacher.layer[2].crossattention.self.value.bias


# ------------------------------------------------------------------------------------------ objective
def test_config_is_validated_from_recipe_values():
    cfg = validate_component("objective", {"type": "classify_bifusion", "distill": {"alpha": 0.4}})
    assert isinstance(cfg, BiFusionClassifyConfig) and cfg.num_classes == 2 and cfg.head == "classifier"
    assert cfg.needs_teacher and cfg.requires_fusion
    with pytest.raises(RecipeError, match="num_classes"):
        validate_component("objective", {"type": "classify_bifusion", "num_classes": 1})
    with pytest.raises(RecipeError, match="head"):
        validate_component("objective", {"type": "classify_bifusion", "head": "nope"})


def test_encoders_without_fusion_layers_are_refused():
    torch.manual_seed(0)
    dual = build_encoder(load_recipe("dual/tiny", ["encoder.image.image_size=32"]).encoder)
    with pytest.raises(ValueError, match="needs an ALBEF encoder"):
        build_objective("nlvr2", BiFusionClassifyConfig(type="classify_bifusion"), dual)


def test_loss_is_cross_entropy_of_logits_and_distillation_mixes_the_teacher():
    model = tiny_model(distill=DistillConfig(alpha=0.4)).eval()
    perturb(model.teacher)  # the teacher now differs from the student
    objective = model.objectives["nlvr2"]
    batch = pair_batch(b=4)
    labels = batch.extras["labels"]
    with torch.no_grad():
        result = model(batch, step_index=5)
        logits = objective.logits(model.encoder, batch.images, batch.input_ids, batch.attention_mask)
        image = model.encoder.encode_image(batch.images)
        again = objective.logits(model.encoder, image, batch.input_ids, batch.attention_mask)
        teacher = model.step(batch, 5).teacher
        teacher_logits = objective.logits(teacher.encoder, batch.images, batch.input_ids, batch.attention_mask)
    assert logits.shape == (4, 2)
    torch.testing.assert_close(again, logits, rtol=0, atol=0)
    # the teacher's copies of the fusion layers and head, on the teacher's encodings
    t_fusion, t_head = teacher.module("nlvr2.fusion"), teacher.module("nlvr2.head")
    text = teacher.encoder.encode_text(batch.input_ids, batch.attention_mask)
    with torch.no_grad():
        hidden = t_fusion(text.embeds, text.mask, *teacher.encoder.encode_image(batch.images).embeds.chunk(2))
        teacher_reference = t_head(hidden[:, 0])
    assert (teacher_reference - teacher_logits).abs().max() > 1e-4  # the student's modules ≠ the teacher's
    ce = F.cross_entropy(logits, labels)
    soft = -(F.softmax(teacher_reference, -1) * F.log_softmax(logits, -1)).sum(-1).mean()
    torch.testing.assert_close(result.losses["loss/nlvr2"], 0.6 * ce + 0.4 * soft)
    assert set(result.metrics) == {"metric/nlvr2/acc"}
    online_key = objective.fusion.layer[0].crossattention.self.key.weight
    teacher_key = t_fusion.layer[1].crossattention.self.key.weight
    expected_key = 0.9 * teacher_key + 0.1 * online_key
    model.after_step(result)  # the EMA pairs teacher and online parameters, each shared tensor once
    torch.testing.assert_close(t_fusion.layer[0].crossattention.self.key.weight, expected_key)
    assert t_fusion.layer[0].crossattention.self.key.weight is teacher_key

    plain = tiny_model().eval()
    with torch.no_grad():
        loss = plain(batch).losses["loss/nlvr2"]
        expected = F.cross_entropy(plain.objectives["nlvr2"].logits(plain.encoder, batch.images, batch.input_ids,
                                                                    batch.attention_mask), labels)
    torch.testing.assert_close(loss, expected)
    with pytest.raises(ValueError, match="two images per text"):
        plain(Batch(batch.images[:4], batch.input_ids, batch.attention_mask, batch.idx, extras=batch.extras))


def test_overfits_a_batch_and_leaves_the_encoders_fusion_layers_alone():
    """30 AdamW steps (weight decay on, as fine-tuning runs it) on 8 fixed pairs: the loss falls, the
    bi-fusion layers and the encoder's text layers train, the encoder's own fusion layers (never run)
    get no gradient and keep their weights."""
    model = tiny_model(seed=3).train()
    batch = pair_batch(b=8, seed=4)
    optimizer = torch.optim.AdamW(param_groups(model, weight_decay=0.02, lr=1e-3), lr=1e-3)
    stack = model.encoder.text_encoder
    unused = {n: p.detach().clone() for n, p in stack.named_parameters()
              if n.startswith("encoder.layer.") and int(n.split(".")[2]) >= stack.fusion_layer}
    fusion_before = model.objectives["nlvr2"].fusion.layer[0].attention.self.query.weight.detach().clone()
    text_before = stack.layers[0].attention.self.query.weight.detach().clone()
    losses = []
    for step in range(30):
        optimizer.zero_grad(set_to_none=True)
        loss = model(batch, step_index=step).loss
        loss.backward()
        if step == 0:
            assert all(p.grad is None for n, p in stack.named_parameters() if n in unused)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 0.5 and min(losses[-5:]) < 0.2 * losses[0], losses
    params = dict(stack.named_parameters())
    assert unused and all(torch.equal(params[n], v) for n, v in unused.items())
    assert not torch.equal(model.objectives["nlvr2"].fusion.layer[0].attention.self.query.weight, fusion_before)
    assert not torch.equal(stack.layers[0].attention.self.query.weight, text_before)
