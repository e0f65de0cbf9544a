"""SimpleHand: shapes after every stage, parameter counts, the ablation switches, the joint
regressor against an independent oracle, gradient flow through the point sampling, the loss, and
a one-batch overfit."""
import dataclasses
import io
import pathlib
import subprocess
import sys

import pytest
import torch

import bodymodels
import data
import simplehand as sh
from simplehand import PAPER, PAPER_FASTVIT, TINY

ROOT = pathlib.Path(__file__).parent.parent


def random_j_regressor(seed=0):
    """A (16, 778) regressor with rows summing to one, like MANO's."""
    J = torch.rand(16, 778, generator=torch.Generator().manual_seed(seed)) ** 8  # a few dominant vertices
    return J / J.sum(dim=1, keepdim=True)


def tiny_model(cfg=TINY, seed=0):
    torch.manual_seed(seed)
    return sh.SimpleHand(cfg, random_j_regressor())


def random_batch(B, size, seed=0):
    """A batch with data.py's hand keys: random vertex clouds 0.5 m in front of the camera, their
    joints by the same regressor as the model's, 2D joints anywhere in the crop."""
    g = torch.Generator().manual_seed(seed)
    verts = torch.randn(B, 778, 3, generator=g) * 0.03 + torch.tensor([0.0, 0.0, 0.5])
    joints3d = bodymodels.mano_to_freihand(random_j_regressor() @ verts, verts)  # (B, 21, 3)
    return {"image": torch.rand(B, 3, size, size, generator=g), "verts": verts, "joints3d": joints3d,
            "joints2d": torch.rand(B, 21, 2, generator=g) * size}


# ---------------------------------------------------------------------------------------------
# Shapes


def test_tiny_shapes_after_every_stage():
    rows = dict(sh.describe(tiny_model(), torch.rand(2, 3, 128, 128)))
    assert rows["backbone"] == ((2, 64, 16, 16), (2, 128, 4, 4))  # stride 8 (sampled), stride 32 (pooled)
    assert rows["token_generator"] == ((2, 21, 64), (2, 21, 2))  # joint tokens, 2D keypoints
    assert rows["mesh_regressor.layers[0]"] == (2, 84, 96)
    assert rows["mesh_regressor.layers[1]"] == (2, 168, 48)
    assert rows["mesh_regressor.layers[2]"] == (2, 778, 24)
    assert rows["output verts"] == (2, 778, 3) and rows["output joints3d"] == (2, 21, 3)
    assert rows["output joints2d"] == (2, 21, 2)


@pytest.mark.parametrize("cfg, map_hw, token_width", [(PAPER, 28, 256), (PAPER_FASTVIT, 7, 256)],
                         ids=["paper_hrnet", "paper_fastvit"])
def test_paper_decoder_shapes_on_meta_device(cfg, map_hw, token_width):
    with torch.device("meta"):
        tg, mr = sh.TokenGenerator(cfg), sh.MeshRegressor(cfg)
        feature = torch.empty(2, cfg.feature_channels, map_hw, map_hw)
        pooled = torch.empty(2, cfg.global_channels, 224 // 32, 224 // 32)
        assert tg.upsample(feature).shape == (2, token_width, 28, 28)  # H/8 either way (Sec. 3.3)
        tokens, joints2d = tg(feature, pooled)
        assert tokens.shape == (2, 21, token_width) and joints2d.shape == (2, 21, 2)
        x, shapes = tokens, []
        for layer in mr.layers:
            x = layer(x)
            shapes.append(tuple(x.shape))
        assert shapes == [(2, 84, 256), (2, 336, 128), (2, 778, 64)]  # Sec. 4.1
        assert mr(tokens).shape == (2, 778, 3)


def test_paper_decoder_parameter_count_is_within_25_percent_of_table_2():
    n = sh.non_backbone_parameters(PAPER)
    assert abs(n - 1.9e6) <= 0.25 * 1.9e6, n
    # FastViT's 4x deconvolution (1216 -> 256, k = 4, no bias) is the "about 5M" of FACTS.md
    with torch.device("meta"):
        deconv = sh.TokenGenerator(PAPER_FASTVIT).upsample[0]
    assert sh.count_parameters(deconv) == 1216 * 256 * 4 * 4


def test_params_command_prints_the_non_backbone_count():
    out = subprocess.run([sys.executable, "simplehand.py", "--config", "paper", "--params"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert f"non-backbone parameters: {sh.non_backbone_parameters(PAPER) / 1e6:.2f}M" in out


# ---------------------------------------------------------------------------------------------
# The pieces against independent oracles


def test_joints3d_equal_j_regressor_times_verts_plus_fingertips():
    model = tiny_model().eval()
    out = model(torch.rand(3, 3, 128, 128))
    V = out["verts"].double()
    J16 = torch.stack([random_j_regressor().double() @ v for v in V])  # (3, 16, 3)
    tips = V[:, [744, 320, 443, 554, 671]]  # thumb, index, middle, ring, pinky (smplx ids)
    order = [0, 13, 14, 15, 16, 1, 2, 3, 17, 4, 5, 6, 18, 10, 11, 12, 19, 7, 8, 9, 20]  # FACTS.md
    expected = torch.cat([J16, tips], dim=1)[:, order]
    torch.testing.assert_close(out["joints3d"].double(), expected, atol=1e-6, rtol=1e-5)
    # root-relative to the middle MCP (FreiHAND joint 9): exactly zero as the rows sum to one
    assert out["joints3d"][:, 9].abs().max() < 1e-6


def test_point_sampling_reads_cell_centres_with_align_corners_true():
    g = torch.Generator().manual_seed(0)
    feature = torch.randn(2, 5, 4, 6, generator=g, dtype=torch.float64)  # (B, C, h, w)
    rows, cols = torch.tensor([0, 3, 2]), torch.tensor([0, 5, 1])
    uv = torch.stack([cols.double() / 5, rows.double() / 3], dim=-1).expand(2, 3, 2)  # (u, v) = (x, y)
    tokens = sh.sample_points(feature, uv)  # (2, 3, 5)
    torch.testing.assert_close(tokens, feature[:, :, rows, cols].transpose(1, 2))


def test_sine_encoding_matches_the_formula():
    pe = sh.sine_position_encoding(3, 4, 8)  # (8, 3, 4): channels 0-3 encode y, 4-7 encode x
    y, x = 2, 1  # row 2 -> position 3/3 * 2 pi, column 1 -> 2/4 * 2 pi
    py, px = 3 / 3 * 2 * torch.pi, 2 / 4 * 2 * torch.pi
    freq = torch.tensor([1.0, 1.0, 100.0, 100.0])  # 10000^(2 (i // 2) / 4)
    expected_y = torch.tensor([(py / freq[0]).sin(), (py / freq[1]).cos(), (py / freq[2]).sin(), (py / freq[3]).cos()])
    expected_x = torch.tensor([(px / freq[0]).sin(), (px / freq[1]).cos(), (px / freq[2]).sin(), (px / freq[3]).cos()])
    torch.testing.assert_close(pe[:4, y, x], expected_y)
    torch.testing.assert_close(pe[4:, y, x], expected_x)


def test_keypoint_head_learns_through_the_point_sampling_alone():
    """With the 2D loss weight at zero, only the sampling positions connect the keypoint head to the
    3D losses: it gets a gradient with point sampling and none with global pooling."""
    for sampling, token_nums, connected in [("point", (21, 84, 336), True), ("global", (1, 84, 336), False)]:
        cfg = dataclasses.replace(TINY, token_sampling=sampling, token_nums=token_nums, w_joints2d=0.0)
        model = tiny_model(cfg)
        loss, _ = sh.compute_loss(model(torch.rand(2, 3, 64, 64)), random_batch(2, 64), cfg)
        loss.backward()
        grad = model.token_generator.keypoint_head.weight.grad
        assert (grad is not None and grad.abs().sum() > 0) == connected, sampling


def test_loss_is_l1_summed_over_xyz_and_averaged_over_points_and_batch():
    batch = random_batch(2, 64)
    root = batch["joints3d"][:, 9:10]
    pred = {"verts": batch["verts"] - root + torch.tensor([0.01, -0.02, 0.0]),  # 0.03 per vertex
            "joints3d": batch["joints3d"] - root,  # exact
            "joints2d": batch["joints2d"] / 64 + 0.1}  # 0.2 per joint
    total, terms = sh.compute_loss(pred, batch, TINY)
    torch.testing.assert_close(terms["verts"], torch.tensor(0.03))
    torch.testing.assert_close(terms["joints3d"], torch.tensor(0.0))
    torch.testing.assert_close(terms["joints2d"], torch.tensor(0.2))
    torch.testing.assert_close(total, torch.tensor(10 * 0.03 + 1 * 0.2))  # Eq. (7): weights 10 / 10 / 1
    with pytest.raises(ValueError, match="verts"):
        sh.compute_loss(pred, {k: v for k, v in batch.items() if k != "verts"}, TINY)


# ---------------------------------------------------------------------------------------------
# Ablation switches (Tables 5-8): each changes the model as it claims


def test_token_sampling_switch_changes_the_tokens():
    x = torch.rand(2, 3, 64, 64)
    for sampling, token_nums, n in [("grid", (49, 84, 336), 49), ("global", (1, 84, 336), 1)]:
        cfg = dataclasses.replace(TINY, token_sampling=sampling, token_nums=token_nums)
        tokens, _ = tiny_model(cfg).token_generator(*tiny_model(cfg).backbone(x))
        assert tokens.shape == (2, n, 64)
        assert sh.non_backbone_parameters(cfg) != sh.non_backbone_parameters(TINY)
    with pytest.raises(ValueError, match="token_nums"):
        dataclasses.replace(TINY, token_sampling="grid")  # 49 tokens, but token_nums[0] is still 21


def test_only_point_sampling_depends_on_the_keypoints():
    x = torch.rand(2, 3, 64, 64)
    for sampling, token_nums, depends in [("point", (21, 84, 336), True), ("grid", (49, 84, 336), False),
                                          ("global", (1, 84, 336), False)]:
        model = tiny_model(dataclasses.replace(TINY, token_sampling=sampling, token_nums=token_nums)).eval()
        before = model(x)["verts"]
        with torch.no_grad():
            model.token_generator.keypoint_head.bias.add_(0.3)
        assert (not torch.allclose(before, model(x)["verts"])) == depends, sampling


def test_feature_upsample_switch_sets_the_sampled_resolution():
    for f, hw in [(1, 7), (2, 14), (4, 28)]:  # Table 5: 7x7, 14x14, 28x28
        cfg = dataclasses.replace(PAPER_FASTVIT, feature_upsample=f)
        with torch.device("meta"):
            tg = sh.TokenGenerator(cfg)
            assert tg.upsample(torch.empty(1, 1216, 7, 7)).shape == (1, 256, hw, hw)
        assert sh.count_parameters(tg.upsample) == 1216 * 256 * f * f + 2 * 256  # deconv + BatchNorm


def test_layer_count_token_numbers_widths_and_depths_change_the_regressor():
    base = sh.non_backbone_parameters(TINY)
    one_layer = dataclasses.replace(TINY, token_nums=(21,), dims=(128,), depths=(1,))  # Table 6, row 1
    assert len(sh.MeshRegressor(one_layer).layers) == 1
    assert tiny_model(one_layer)(torch.rand(1, 3, 64, 64))["verts"].shape == (1, 778, 3)
    four_layers = dataclasses.replace(TINY, token_nums=(21, 128, 256, 384), dims=(128, 64, 32, 32), depths=(1,) * 4)
    assert len(sh.MeshRegressor(four_layers).layers) == 4
    assert len({base, sh.non_backbone_parameters(one_layer), sh.non_backbone_parameters(four_layers)}) == 3
    # Table 7: wider blocks have more parameters; a second block per layer adds exactly one block each
    assert sh.non_backbone_parameters(dataclasses.replace(TINY, dims=(256, 128, 64))) > base
    deeper = dataclasses.replace(TINY, depths=(2, 2, 2))
    blocks = sum(sh.count_parameters(layer.blocks[0]) for layer in sh.MeshRegressor(TINY).layers)
    assert sh.non_backbone_parameters(deeper) == base + blocks


def test_identity_mixer_keeps_tokens_apart_and_attention_mixes_them():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 6, 32, generator=g)
    x2 = x.clone()
    x2[0, 0] += 1.0  # change token 0 only
    for mixer, others_change in [("identity", False), ("attention", True)]:
        torch.manual_seed(0)
        block = sh.MetaFormerBlock(32, mixer, num_heads=2, mlp_ratio=4.0, dropout=0.0)
        changed = (block(x2) - block(x)).abs().sum(dim=-1)[0]  # (6,)
        assert changed[0] > 0 and bool((changed[1:] > 1e-7).all()) == others_change, mixer
    assert sh.non_backbone_parameters(dataclasses.replace(TINY, token_mixer="identity")) < sh.non_backbone_parameters(TINY)


def test_position_embedding_switches_change_the_model():
    no_emb = dataclasses.replace(TINY, pos_embedding=False)  # Table 8, "w/o position emb"
    assert sh.non_backbone_parameters(TINY) - sh.non_backbone_parameters(no_emb) == 21 * 64 + 84 * 96 + 168 * 48  # emb_k: (n_k, c_in)
    # the sine encoding of the sampled map has no parameters; it changes the output
    model = tiny_model().eval()
    no_sine = tiny_model(dataclasses.replace(TINY, sine_encoding=False)).eval()
    no_sine.load_state_dict(model.state_dict())
    x = torch.rand(1, 3, 64, 64)
    assert not torch.allclose(model(x)["verts"], no_sine(x)["verts"])


# ---------------------------------------------------------------------------------------------
# Configs and recipe


def test_paper_recipe_is_consistent_with_sec_4_1():
    assert PAPER.batch_size == PAPER.gpus * PAPER.batch_per_gpu == 256
    assert PAPER.iters_per_epoch == sh.FREIHAND_TRAIN_SAMPLES // PAPER.batch_size
    assert PAPER.max_steps == PAPER.epochs * PAPER.iters_per_epoch
    assert PAPER.lr_drop_step == PAPER.lr_drop_epoch * PAPER.iters_per_epoch
    assert sh.learning_rate(PAPER, PAPER.lr_drop_step - 1) == 5e-4
    assert sh.learning_rate(PAPER, PAPER.lr_drop_step) == 5e-5
    code = dataclasses.replace(PAPER, **sh.OFFICIAL_CODE_RECIPE)
    assert code.max_steps == 200 * 256 and sh.learning_rate(code, 100 * 256) == 5e-5


def test_learning_rate_warms_up_linearly_then_follows_the_cosine():
    assert sh.learning_rate(TINY, 0) == pytest.approx(TINY.lr / TINY.warmup_steps)
    assert sh.learning_rate(TINY, TINY.warmup_steps - 1) == pytest.approx(TINY.lr)
    assert sh.learning_rate(TINY, TINY.warmup_steps) == pytest.approx(TINY.lr)
    middle = (TINY.warmup_steps + TINY.max_steps) // 2
    assert sh.learning_rate(TINY, middle) == pytest.approx((TINY.lr + TINY.lr_final) / 2, rel=1e-2)
    assert sh.learning_rate(TINY, TINY.max_steps) == pytest.approx(TINY.lr_final)


def test_bad_config_values_raise_value_errors_naming_the_field():
    with pytest.raises(ValueError, match="token_mixer"):
        dataclasses.replace(TINY, token_mixer="pooling")
    with pytest.raises(ValueError, match="dims"):
        dataclasses.replace(TINY, dims=(128, 64))
    with pytest.raises(ValueError, match="unknown SimpleHand config"):
        sh.build_model("large")


# ---------------------------------------------------------------------------------------------
# The real model: MANO's regressor, checkpoints, learning


def test_build_model_carries_manos_j_regressor_in_its_checkpoint():
    model = sh.build_model("tiny").eval()
    torch.testing.assert_close(model.j_regressor, bodymodels.load_mano().J_regressor.float())
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert "j_regressor" in state
    restored = sh.SimpleHand(TINY, torch.zeros(16, 778))
    restored.load_state_dict(state)
    restored.eval()
    x = torch.rand(2, 3, 128, 128)
    out, again = model(x), restored(x)
    for key in ("joints2d", "verts", "joints3d"):
        torch.testing.assert_close(out[key], again[key])
    assert out["joints3d"][:, 9].abs().max() < 1e-6  # root-relative with MANO's own regressor


@pytest.fixture
def one_thread():
    """Small tensors: one thread avoids OpenMP hand-offs, which dominate on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_one_batch_overfit_loss_falls_tenfold(one_thread):
    """Four rendered synthetic hands at 64 px: the loss of Eq. (7) falls at least tenfold in 150
    AdamW steps (about 25x when written; it plateaus above 10x if any part stops learning)."""
    samples = [data.SyntheticHands(4, image_size=64, seed=0)[i] for i in range(4)]
    batch = {k: torch.stack([s[k] for s in samples]) for k in ("image", "joints3d", "verts", "joints2d")}
    cfg = dataclasses.replace(TINY, image_size=64)
    torch.manual_seed(0)
    model = sh.build_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    losses = []
    for _ in range(150):
        loss, _ = sh.compute_loss(model(batch["image"]), batch, cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert min(losses[-10:]) < losses[0] / 10, (losses[0], losses[-10:])
