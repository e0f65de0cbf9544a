"""simplehand_experiments.py: the presets train.py builds, Tables 4, 5 and 8's modules (each changes the model as it
claims, and every row builds at TINY and PAPER), the trainer protocol (one forward, Eq. 7, predictions in pixels,
channels_last, the loss of a batch equal on 1, 2 or 8 ranks) and bench.py's SimpleHand part."""
import copy
import dataclasses
import subprocess
import sys
import typing

import pytest
import torch
import torch.nn as nn

from lab import bench
import bodymodels
from lab import configs
import simplehand as sh
from lab import simplehand_experiments as she
from lab.configs import config_leaves, with_fields
from test_simplehand import (PAPER, PAPER_FASTVIT, ROOT, TINY, hand_loss, needs_cuda, needs_timm, random_batch,
                             random_j_regressor, tiny_model)


def test_the_presets_are_simplehand_pys_with_the_papers_modules_in_place():
    for name, preset in (("paper", sh.PAPER), ("paper_fastvit", sh.PAPER_FASTVIT), ("official", sh.OFFICIAL),
                         ("tiny", sh.TINY)):
        cfg = she.CONFIGS[name]
        assert (cfg.model, cfg.variant, cfg.recipe, cfg.data) == (preset.model, preset.variant, preset.recipe,
                                                                  preset.data)
        assert cfg.build == she.SimpleHandBuild(token_generator="point", mesh_regressor="decoder")
    # the tiny network train.py builds is the reference's, with the official behaviours its variant keeps, bitwise
    torch.manual_seed(0)
    ours = sh.with_official_behaviours(sh.SimpleHand(TINY.model, random_j_regressor()), TINY.variant)
    torch.manual_seed(0)
    built = she.build_simplehand(TINY, random_j_regressor())
    x = torch.rand(1, 3, 96, 96)
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), built.state_dict().values()))
    assert torch.equal(ours.eval()(x)["verts"], built.eval()(x)["verts"])
    with pytest.raises(ValueError, match="official_checkpoint"):  # the released weights hold the paper's T and R
        she.build_model(with_fields(TINY, official_checkpoint="epoch_200_rerun1", token_generator="global"))


# ---------------------------------------------------------------------------------------------
# Ablation modules (Tables 4, 5 and 8, section 3): each changes the model as it claims


def test_token_generator_rows_change_the_tokens():
    x = torch.rand(2, 3, 64, 64)
    for sampling, num_tokens, n in [("grid", (49, 84, 336), 49), ("global", (1, 84, 336), 1)]:
        cfg = with_fields(TINY, token_generator=sampling, num_tokens=num_tokens)
        tokens, _ = tiny_model(cfg).token_generator(*tiny_model(cfg).backbone(x))
        assert tokens.shape == (2, n, 64)
        assert she.non_backbone_parameters(cfg) != she.non_backbone_parameters(TINY)
    with pytest.raises(ValueError, match="num_tokens"):  # 49 tokens, not 30
        she.build_mesh_regressor(with_fields(TINY, token_generator="grid", num_tokens=(30, 84, 168)))
    # num_tokens[0] = 21, as Tables 6-7 write it, follows the token generator: a one-field ablation row
    grid = she.build_mesh_regressor(with_fields(TINY, token_generator="grid"))
    assert grid.layers[0].upsample.in_features == 49


def test_only_point_sampling_depends_on_the_keypoints(monkeypatch):
    x = torch.rand(2, 3, 64, 64)
    for sampling, num_tokens in [("grid", (49, 84, 336)), ("global", (1, 84, 336))]:
        model = tiny_model(with_fields(TINY, token_generator=sampling, num_tokens=num_tokens)).eval()
        before = model(x)["verts"]
        with torch.no_grad():
            model.token_generator.keypoint_head.bias.add_(0.3)
        assert torch.equal(before, model(x)["verts"]), sampling  # moved keypoints: the same mesh, bit for bit
    # point sampling reads the map at the keypoints: moving them (the head's logits + 0.3, so the points
    # sigmoid(logit + 0.3)) gives the mesh of the unmoved model reading its map at those points
    model = tiny_model(with_fields(TINY, num_tokens=(21, 84, 336))).eval()
    moved = copy.deepcopy(model)
    with torch.no_grad():
        moved.token_generator.keypoint_head.bias.add_(0.3)
        got = moved(x)["verts"]
        read = sh.sample_points
        monkeypatch.setattr(sh, "sample_points",
                            lambda feature, uv, clamp=False: read(feature, torch.sigmoid(torch.logit(uv) + 0.3), clamp))
        want = model(x)["verts"]
    torch.testing.assert_close(got, want)


def test_feature_upsample_switch_sets_the_sampled_resolution():
    for f, hw in [(1, 7), (2, 14), (4, 28)]:  # Table 5: 7x7, 14x14, 28x28
        cfg = with_fields(PAPER_FASTVIT, feature_upsample=f)
        with torch.device("meta"):
            tg = sh.TokenGenerator(cfg.model)
            assert tg.upsample(torch.empty(1, 1216, 7, 7)).shape == (1, 256, hw, hw)
        assert she.count_parameters(tg.upsample) == 1216 * 256 * f * f + 2 * 256  # deconv + BatchNorm


def test_layer_count_token_numbers_widths_and_depths_change_the_regressor():
    base = she.non_backbone_parameters(TINY)
    one_layer = with_fields(TINY, num_tokens=(21,), dims=(128,), depths=(1,))  # Table 6, row 1
    assert len(sh.MeshRegressor(one_layer.model).layers) == 1
    assert tiny_model(one_layer)(torch.rand(1, 3, 64, 64))["verts"].shape == (1, 778, 3)
    four_layers = with_fields(TINY, num_tokens=(21, 128, 256, 384), dims=(128, 64, 32, 32), depths=(1,) * 4)
    assert len(sh.MeshRegressor(four_layers.model).layers) == 4
    assert len({base, she.non_backbone_parameters(one_layer), she.non_backbone_parameters(four_layers)}) == 3
    # Table 7: wider blocks have more parameters; a second block per layer adds exactly one block each
    assert she.non_backbone_parameters(with_fields(TINY, dims=(256, 128, 64))) > base
    deeper = with_fields(TINY, depths=(2, 2, 2))
    blocks = sum(she.count_parameters(layer.blocks[0]) for layer in sh.MeshRegressor(TINY.model).layers)
    assert she.non_backbone_parameters(deeper) == base + blocks


def test_table4_mlp_regressor_flattens_the_tokens_with_one_hidden_layer():
    """Table 4's baseline regressor at PAPER: 21 x 256 tokens -> 256 -> 778 x 3, counted by hand."""
    for sampling, n in [("point", 21), ("global", 1)]:
        cfg = with_fields(PAPER, mesh_regressor="mlp", token_generator=sampling)
        with torch.device("meta"):
            mlp = she.build_mesh_regressor(cfg)
            assert mlp(torch.empty(2, n, 256)).shape == (2, 778, 3)
        assert she.count_parameters(mlp) == (n * 256 * 256 + 256) + (256 * 778 * 3 + 778 * 3)
    model = tiny_model(with_fields(TINY, mesh_regressor="mlp")).eval()
    tokens = torch.rand(1, 21, 64, requires_grad=True)
    model.mesh_regressor(tokens)[0, 0, 0].backward()  # one vertex reads every token (no per-token path)
    assert (tokens.grad.abs().sum(dim=-1) > 0).all()


def test_table5_upsample_variants_reach_28x28_from_the_7x7_map():
    """Point 7x7 / 14x14 read the stride-32 map ("point_stride32"), two 2x deconvolutions reach 28x28 as
    one 4x does, and "enhanced" adds 3x3 convolutions at 28x28; parameters counted by hand."""
    for overrides, hw, params in [
            (dict(token_generator="point_stride32"), 7, 1024 * 256 + 2 * 256),  # 1x1 projection 1024 -> 256 + BN
            (dict(token_generator="point_stride32", feature_upsample=2), 14, 1024 * 256 * 4 + 2 * 256),
            (dict(token_generator="point_stride32", feature_upsample=4), 28, 1024 * 256 * 16 + 2 * 256),
            (dict(token_generator="point_two_deconvolutions"), 28,
             1024 * 256 * 4 + 2 * 256 + 256 * 256 * 4 + 2 * 256),
            (dict(token_generator="point_enhanced"), 28, 2 * (256 * 256 * 9 + 2 * 256))]:  # HRNet's 28x28 + 2 convs
        cfg = with_fields(PAPER, **overrides)
        with torch.device("meta"):
            tg = she.build_token_generator(cfg)
            feature, pooled = torch.empty(1, 256, 28, 28), torch.empty(1, 1024, 7, 7)
            tokens, points = tg(feature, pooled)
            x = tg.upsample(feature if cfg.build.token_generator == "point_enhanced" else pooled)
        assert x.shape == (1, 256, hw, hw) and tokens.shape == (1, 21, 256) and points.shape == (1, 21, 2)
        assert she.count_parameters(tg.upsample) == params, overrides
    with pytest.raises(ValueError, match="feature_upsample"):
        with_fields(PAPER, feature_upsample=0)
    # the two 2x deconvolutions are the row's whatever the config's factor (FastViT's is 4)
    with torch.device("meta"):
        tg = she.build_token_generator(with_fields(PAPER_FASTVIT, token_generator="point_two_deconvolutions"))
    assert [m.kernel_size for m in tg.upsample if isinstance(m, nn.ConvTranspose2d)] == [(2, 2), (2, 2)]


def test_farthest_points_spreads_the_coarse_mesh():
    line = torch.tensor([[float(i), 0.0, 0.0] for i in range(11)])
    assert she.farthest_points(line, 3).tolist() == [0, 10, 5]
    template = torch.randn(778, 3, generator=torch.Generator().manual_seed(0))
    index = she.farthest_points(template, 195)
    assert len(set(index.tolist())) == 195
    # every template vertex is nearer to the coarse mesh than the coarse vertices are to each other
    d = torch.cdist(template, template[index])
    cover = d.min(dim=1).values.max()
    spread = torch.cdist(template[index], template[index]).add(torch.eye(195) * 1e9).min()
    assert cover <= spread + 1e-6


def coarse_mesh_model(cfg, template, vertices):
    """The coarse-mesh row's model with `vertices` coarse vertices (the row's own: 195)."""
    m = cfg.model
    regressor_cfg = dataclasses.replace(m, num_tokens=(21 + vertices,) + m.num_tokens[1:])
    return she.CoarseMeshHand(m, random_j_regressor(), template, sh.build_backbone(m),
                              she.CoarseMeshTokens(m, vertices), sh.MeshRegressor(regressor_cfg))


def test_table5_coarse_mesh_samples_keypoints_and_coarse_points_and_supervises_both():
    cfg = with_fields(TINY, token_generator="coarse_mesh")
    torch.manual_seed(0)
    template = torch.randn(778, 3)
    model = coarse_mesh_model(cfg, template, 30).eval()
    tokens, points = model.token_generator(*model.backbone(torch.rand(2, 3, 64, 64)))
    assert tokens.shape == (2, 51, 64) and points.shape == (2, 51, 2)
    assert (she.count_parameters(she.CoarseMeshTokens(cfg.model, 30))
            == she.count_parameters(sh.TokenGenerator(TINY.model)) + 128 * 60 + 60)
    assert model.mesh_regressor.layers[0].upsample.in_features == 51
    assert she.build_mesh_regressor(cfg).layers[0].upsample.in_features == 21 + 195  # the row's, from the config
    batch = random_batch(2, 64)
    batch["K"] = torch.tensor([[100.0, 0, 32], [0, 100.0, 32], [0, 0, 1]]).expand(2, 3, 3)
    out = model(batch["image"])
    assert out["coarse2d"].shape == (2, 30, 2)
    exact = bodymodels.perspective_projection(batch["verts"][:, model.coarse_index], batch["K"]) / 64
    wh = torch.tensor([64.0, 64.0])
    torch.testing.assert_close(model.coarse_loss(exact, batch["verts"], batch["K"], wh), torch.tensor(0.0))
    # L1 over u, v: 0.1 + 0.1
    torch.testing.assert_close(model.coarse_loss(exact + 0.1, batch["verts"], batch["K"], wh), torch.tensor(0.2))
    total, terms = she.training_loss(model, batch, cfg, 0)  # Eq. (7) and the coarse term, weighted as the 2D joints'
    torch.testing.assert_close(total, hand_loss(model(batch["image"]), batch, cfg)[0] + terms["coarse2d"])
    with pytest.raises(ValueError, match="K"):
        she.training_loss(model, {k: v for k, v in batch.items() if k != "K"}, cfg, 0)
    with pytest.raises(ValueError, match="template"):
        coarse_mesh_model(cfg, None, 30)


def test_ablation_rows_are_fields_that_build_at_tiny_and_paper_and_round_trip_through_set():
    hints = {k: v for c in (sh.SimpleHandConfig, she.SimpleHandBuild) for k, v in typing.get_type_hints(c).items()}
    leaves = config_leaves(TINY)
    assert set(she.ABLATIONS) == {"table4", "table5", "table6", "table7", "table8"}
    for name, table in she.ABLATIONS.items():
        labels = [row[0] for row in table["rows"]]
        assert table["chosen"] in labels and len(set(labels)) == len(labels), name
        for label, overrides, paper in table["rows"]:
            assert len(paper) == len(table["columns"]), label
            for key, value in overrides.items():
                text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
                assert configs.parse_value(text, hints[key], leaves[key]) == value, (label, key)
            for base in (TINY, PAPER, PAPER_FASTVIT):
                assert she.non_backbone_parameters(with_fields(base, **overrides)) > 0
    # the paper's figures, copied: Table 5's global feature and the chosen 28x28 point sampling
    rows = {label: paper for label, _, paper in she.ABLATIONS["table5"]["rows"]}
    assert rows["Global 1x1"] == (6.5, 6.8) and rows["Point 28x28"] == (6.2, 6.5)


def test_identity_mixer_keeps_tokens_apart_and_attention_mixes_them():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 6, 32, generator=g)
    x2 = x.clone()
    x2[0, 0] += 1.0  # change token 0 only
    for block_class, others_change in [(she.MixerFreeBlock, False), (sh.MetaFormerBlock, True)]:
        torch.manual_seed(0)
        block = block_class(32, num_heads=2, mlp_ratio=4.0, dropout=0.0)
        changed = (block(x2) - block(x)).abs().sum(dim=-1)[0]  # (6,)
        assert changed[0] > 0 and bool((changed[1:] > 1e-7).all()) == others_change, block_class.__name__
    assert (she.non_backbone_parameters(with_fields(TINY, mesh_regressor="identity_mixer"))
            < she.non_backbone_parameters(TINY))


def test_position_embeddings_change_the_model_as_claimed(monkeypatch):
    no_emb = with_fields(TINY, mesh_regressor="no_position_embedding")  # Table 8, "w/o position emb"
    # emb_k: (n_k, c_in)
    assert she.non_backbone_parameters(TINY) - she.non_backbone_parameters(no_emb) == 21 * 64 + 84 * 96 + 168 * 48
    # the sine encoding of the sampled map has no parameters: the model without it (its encoding zero),
    # its map given `sine_position_encoding` by hand, is the model with it
    model = tiny_model().eval()
    no_sine = tiny_model(seed=1).eval()
    no_sine.load_state_dict(model.state_dict())
    sine = sh.sine_position_encoding

    class PlusSine(nn.Module):
        def __init__(self, upsample):
            super().__init__()
            self.upsample = upsample

        def forward(self, feature):
            x = self.upsample(feature)
            return x + sine(x.shape[2], x.shape[3], x.shape[1], x.device, x.dtype)

    no_sine.token_generator.upsample = PlusSine(no_sine.token_generator.upsample)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)["verts"]
        monkeypatch.setattr(sh, "sine_position_encoding", lambda h, w, c, device=None, dtype=torch.float32:
                            torch.zeros(c, h, w, device=device, dtype=dtype))
        torch.testing.assert_close(expected, no_sine(x)["verts"])

# ---------------------------------------------------------------------------------------------
# The trainer protocol and channels_last


def test_build_model_refuses_a_parent_stage():
    with pytest.raises(ValueError, match="parent"):
        she.build_model("tiny", parent=tiny_model())


class CountingWrapper(nn.Module):
    """Stands in for DistributedDataParallel: `module` inside, every forward counted."""

    def __init__(self, module):
        super().__init__()
        self.module, self.calls = module, 0

    def forward(self, images):
        self.calls += 1
        return self.module(images)


def test_training_loss_runs_the_wrapped_model_once_and_gives_eq_7():
    model = tiny_model().eval()
    wrapped, batch = CountingWrapper(model), random_batch(2, 64)
    loss, terms = she.training_loss(wrapped, batch, TINY, 0)
    assert wrapped.calls == 1
    expected, expected_terms = hand_loss(model(batch["image"]), batch, TINY)
    torch.testing.assert_close(loss, expected)
    assert set(terms) == {"verts", "joints3d", "joints2d"} and all(t.dim() == 0 for t in terms.values())
    torch.testing.assert_close(loss, 10 * terms["verts"] + 10 * terms["joints3d"] + terms["joints2d"])


def test_predict_gives_2d_keypoints_in_pixels_as_the_loss_reads_them():
    model = tiny_model().eval()
    batch = dict(random_batch(2, 64), image=torch.rand(2, 3, 64, 96))  # H = 64, W = 96: u scales by 96
    with torch.no_grad():
        out, pred = model(batch["image"]), she.predict(model, batch, TINY)
    assert pred["joints2d"].shape == (2, 21, 2) and pred["verts"].shape == (2, 778, 3)
    torch.testing.assert_close(pred["joints2d"], out["joints2d"] * torch.tensor([96.0, 64.0]))
    torch.testing.assert_close(pred["joints3d"], out["joints3d"])
    torch.testing.assert_close(pred["verts"], out["verts"])
    # compute_loss turns pixels into crop fractions the same way: the predictions as targets cost nothing
    _, terms = hand_loss(out, dict(batch, joints2d=pred["joints2d"]), TINY)
    assert terms["joints2d"] < 1e-6


@pytest.mark.parametrize("cfg", [TINY, with_fields(TINY, feature_upsample=2, token_channels=32,
                                                   token_generator="grid", num_tokens=(49, 84, 168))],
                         ids=["tiny", "deconv_and_grid"])
def test_channels_last_model_and_images_give_the_same_loss_and_gradients(cfg):
    """train.py converts the model and 4D images to channels_last on CUDA; nothing may depend on layout."""
    model = tiny_model(cfg)
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    batch = random_batch(2, 64)
    loss, _ = hand_loss(model(batch["image"]), batch, cfg)
    loss_cl, _ = she.training_loss(model_cl, dict(batch, image=batch["image"].contiguous(
        memory_format=torch.channels_last)), cfg, 0)
    torch.testing.assert_close(loss_cl, loss)
    loss.backward()
    loss_cl.backward()
    for (name, p), p_cl in zip(model.named_parameters(), model_cl.parameters()):
        torch.testing.assert_close(p_cl.grad, p.grad, atol=1e-5, rtol=1e-4, msg=name)

# ---------------------------------------------------------------------------------------------
# bench.py's SimpleHand part: parameter counts, the fast CUDA paths, the benchmark


def test_params_command_prints_the_non_backbone_count():
    out = subprocess.run([sys.executable, "-m", "lab.bench", "--model", "simplehand", "--config", "paper", "--params"],
                         cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert f"non-backbone parameters: {she.non_backbone_parameters(PAPER) / 1e6:.2f}M" in out

@needs_timm
def test_fastvit_reparameterisation_folds_branches_and_keeps_the_outputs():
    cfg = with_fields(PAPER_FASTVIT, backbone="fastvit_t8", feature_channels=768, global_channels=768,
                      pretrained_backbone=False)
    model = she.build_model(cfg).eval()
    folded, applied = bench.reparameterized(model)
    assert applied and she.count_parameters(folded) < she.count_parameters(model)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(folded(x)["verts"], model(x)["verts"], atol=1e-4, rtol=1e-3)
    assert bench.reparameterized(tiny_model())[1] is False


@needs_cuda
def test_fast_inference_matches_eager_and_training_benchmark_runs_on_cuda():
    model = tiny_model().cuda().eval()
    run, applied = bench.fast_inference(model)
    assert "fp16" in applied and "channels_last" in applied
    x = torch.rand(2, 3, 96, 96, device="cuda")
    with torch.no_grad():
        for _ in range(3):  # CUDA graphs record in the first calls
            fast = run(x)["verts"].float().clone()
        eager = model(x)["verts"]
    assert (fast - eager).abs().max() <= 1e-2 * eager.abs().max() + 1e-4
    assert bench.benchmark_training(model, TINY, torch.device("cuda"), batch_size=8, steps=2, warmup=1) > 0


def test_bench_prints_labelled_lines_and_skips_the_cuda_ones_on_cpu():
    out = subprocess.run([sys.executable, "-m", "lab.bench", "--model", "simplehand", "--config", "tiny", "--bench",
                          "--device", "cpu",
                          "--reps", "2", "--threads", "1"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    assert "[tiny] eager fp32 inference, 96px on cpu: batch 1 latency" in out and "batch 32 throughput" in out
    assert "[tiny] fastest inference: skipped: needs CUDA" in out
    assert "[tiny] training throughput: skipped: needs CUDA" in out

# ---------------------------------------------------------------------------------------------
# The loss means the same on 1, 2 or 8 ranks


@pytest.mark.parametrize("k", [1, 2, 8])
def test_loss_gradient_equals_the_mean_of_equal_shard_gradients(k):
    """DDP averages the ranks' gradients: the loss of a global batch of 8 must have the gradient
    that k ranks of 8 / k samples each give on average (TINY: GroupNorm, no batch statistics)."""
    model, batch = tiny_model(), random_batch(8, 64, seed=3)
    model.train()

    def gradients(b):
        model.zero_grad()
        she.training_loss(model, b, TINY, 0)[0].backward()
        return [p.grad.clone() for p in model.parameters()]

    whole = gradients(batch)
    shards = [gradients({key: v[i::k] for key, v in batch.items()}) for i in range(k)]
    for (name, _), g, *gs in zip(model.named_parameters(), whole, *shards):
        torch.testing.assert_close(torch.stack(gs).mean(0), g, atol=1e-6, rtol=1e-4, msg=name)
