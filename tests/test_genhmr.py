"""GenHMR: masking, Gumbel-ST, EMA quantiser (2 ranks), MSDA vs a naive loop, UGS, refinement,
one-batch overfit per stage, the trainer protocol, and the official ViT-H names with strict=True."""

import ast
import dataclasses
import inspect
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image

import bodymodels
import demo
import genhmr
from lab import genhmr_experiments
import support
from lab.configs import config_leaves, recipe_of, with_fields
from lab.crops import crop_translation_to_full, full_image_intrinsics, warp_image

# Small configs: every part present, seconds on a CPU
TOK = with_fields(genhmr.TOKENIZER_PAPER, num_tokens=24, codebook_size=32, code_dim=8, width=16, loss_vertices=64,
                  aug_yaw_deg=0.0, aug_roll_deg=0.0, batch_size=16, lr=3e-3, max_steps=100)
IMG = with_fields(genhmr.PAPER, image_size=32, patch_size=8, vit_width=32, vit_depth=1, vit_heads=2, drop_path=0.0,
                  feature_scales=(1, 2), d_model=32, num_layers=1, num_heads=2, num_points=2, ffn_dim=64,
                  dropout=0.0, head_hidden=32, batch_size=4, lr=1e-3, max_steps=100, refine_iterations=5,
                  token_head="tied", regressor_head="mlp", hmr2_head=(32, 2, 2, 16, 64), loss_batch=1)




def seeded(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def tokenizer():
    torch.manual_seed(0)
    tok = genhmr.PoseTokenizer(TOK.model).train()
    tok(torch.randn(16, 24, 3) * 0.3)  # initialises the codebook
    return tok.eval()


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    return genhmr_experiments.build_model(IMG, tokenizer).eval()


def body_batch(B=4, seed=0, size=32):
    g = seeded(seed)
    joints3d = torch.randn(B, 24, 3, generator=g) * 0.3 + torch.tensor([0.0, 0.0, 20.0])
    return {"image": torch.rand(B, 3, size, size, generator=g), "smpl_pose": torch.randn(B, 24, 3, generator=g) * 0.3,
            "smpl_shape": torch.randn(B, 10, generator=g), "joints3d": joints3d,
            "joints2d": bodymodels.project_to_crop(joints3d, torch.zeros(B, 3)) * size + size / 2,
            "K": torch.tensor([[5000.0 * size / 256, 0, size / 2], [0, 5000.0 * size / 256, size / 2],
                               [0, 0, 1]]).expand(B, 3, 3)}


# ---------------------------------------------------------------------------------------------
# Masking (training) and schedules


@pytest.mark.parametrize("tau, m", [(0.0, 96), (0.3, 86), (0.5, 68), (0.7, 44), (1.0, 1)])
def test_num_masked_is_ceil_cos_clamped(tau, m):
    assert int(genhmr.num_masked(torch.tensor([tau], dtype=torch.float64), 96)) == m


@given(seed=st.integers(0, 2**31 - 1), B=st.integers(1, 5), L=st.integers(1, 60))
@settings(max_examples=30, deadline=None)
def test_random_masking_masks_exactly_m_and_keeps_the_rest(seed, B, L):
    ids = torch.randint(0, 7, (B, L), generator=seeded(seed))
    g1, g2 = seeded(seed + 1), seeded(seed + 1)
    y_m, mask = genhmr.random_masking(ids, 7, generator=g1)
    tau = torch.rand(B, generator=g2)
    assert torch.equal(mask.sum(1), genhmr.num_masked(tau, L))
    assert torch.equal(y_m[mask], torch.full_like(y_m[mask], 7)) and torch.equal(y_m[~mask], ids[~mask])


def test_every_position_is_masked_equally_often():
    ids = torch.zeros(20000, 12, dtype=torch.long)
    _, mask = genhmr.random_masking(ids, 1, generator=seeded(0))
    freq = mask.double().mean(0)
    expected = 2 / math.pi + 0.5 / 12  # E[cos(pi tau / 2)] plus the ceil's bias
    assert (freq - freq.mean()).abs().max() < 0.02 and abs(freq.mean() - expected) < 0.02


@pytest.mark.parametrize("T, schedule, counts", [(5, "cosine", [87, 63, 34, 10, 0]), (3, "cosine", [72, 24, 0]),
                                                 (5, "linear", [77, 58, 39, 20, 0]), (5, "cubic", [96, 90, 76, 47, 0]),
                                                 (5, "sqrt", [95, 88, 77, 58, 0]), (1, "cosine", [0])])
def test_remask_counts_are_ceil_gamma_l(T, schedule, counts):
    assert genhmr.remask_counts(96, T, schedule) == counts


# for drawn L, T and every schedule: tests/test_properties.py (the paper's ceil(gamma(t / T) L), in UGS too)


def test_unknown_schedule_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown mask schedule 'exp'"):
        genhmr.remask_counts(96, 5, "exp")
    with pytest.raises(ValueError, match="schedule"):
        with_fields(IMG, schedule="exp")


# ---------------------------------------------------------------------------------------------
# Gumbel-softmax straight-through and the temperature


def test_gumbel_temperature_schedule_values():
    cfg = with_fields(IMG, max_steps=1000).recipe
    taus = [genhmr.gumbel_temperature(cfg, s) for s in range(0, 1001, 10)]
    assert genhmr.gumbel_temperature(cfg, 0) == pytest.approx(1.0)
    assert genhmr.gumbel_temperature(cfg, 250) == pytest.approx(0.505)
    assert genhmr.gumbel_temperature(cfg, 500) == pytest.approx(0.01)
    assert genhmr.gumbel_temperature(cfg, 900) == pytest.approx(0.01)
    assert all(a >= b for a, b in zip(taus, taus[1:]))


@given(seed=st.integers(0, 2**31 - 1), tau=st.floats(0.05, 2.0))
@settings(max_examples=20, deadline=None)
def test_gumbel_st_is_one_hot_forward_with_the_soft_gradient(seed, tau):
    g = seeded(seed)
    logits = torch.randn(3, 5, 11, generator=g, dtype=torch.float64)
    noise = -torch.log(-torch.log(torch.rand(3, 5, 11, generator=g, dtype=torch.float64)))
    C = torch.randn(11, 4, generator=g, dtype=torch.float64)
    l1 = logits.clone().requires_grad_()
    y = genhmr.gumbel_softmax_st(l1, tau, noise)
    idx = (logits + noise).argmax(-1)
    assert torch.equal(y.detach(), F.one_hot(idx, 11).double()) and torch.equal((y @ C).detach(), C[idx])
    (y @ C).pow(2).sum().backward()
    l2 = logits.clone().requires_grad_()  # oracle: forward value C[idx], gradient of softmax((l + n) / tau) @ C
    soft = F.softmax((l2 + noise) / tau, -1)
    ((C[idx] + soft @ C - (soft @ C).detach()).pow(2)).sum().backward()
    torch.testing.assert_close(l1.grad, l2.grad)
    assert l1.grad.abs().sum() > 0


def test_gumbel_max_samples_the_softmax():
    logits = torch.tensor([1.0, 0.0, -1.0, 0.5])
    y = genhmr.gumbel_softmax_st(logits.expand(100000, 4), 0.3)
    torch.testing.assert_close(y.mean(0), logits.softmax(0), atol=0.01, rtol=0)


# ---------------------------------------------------------------------------------------------
# Quantiser: nearest code, EMA, reset, straight-through; two ranks


@given(seed=st.integers(0, 2**31 - 1))
@settings(max_examples=20, deadline=None)
def test_quantiser_picks_the_brute_force_nearest_code(seed):
    g = seeded(seed)
    q = genhmr.QuantizeEMAReset(13, 5, 0.99)
    q.codebook.copy_(torch.randn(13, 5, generator=g))
    z = torch.randn(4, 6, 5, generator=g)
    brute = torch.stack([torch.stack([((q.codebook - v) ** 2).sum(1).argmin() for v in row]) for row in z])
    assert torch.equal(q.nearest(z), brute)


def test_ema_update_arithmetic_and_dead_code_reset():
    torch.manual_seed(0)
    q = genhmr.QuantizeEMAReset(4, 2, 0.99).train()
    z = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0]])
    q.initialise(z)
    q.codebook.copy_(torch.tensor([[0.0, 0.0], [5.0, 5.0], [9.0, 9.0], [-9.0, -9.0]]))
    q.code_sum.copy_(q.codebook * 2)
    q.code_count.copy_(torch.tensor([2.0, 2.0, 2.0, 0.5]))
    ids = q.nearest(z)
    assert ids.tolist() == [0, 0, 1]
    old_sum, old_count = q.code_sum.clone(), q.code_count.clone()
    q.update(z, ids)
    batch_sum = torch.tensor([[0.1, 0.0], [5.0, 5.0], [0.0, 0.0], [0.0, 0.0]])
    torch.testing.assert_close(q.code_sum, 0.99 * old_sum + 0.01 * batch_sum)
    torch.testing.assert_close(q.code_count, 0.99 * old_count + 0.01 * torch.tensor([2.0, 1.0, 0.0, 0.0]))
    torch.testing.assert_close(q.codebook[:3], q.code_sum[:3] / q.code_count[:3, None])
    # code 3 has count 0.495 < 1: reset to (a noisy copy of) one of this batch's encoder outputs
    assert ((q.codebook[3] - z).norm(dim=1).min()) < 0.05


def test_first_batch_initialises_and_straight_through_is_identity():
    torch.manual_seed(0)
    q = genhmr.QuantizeEMAReset(8, 3, 0.99).train()
    z = torch.randn(2, 10, 3, requires_grad=True)
    z_q, ids, commit, _ = q(z)
    assert bool(q.initialised)
    # the codebook this batch was quantised with: 8 of its own 20 rows (N >= K: no noise), code_count 1;
    # the EMA step that followed gives it back: code_sum = mu C0 + (1 - mu) sum_{i: id_i = k} z_i
    flat = z.detach().reshape(-1, 3)
    batch_sum = torch.zeros(8, 3).index_add_(0, ids.reshape(-1), flat)
    initial = (q.code_sum - 0.01 * batch_sum) / 0.99
    first_rows = torch.cdist(initial, flat).argmin(1)
    torch.testing.assert_close(initial, flat[first_rows])  # every code is one of the batch's rows ...
    assert len(set(first_rows.tolist())) == 8  # ... each a different one
    brute = torch.stack([((initial - v) ** 2).sum(1).argmin() for v in flat]).view(2, 10)
    assert torch.equal(ids, brute)  # nearest codes of that initial codebook
    torch.testing.assert_close(z_q, initial[ids])  # the forward value is the code (straight-through)
    torch.testing.assert_close(q.code_count, 0.99 + 0.01 * torch.bincount(ids.reshape(-1), minlength=8).float())
    q.eval()
    z_q, ids, commit, _ = q(z)
    torch.testing.assert_close(z_q, q.codebook[ids])
    torch.testing.assert_close(commit, ((z - q.codebook[ids]) ** 2).mean())
    z_q.sum().backward()
    torch.testing.assert_close(z.grad, torch.ones_like(z))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_codebook(rank, world, port, out):
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(100 + rank)  # every rank draws different data and different reset candidates
    q = genhmr.QuantizeEMAReset(16, 4, 0.9).train()
    for _ in range(5):
        q(torch.randn(3, 5, 4) + rank)
    out[rank] = torch.cat([q.codebook.flatten(), q.code_sum.flatten(), q.code_count])
    dist.barrier()
    dist.destroy_process_group()


def test_two_ranks_hold_identical_codebooks():
    import torch.multiprocessing as mp
    out = mp.Manager().dict()
    mp.spawn(_ddp_codebook, args=(2, _free_port(), out), nprocs=2, join=True)
    assert torch.equal(out[0], out[1])


# ---------------------------------------------------------------------------------------------
# Multi-scale deformable attention


def naive_msda(values, locations, weights):
    """Per (batch, query, head, level, point): bilinear read at x = loc_x W - 0.5, zeros outside."""
    B, Lq, M, nL, P, _ = locations.shape
    hd = values[0].shape[1]
    rows = []
    for b in range(B):
        for q in range(Lq):
            heads = []
            for m in range(M):
                acc = torch.zeros(hd, dtype=values[0].dtype)
                for l, v in enumerate(values):
                    H, W = v.shape[-2:]
                    img = v[b * M + m]  # (hd, H, W)
                    for k in range(P):
                        x = locations[b, q, m, l, k, 0] * W - 0.5
                        y = locations[b, q, m, l, k, 1] * H - 0.5
                        x0, y0 = math.floor(x.item()), math.floor(y.item())
                        for dx in (0, 1):
                            for dy in (0, 1):
                                xi, yi = x0 + dx, y0 + dy
                                if 0 <= xi < W and 0 <= yi < H:
                                    wgt = (1 - (x - xi).abs()) * (1 - (y - yi).abs())
                                    acc = acc + weights[b, q, m, l, k] * wgt * img[:, yi, xi]
                heads.append(acc)
            rows.append(torch.cat(heads))
    return torch.stack(rows).view(B, Lq, M * hd)


def test_msda_equals_a_naive_bilinear_loop_values_and_gradients():
    g = seeded(0)
    B, Lq, M, P, hd = 2, 3, 2, 2, 3
    shapes = [(4, 5), (2, 3)]
    values = [torch.randn(B * M, hd, h, w, generator=g, dtype=torch.float64, requires_grad=True) for h, w in shapes]
    loc = (torch.rand(B, Lq, M, 2, P, 2, generator=g, dtype=torch.float64) * 1.2 - 0.1).requires_grad_()
    A = torch.rand(B, Lq, M, 2, P, generator=g, dtype=torch.float64).requires_grad_()
    fast = genhmr.ms_deform_attn(values, loc, A)
    slow = naive_msda(values, loc, A)
    torch.testing.assert_close(fast, slow)
    w = torch.randn_like(fast)
    grads_fast = torch.autograd.grad((fast * w).sum(), values + [loc, A])
    grads_slow = torch.autograd.grad((slow * w).sum(), values + [loc, A])
    for a, b in zip(grads_fast, grads_slow):
        torch.testing.assert_close(a, b)


def test_msda_weights_sum_to_one_and_start_on_the_radial_pattern():
    attn = genhmr.MSDeformAttn(16, 4, 3, 2)
    offsets, A = attn.sampling(torch.randn(2, 5, 16), torch.rand(1, 5, 2))
    torch.testing.assert_close(A.sum((-1, -2)), torch.ones(2, 5, 4))
    torch.testing.assert_close(A, torch.full_like(A, 1 / 6))  # zero-initialised weights: uniform
    torch.testing.assert_close(offsets[0, 0, 0, :, 1], torch.tensor([[2.0, 0.0]] * 3))  # head 0 along +x, point 2


def test_msda_reads_pixel_centres_exactly():
    v = torch.arange(12.0).view(1, 1, 3, 4)
    loc = torch.tensor([(2 + 0.5) / 4, (1 + 0.5) / 3]).view(1, 1, 1, 1, 1, 2)
    assert genhmr.ms_deform_attn([v], loc, torch.ones(1, 1, 1, 1, 1)).item() == v[0, 0, 1, 2].item()


# ---------------------------------------------------------------------------------------------
# Uncertainty-guided sampling


def test_ugs_fixed_tokens_stay_fixed_and_no_mask_is_left(model):
    images = torch.rand(3, 3, 32, 32, generator=seeded(1))
    out = genhmr.uncertainty_guided_sampling(model, images, T=5)
    L = model.num_tokens
    counts = [int(m.sum()) // 3 for m, *_ in out["history"]]
    assert counts == genhmr.remask_counts(L, 5)
    for (before, *_), (after, *_) in zip(out["history"], out["history"][1:]):
        assert not (after & ~before).any()  # a fixed position is never masked again
    assert not (out["ids"] == model.num_codes).any() and out["ids"].max() < model.num_codes


def test_ugs_fixed_values_never_change_and_t1_is_one_argmax(model):
    images = torch.rand(2, 3, 32, 32, generator=seeded(2))
    levels, _, _ = model.encode_image(images)
    one = genhmr.uncertainty_guided_sampling(model, images, T=1)["ids"]
    full = torch.full((2, model.num_tokens), model.num_codes)
    assert torch.equal(one, model.logits(full, levels).argmax(-1))
    seen = {}
    calls = []
    orig = model.masked_transformer.forward

    def spy(ids, lv, book):
        calls.append(ids.clone())
        return orig(ids, lv, book)
    model.masked_transformer.forward = spy
    try:
        genhmr.uncertainty_guided_sampling(model, images, T=4)
    finally:
        del model.masked_transformer.forward
    for ids in calls:  # a token, once visible in the input, keeps its value
        visible = ids != model.num_codes
        for key, value in zip(visible.nonzero().tolist(), ids[visible].tolist()):
            assert seen.setdefault(tuple(key), value) == value


def test_ugs_runs_the_image_encoder_once(model):
    calls = []
    handle = model.backbone.register_forward_hook(lambda *a: calls.append(1))
    try:
        genhmr.uncertainty_guided_sampling(model, torch.rand(1, 3, 32, 32), T=7)
    finally:
        handle.remove()
    assert len(calls) == 1


def test_ugs_top_k_draws_within_the_top_k(model):
    images = torch.rand(2, 3, 32, 32, generator=seeded(3))
    probs = torch.rand(2, 24, 32, generator=seeded(4)).softmax(-1)
    ids = genhmr.sample_tokens(probs, 3, seeded(5))
    assert (probs.topk(3, -1).indices == ids[..., None]).any(-1).all()
    a = genhmr.uncertainty_guided_sampling(model, images, T=3)["ids"]
    assert torch.equal(a, genhmr.uncertainty_guided_sampling(model, images, T=3)["ids"])  # top-1: deterministic


# ---------------------------------------------------------------------------------------------
# Refinement


def _state_hash(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


# NOTE G18's step rule (genhmr_experiments' alternative to Eq. (4)'s fixed eta), from eta = 1: G never rises
BACKTRACKING = with_fields(IMG, refine_lr=1.0)


def backtracking_refine(G, e0, steps):
    return genhmr_experiments.backtracking_refine(G, e0, with_fields(BACKTRACKING, refine_iterations=steps).inference)


def test_refinement_changes_no_parameter_and_lowers_its_objective(model):
    tok = model.tokenizer
    images = torch.rand(3, 3, 32, 32, generator=seeded(6))
    ugs = genhmr.uncertainty_guided_sampling(model, images, T=2)
    before = _state_hash(model)
    targets = torch.rand(3, 24, 2, generator=seeded(7)) * 0.4 - 0.2
    G, e0 = genhmr.refinement_problem(tok, ugs["ids"], ugs["betas"], ugs["cam"], targets, 10.0, 32)
    kept = backtracking_refine(G, e0, 4)
    with torch.no_grad():
        assert (G(kept[4]) < G(kept[0])).all() and len(kept) == 5
    assert torch.equal(kept[0], tok.quantizer.codebook[ugs["ids"]])  # the start: the sampled codes
    with torch.no_grad():  # a shorter refinement is the start of a longer one
        assert torch.equal(kept[2], backtracking_refine(G, e0, 2)[-1])
    after = _state_hash(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())
    with torch.no_grad():  # G never rises from one step to the next
        Gs = [G(e) for e in kept]
    assert all((b <= a + 1e-6).all() for a, b in zip(Gs, Gs[1:]))


def test_refinement_ignores_joints_of_weight_zero_and_unit_weights_are_eq_3(model):
    """A joint of weight 0 (a keypoint the detector did not see) moves neither G nor the refined codes;
    weights of 1 everywhere give the unweighted Eq. (3)."""
    tok = model.tokenizer
    ugs = genhmr.uncertainty_guided_sampling(model, torch.rand(2, 3, 32, 32, generator=seeded(8)), T=2)
    args = (tok, ugs["ids"], ugs["betas"], ugs["cam"])
    targets = torch.rand(2, 24, 2, generator=seeded(9)) * 0.4 - 0.2
    weights = (torch.rand(2, 24, generator=seeded(10)) > 0.5).float()
    moved = torch.where(weights[..., None] > 0, targets, targets + 0.3)  # unseen joints' targets elsewhere

    def run(targets, steps, weights=None):
        """-> (e after `steps`, G at the start, G at the end)"""
        G, e0 = genhmr.refinement_problem(*args, targets, 10.0, 32, weights)
        e = backtracking_refine(G, e0, steps)[-1]
        with torch.no_grad():
            return e, G(e0), G(e)
    e, G0, G1 = run(targets, 3, weights)
    e_moved, G0_moved, G1_moved = run(moved, 3, weights)
    assert torch.equal(e, e_moved) and torch.equal(G1, G1_moved) and (G1 < G0).all()
    plain = run(targets, 2)
    ones = run(targets, 2, torch.ones(2, 24))
    assert all(torch.equal(a, b) for a, b in zip(plain, ones))


def test_predict_returns_refined_outputs_deterministically(model):
    batch = body_batch(3, seed=8)
    batch["index"] = torch.tensor([5, 6, 7])
    a, b = genhmr_experiments.predict(model, batch, IMG), genhmr_experiments.predict(model, batch, IMG)
    for key in ("joints3d", "verts", "refined_joints3d", "refined_verts", "reproj_error_px", "refined_reproj_error_px"):
        assert torch.equal(a[key], b[key])
    assert a["verts"].shape == (3, 6890, 3) and a["refined_joints3d"].shape == (3, 24, 3)
    assert (a["refined_reproj_error_px"] <= a["reproj_error_px"] + 1e-6).all()
    # a sample's keypoint noise follows its index, not its place in the batch
    c = genhmr_experiments.predict(model, {k: v[[2, 0, 1]] for k, v in batch.items()}, IMG)
    assert torch.allclose(c["refined_joints3d"], a["refined_joints3d"][[2, 0, 1]], atol=1e-5)
    del batch["index"]
    with pytest.raises(ValueError, match="needs 'index'"):
        genhmr_experiments.predict(model, batch, IMG)


@given(st.floats(0.05, 0.6), st.floats(0.65, 0.98), st.integers(0, 2**31 - 1))
@settings(max_examples=8, deadline=None)
@example(0.334, 0.900, 0)  # the recipe's detector: HRNet-W32 on MPII val
def test_detector_like_joints_have_the_detectors_pckh(pckh_01, pckh_05, seed):
    """NOTE G27: joints drawn by `detector_joints2d` land within 0.1 and 0.5 head segments of the truth as often as
    the detector's published PCKh says (4800 joints: binomial std <= 0.8 %), whatever the head's size in pixels."""
    n, head = 200, 3 + 40 * torch.rand(200, generator=seeded(seed))
    truth = 20 + 60 * torch.rand(n, 24, 2, generator=seeded(seed + 1))
    drawn = genhmr_experiments.detector_joints2d(truth, head, torch.arange(n) + seed, (pckh_01, pckh_05), (400, 400))
    within = (drawn - truth).norm(dim=-1) / head[:, None]
    assert abs((within < 0.1).float().mean().item() - pckh_01) < 0.035
    assert abs((within < 0.5).float().mean().item() - pckh_05) < 0.035
    far = within > 3  # misses: anywhere in the 400 x 400 crop
    assert far.any() and ((drawn >= 0) & (drawn <= 400)).all(-1)[far].all()


def test_predict_refines_towards_detector_like_joints_and_reports_the_oracle_apart(model):
    """predict's refined_ answer comes from detector-like joints (about 10 % misses, PCKh@0.5 near 0.9), the oracle's
    (labels + 1 px) under refined_oracle_; both refinements start from the same UGS tokens."""
    batch = body_batch(6, seed=8)
    batch["index"] = torch.arange(6)
    out = genhmr_experiments.predict(model, batch, IMG)
    assert 0.6 < out["detected_pckh_05"].mean() < 1.0 and out["detected_error_px"].mean() > 1.0
    assert not torch.allclose(out["refined_joints3d"], out["refined_oracle_joints3d"])
    head = genhmr_experiments.head_segment_m(model.tokenizer.body)
    assert 0.1 < head < 0.3  # metres: an adult's MPII head segment is about 0.2 m


def test_predict_is_the_papers_inference_and_diagnostics_hold_the_tables(model, tokenizer):
    """predict returns UGS and refinement alone (no report-only key); `diagnostics` gives every table row, the soft
    readout and the context accuracies, and its rows at predict's own T, schedule and P are predict's meshes."""
    batch = body_batch(3, seed=8)
    batch["index"] = torch.tensor([5, 6, 7])
    cfg = with_fields(IMG, ugs_iterations=3, refine_iterations=5)
    out = genhmr_experiments.predict(model, batch, cfg)
    assert set(out) == ({f"{p}{k}" for p in ("", "refined_", "refined_oracle_") for k in ("joints3d", "verts",
                                                                                          "joints2d", "cam_t")}
                        | {"reproj_error_px", "refined_reproj_error_px", "ids", "betas", "detected_error_px",
                           "detected_pckh_01", "detected_pckh_05"})
    labels = {"smpl_pose": torch.randn(20, 24, 3, generator=seeded(3)) * 0.3}
    diag = genhmr_experiments.diagnostics(model, cfg, labels)(batch)
    expected = {f"table_{s}_T{T}_joints3d" for s in genhmr.SCHEDULES for T in genhmr_experiments.TABLE_ITERATIONS}
    expected |= {f"table_refine_P{P}_joints3d" for P in genhmr_experiments.TABLE_REFINE_STEPS}
    expected |= {"table_soft_T1_joints3d", "masked_token_accuracy_75", "count_table_accuracy_75"}
    expected |= {f"ugs_t{t}_{k}" for t in range(1, 4) for k in ("joints3d", "commit_precision")}
    expected |= {f"context_{c}_{k}" for c in ("none", "true25", "own25") for k in ("hidden_accuracy", "joints3d")}
    expected |= {"context_true25_overruled"} | {f"remask_{o}_T5_joints3d" for o in genhmr_experiments.REMASK_ORDERS}
    assert set(diag) == expected and not expected & set(out)
    for key, prefix in (("table_cosine_T3_joints3d", ""), ("table_refine_P5_joints3d", "refined_")):
        torch.testing.assert_close(diag[key] + out[prefix + "cam_t"][:, None], out[prefix + "joints3d"], atol=1e-5,
                                   rtol=0)
    table = genhmr_experiments.NeighbourCounts(model.num_tokens, model.num_codes)
    table.add(tokenizer.tokenize(labels["smpl_pose"]))  # the training poses' tokens, as diagnostics counts them
    levels = model.encode_image(batch["image"])[0]
    assert torch.equal(diag["count_table_accuracy_75"],
                       genhmr_experiments.context_accuracies(model, levels, batch, table)["count_table_accuracy_75"])


def test_refinement_fixed_step_is_eq_4_as_printed(model):
    """Eq. (4) with a fixed eta: one step moves the codes by exactly -eta grad G; backtracking never raises G."""
    tok = model.tokenizer
    ugs = genhmr.uncertainty_guided_sampling(model, torch.rand(2, 3, 32, 32, generator=seeded(11)), T=2)
    targets = torch.rand(2, 24, 2, generator=seeded(12)) * 0.4 - 0.2
    e0 = tok.quantizer.codebook[ugs["ids"]].clone().requires_grad_(True)
    t = bodymodels.weak_perspective_to_translation(ugs["cam"], genhmr.FOCAL_LENGTH, genhmr.CROP_SIZE)
    with torch.no_grad():
        R0 = tok.decode(e0)
    G = genhmr.refinement_objective(tok, e0, ugs["betas"], t, targets, R0, 10.0, 32.0)
    grad, = torch.autograd.grad(G.sum(), e0)
    cfg = with_fields(IMG, refine_iterations=1, refine_lr=1e-3, refine_reg=10.0)
    objective, start = genhmr.refinement_problem(tok, ugs["ids"], ugs["betas"], ugs["cam"], targets, 10.0, 32)
    e1 = genhmr.refine(objective, start, cfg.inference)[-1]
    with torch.no_grad():
        G_start = objective(start)
    assert torch.allclose(e1, e0.detach() - 1e-3 * grad, atol=1e-6) and torch.allclose(G_start, G.detach())
    assert genhmr.PAPER.recipe.refine_eta_rule == genhmr.TINY.recipe.refine_eta_rule == "fixed"
    assert genhmr_experiments.REFINEMENTS["fixed"] is genhmr.refine
    with pytest.raises(ValueError, match="refine_eta_rule"):
        genhmr.GenHMRRecipe(refine_eta_rule="adam")


def test_backtracking_takes_the_largest_halving_that_lowers_g_per_sample():
    """NOTE G18's rule on a quadratic G(e) = a ||e||^2 per sample, by hand: from eta, the first of eta,
    eta / 2, ... whose step lowers G (0 when none of `halvings` does), doubled for the next step."""
    a = torch.tensor([0.25, 4.0, 100.0])
    objective = lambda e: a * (e ** 2).sum((1, 2))
    e = torch.ones(3, 2, 2)
    grad = 2 * a[:, None, None] * e
    eta = torch.full((3, 1, 1), 1.0)
    step, following = genhmr_experiments.backtracking_step(objective, e, objective(e), grad, eta, halvings=4)
    # G(e - eta grad) = a (1 - 2 a eta)^2 ||e||^2 < a ||e||^2 iff 0 < eta < 1 / a: eta 1 for a = 1/4;
    # 1 / 2^3 for a = 4 (1, 1/2 and 1/4 fail); none of 1 .. 1/8 for a = 100 (below 1/100 needed)
    assert step.flatten().tolist() == [1.0, 0.125, 0.0]
    assert following.flatten().tolist() == [2.0, 0.25, 0.0625]


def test_count_table_counts_neighbours_and_fills_what_they_determine():
    """NeighbourCounts: n[i, a, b] counts adjacent pairs; where y_{i+1} = y_i + 1 always, a hidden token with a
    visible neighbour is recovered exactly; visible tokens are returned as given; the table is saved state."""
    table = genhmr_experiments.NeighbourCounts(6, 10)
    starts = torch.randint(0, 5, (40,), generator=seeded(0))
    ids = starts[:, None] + torch.arange(6)  # (40, 6), codes 0..9
    table.add(ids[:20]), table.add(ids[20:])
    assert int(table.pairs.sum()) == 40 * 5 and int(table.pairs[2, 3, 4]) == int((starts == 1).sum())
    hidden = torch.zeros(40, 6, dtype=torch.bool)
    hidden[:, 1], hidden[:, 4] = True, True
    assert torch.equal(table.predict(ids, hidden), ids)
    copy = genhmr_experiments.NeighbourCounts(6, 10)
    copy.load_state_dict(table.state_dict())
    assert torch.equal(copy.pairs, table.pairs)


def test_context_accuracies_follow_the_index_and_body_metrics_average_them(model, tokenizer):
    """masked_token_accuracy_75 / count_table_accuracy_75: a fixed quarter of the tokens hidden per sample
    index; a generator told the true tokens everywhere (logits = one-hot Y*) scores 1; metrics average."""
    import metrics
    hidden = genhmr_experiments.context_masks(torch.tensor([3, 3, 4]), 48)
    # each row: the 12 smallest of a permutation of 48 drawn by a generator seeded by the row's index
    for row, index in zip(hidden, (3, 3, 4)):
        assert torch.equal(row, torch.randperm(48, generator=torch.Generator().manual_seed(index)) < 12)
    m = genhmr_experiments.build_model(IMG, tokenizer).eval()
    batch = body_batch(3, seed=8)
    batch["index"] = torch.tensor([5, 6, 7])
    counts = genhmr_experiments.NeighbourCounts(m.num_tokens, m.num_codes)
    counts.add(tokenizer.tokenize(batch["smpl_pose"]))  # the table of these very poses' tokens
    assert int(counts.pairs.sum()) == 3 * (m.num_tokens - 1)
    levels = m.encode_image(batch["image"])[0]
    out = genhmr_experiments.context_accuracies(m, levels, batch, counts)
    assert out["masked_token_accuracy_75"].shape == (3,) and ((0 <= out["masked_token_accuracy_75"]) &
                                                               (out["masked_token_accuracy_75"] <= 1)).all()
    y = tokenizer.tokenize(batch["smpl_pose"])
    m.logits = lambda ids, levels: F.one_hot(y, m.num_codes).float()
    accuracy = genhmr_experiments.context_accuracies(m, levels, batch)["masked_token_accuracy_75"]
    assert accuracy.tolist() == [1.0, 1.0, 1.0]
    batch["has_smpl_pose"] = torch.tensor([1.0, 0.0, 1.0])
    out = genhmr_experiments.context_accuracies(m, levels, batch, counts)
    assert math.isnan(out["count_table_accuracy_75"][1]) and not math.isnan(out["count_table_accuracy_75"][0])
    scored = metrics.body_metrics(dict(out, joints3d=torch.zeros(3, 24, 3)), {"joints3d": torch.zeros(3, 24, 3)})
    assert scored["masked_token_accuracy_75"] == pytest.approx(1.0)
    assert scored["count_table_accuracy_75"] == pytest.approx(float(out["count_table_accuracy_75"][[0, 2]].mean()))


def test_context_use_measures_the_context_and_the_remasking_orders(model, tokenizer):
    """context_use: with no context the hidden tokens are the one pass's (T = 1); a generator that copies what it is
    shown and knows nothing else overrules nothing and gets the hidden tokens of the one pass; one told the true
    tokens everywhere gets every hidden token right; the confidence order is the paper's UGS (c = 0) and the
    oracle order commits only right tokens while any is left."""
    import metrics
    batch = body_batch(3, seed=8)
    batch["index"] = torch.tensor([5, 6, 7])
    levels, betas, _ = model.encode_image(batch["image"])
    out = genhmr_experiments.context_use(model, levels, betas, batch, choice_temperature=0.0)
    ugs1 = genhmr.sample_from_features(model, levels, 1)[0]
    torch.testing.assert_close(out["context_none_joints3d"], tokenizer.body.joints(tokenizer.decode_ids(ugs1), betas))
    ugs5 = genhmr.sample_from_features(model, levels, 5, seeds=batch["index"])[0]
    torch.testing.assert_close(out["remask_confidence_T5_joints3d"],
                               tokenizer.body.joints(tokenizer.decode_ids(ugs5), betas))
    torch.testing.assert_close(out["remask_noise_T5_joints3d"], out["remask_confidence_T5_joints3d"])  # c = 0
    y = tokenizer.tokenize(batch["smpl_pose"])
    hidden = genhmr_experiments.context_masks(batch["index"], y.shape[1], visible=0.25)
    assert hidden.sum(1).tolist() == [round(0.75 * y.shape[1])] * 3  # a quarter shown
    m = genhmr_experiments.build_model(IMG, tokenizer).eval()
    m.logits = lambda ids, levels: F.one_hot(y, m.num_codes).float()  # knows the answer everywhere
    told = genhmr_experiments.context_use(m, levels, betas, batch, choice_temperature=0.0)
    assert [told[f"context_{c}_hidden_accuracy"].tolist() for c in ("none", "true25")] == [[1.0] * 3] * 2
    assert told["context_true25_overruled"].tolist() == [0.0] * 3
    guess = (y + 1) % m.num_codes  # a fixed wrong answer wherever it is not shown a token
    m.logits = lambda ids, levels: F.one_hot(torch.where(ids < m.num_codes, ids, guess), m.num_codes).float()
    copier = genhmr_experiments.context_use(m, levels, betas, batch, choice_temperature=0.0)
    assert copier["context_true25_overruled"].tolist() == [0.0] * 3
    assert copier["context_true25_hidden_accuracy"].tolist() == [0.0] * 3
    scored = metrics.body_metrics(dict(copier, joints3d=torch.zeros(3, 24, 3)), {"joints3d": torch.zeros(3, 24, 3)})
    assert scored["context_true25_overruled"] == 0.0 and "context_own25_mpjpe_mm" in scored
    # the oracle: a generator right on a third of the positions, surest where it is wrong
    right = torch.arange(y.shape[1]) % 3 == 0
    probs = torch.where(right, 0.4, 0.9)[None, :, None]
    wrong_logits = lambda ids, levels: (probs * F.one_hot(torch.where(right, y, guess), m.num_codes)).log1p()
    m.logits = wrong_logits
    oracle = lambda t, sampled, p: (sampled == y).float() * 2 + p  # noqa: E731
    for order in ("oracle", "confidence"):
        _, history = (genhmr_experiments.ranked_sampling(m, levels, 5, oracle) if order == "oracle"
                      else genhmr.sample_from_features(m, levels, 5))
        fixed_first = ~history[0][0]  # committed at t = 1
        precision = float((history[0][2] == y)[fixed_first].float().mean())
        assert precision == (1.0 if order == "oracle" else 0.0), order


def test_every_ablation_row_sets_existing_fields_that_round_trip_through_set():
    """ABLATIONS: each row's fields belong to a GenHMR stage's config, survive train.py's --set text, and
    build; inference tables change only predict-time fields; one figure per column; the chosen row exists."""
    import train
    inference_fields = {"ugs_iterations", "schedule", "top_k", "refine_iterations", "refine_eta_rule", "refine_lr"}
    for name, table in genhmr_experiments.ABLATIONS.items():
        labels = [row[0] for row in table["rows"]]
        assert table["chosen"] in labels and len(set(labels)) == len(labels), name
        for label, fields, figures in table["rows"]:
            assert len(figures) == len(table["columns"]), (name, label)
            if table.get("inference"):
                assert set(fields) <= inference_fields, (name, label)
            for cfg in (genhmr.TINY, genhmr.TOKENIZER_TINY):
                own = {k: v for k, v in fields.items() if k in config_leaves(cfg)}
                text = [f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in own.items()]
                assert dataclasses.asdict(train.apply_overrides(cfg, text)) == dataclasses.asdict(
                    with_fields(cfg, **own)), (name, label)
            assert set(fields) <= {f for c in (genhmr.TINY, genhmr.TOKENIZER_TINY) for f in config_leaves(c)}


# ---------------------------------------------------------------------------------------------
# Training: the protocol, frozen parts, overfit


def test_image_stage_trains_every_parameter_once_and_nothing_frozen(tokenizer):
    model = genhmr_experiments.build_model(IMG, tokenizer).train()
    book = tokenizer.quantizer.codebook.clone()
    loss, terms = genhmr_experiments.training_loss(model, body_batch(), IMG, 0)
    loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for _, p in trainable)  # DDP: no unused parameters
    assert all(p.grad is None for p in model.tokenizer.parameters())
    assert torch.equal(book, tokenizer.quantizer.codebook) and not tokenizer.training
    assert set(terms) >= {"mask", "pose", "betas", "joints3d", "joints2d"}


def test_note_13_variant_is_the_labs_subclass_and_the_papers_signatures_carry_only_its_inputs(tokenizer):
    """gumbel_positions "masked" builds genhmr_experiments' subclass, the paper's config the paper's class; the
    paper's forward, sampling and refinement take no argument a diagnostic or an ablation row alone needs."""
    assert type(genhmr_experiments.build_model(IMG, tokenizer)) is genhmr.GenHMR
    variant = genhmr_experiments.build_model(with_fields(IMG, gumbel_positions="masked"), tokenizer)
    assert type(variant) is genhmr_experiments.VisibleTruthGenHMR
    params = {f: list(inspect.signature(f).parameters) for f in (genhmr.GenHMR.forward, genhmr.refine,
                                                                  genhmr.sample_from_features)}
    assert not {"true_ids", "step_size", "rank_by"} & {p for ps in params.values() for p in ps}


def test_training_loss_changes_no_state(tokenizer):
    """The loss is a function of (model, batch, step): two calls under the same seed give the same loss and
    gradient-free state (every parameter and buffer) equal before and after; the temperature follows the step."""
    model = genhmr_experiments.build_model(IMG, tokenizer).train()
    before = _state_hash(model)
    results = []
    for _ in range(2):
        torch.manual_seed(3)
        results.append(genhmr_experiments.training_loss(model, body_batch(), IMG, 7))
    assert torch.equal(results[0][0], results[1][0])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert results[0][1]["temperature"].item() == pytest.approx(genhmr.gumbel_temperature(IMG.recipe, 7))
    assert not any(name.endswith("step") for name in model.state_dict())


def test_paper_structure_gives_every_parameter_a_gradient(tokenizer):
    """The paper's choices at a small width (the plain Linear token head, HMR2.0's SMPL head in the backbone
    stage): each loss reaches every trainable parameter, as DDP requires."""
    cfg = with_fields(IMG, token_head="linear", regressor_head="hmr2", loss_batch=48)
    backbone = genhmr_experiments.BackboneStage
    for protocol, model in ((backbone, backbone.build_model(cfg, tokenizer)),
                            (genhmr_experiments, genhmr_experiments.build_model(cfg, tokenizer))):
        loss, _ = protocol.training_loss(model.train(), body_batch(), cfg, 0)
        loss.backward()
        # (some are exactly 0 at the start, as in the official code: HMR2.0's token embedding weight, which
        # multiplies a zero token, and the first MSDA's input norm, whose zero-initialised Linears ignore it)
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    head = model.masked_transformer
    assert head.head.out_features == model.num_codes and not hasattr(head, "log_scale")


def test_loss_weights_are_the_papers():
    w = (PAPER := recipe_of(genhmr.PAPER)).w_mask, PAPER.w_pose, PAPER.w_betas, PAPER.w_3d, PAPER.w_2d
    assert w == (1.0, 1e-3, 5e-4, 5e-2, 1e-2)
    t = genhmr.TOKENIZER_PAPER.model
    assert (t.w_re, t.w_pose, t.w_verts, t.w_joints, t.w_commit, t.ema_decay) == (1.0, 1.0, 0.5, 0.3, 0.02, 0.99)
    # HMR2.0 / TokenHMR sum the geometric terms over a GPU's 48 samples; TINY averages them (NOTE G20)
    TINY = recipe_of(genhmr.TINY)
    assert (PAPER.loss_batch, TINY.loss_batch) == (48, 1)
    assert (PAPER.token_head, PAPER.regressor_head, TINY.token_head, TINY.regressor_head) == (
        "linear", "hmr2", "tied", "mlp")
    assert w == tuple(getattr(TINY, k) for k in ("w_mask", "w_pose", "w_betas", "w_3d", "w_2d"))


# ---------------------------------------------------------------------------------------------
# Each loss means the same on 1, 2 or 8 ranks (DDP averages the ranks' gradients)


def tiny_body_batch(B, seed):
    """A TINY-sized (64 x 48) batch with SyntheticBodies' keys."""
    batch = body_batch(B, seed, size=64)
    batch["image"] = batch["image"][..., 8:56]  # (B, 3, 64, 48); joints2d only feed L_2D
    return batch


def _mean_of_shards(protocol, model, batch, cfg, k, before_each):
    """(loss, gradient) averaged over k equal shards of `batch`, as DDP averages k ranks' gradients."""
    params = [p for p in model.parameters() if p.requires_grad]
    B = len(batch["smpl_pose"])
    loss_sum, grad_sum = 0.0, torch.zeros(sum(p.numel() for p in params))
    for r in range(k):
        lo, hi = r * B // k, (r + 1) * B // k
        before_each(lo, hi)
        loss, _ = protocol.training_loss(model, {key: v[lo:hi] for key, v in batch.items()}, cfg, 0)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        grad_sum += torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)])
        loss_sum += loss.item()
    return loss_sum / k, grad_sum / k


@pytest.mark.parametrize("stage", ["tokenizer", "backbone", "backbone_hmr2", "prior", "image_all", "image_masked"])
def test_each_stage_loss_is_the_mean_over_equal_shards_on_1_2_8_ranks(stage, monkeypatch):
    """For one global batch of 8, the loss and its gradient equal the mean over k = 2 and 8 equal shards
    of the shards' (what k DDP ranks compute), at TINY. Batch-dependent parts are fixed: the EMA codebook
    is in eval mode (no update) and the pose augmentation off; the conv stem's BatchNorm in eval mode;
    the masks, the input swap and the Gumbel noise drawn once for the whole batch, each shard reading its rows;
    every call at step 0 (the same Gumbel temperature)."""
    torch.manual_seed(0)
    tcfg = with_fields(genhmr.TOKENIZER_TINY, aug_yaw_deg=0.0, aug_roll_deg=0.0)
    tok = genhmr.PoseTokenizer(tcfg.model).train()
    tok(torch.randn(64, 24, 3) * 0.4)  # initialises the codebook
    tok.eval()
    batch, rows = tiny_body_batch(8, seed=12), slice(0, 8)

    def use_rows(lo, hi):
        nonlocal rows
        rows = slice(lo, hi)
    if stage == "tokenizer":
        protocol, cfg, model = genhmr_experiments.TokenizerStage, tcfg, tok
    elif stage.startswith("backbone"):
        cfg = genhmr_experiments.BACKBONE_CONFIGS["tiny"]
        if stage == "backbone_hmr2":  # HMR2.0's head and calibration (loss_batch 48)
            cfg = with_fields(cfg, regressor_head="hmr2", hmr2_head=(32, 2, 2, 16, 64), loss_batch=48)
        protocol = genhmr_experiments.BackboneStage
        model = protocol.build_model(cfg, tok).train()
    else:
        if stage == "prior":
            cfg = genhmr_experiments.PRIOR_CONFIGS["tiny"]
            regressor = genhmr_experiments.BackboneStage.build_model(genhmr_experiments.BACKBONE_CONFIGS["tiny"], tok)
            protocol = genhmr_experiments.PriorStage
            model = protocol.build_model(cfg, regressor).train()
        else:
            cfg = with_fields(genhmr.TINY, ce_on=stage.removeprefix("image_"))
            protocol, model = genhmr_experiments, genhmr_experiments.build_model(cfg, tok).train()
        L, K = model.num_tokens, model.num_codes
        _, masks = genhmr.random_masking(torch.zeros(8, L, dtype=torch.long), K, generator=seeded(13))
        assert len(set(masks.sum(1).tolist())) > 1  # the samples' mask counts differ
        noise = -torch.log(-torch.log(torch.rand(8, L, K, generator=seeded(14)).clamp(1e-10, 1 - 1e-7)))
        gumbel = genhmr.gumbel_softmax_st
        monkeypatch.setattr(genhmr, "random_masking", lambda ids, mask_id, mask_tau_max=1.0: (
            torch.where(masks[rows], mask_id, ids), masks[rows]))
        monkeypatch.setattr(genhmr, "gumbel_softmax_st", lambda logits, t: gumbel(logits, t, noise[rows]))
        swap = torch.rand(8, L, generator=seeded(15)) >= cfg.recipe.pkeep  # MMM's input swap, drawn once for the batch
        codes = torch.randint(K, (8, L), generator=seeded(16))
        monkeypatch.setattr(genhmr, "swap_visible", lambda ids, masked, num_codes, pkeep: (
            torch.where(swap[rows] & ~masked, codes[rows], ids)))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    loss, grad = _mean_of_shards(protocol, model, batch, cfg, 1, use_rows)
    assert grad.norm() > 0
    for k in (2, 8):
        loss_k, grad_k = _mean_of_shards(protocol, model, batch, cfg, k, use_rows)
        assert loss_k == pytest.approx(loss, rel=1e-5)
        assert (grad_k - grad).norm() <= 1e-5 * grad.norm(), (k, ((grad_k - grad).norm() / grad.norm()).item())


def _overfit(protocol, model, cfg, batch, steps):
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.recipe.lr)
    losses = []
    for _ in range(steps):
        loss, _ = protocol.training_loss(model, batch, cfg, 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_tokenizer_overfits_one_batch():
    torch.manual_seed(0)
    tok = genhmr_experiments.TokenizerStage.build_model(TOK, None).train()
    batch = {"smpl_pose": torch.randn(8, 24, 3, generator=seeded(9)) * 0.4}
    losses = _overfit(genhmr_experiments.TokenizerStage, tok, TOK, batch, 120)
    assert losses[-1] < 0.4 * losses[0]  # measured: 0.98 -> 0.30
    assert all(p.grad is not None for p in tok.parameters())


def test_image_stage_overfits_one_batch(tokenizer):
    torch.manual_seed(0)
    cfg = with_fields(IMG, lr=2e-3, max_steps=60)  # the paper's weights on per-sample means (loss_batch 1)
    model = genhmr_experiments.build_model(cfg, tokenizer).train()
    losses = _overfit(genhmr_experiments, model, cfg, body_batch(4, seed=10), 60)
    assert sum(losses[-5:]) / 5 < 0.6 * losses[0]  # measured: 5.45 -> 2.5


def test_learning_rate_is_a_pure_function_of_the_step():
    cfg = with_fields(genhmr.TINY, warmup_steps=10, max_steps=110)
    assert genhmr_experiments.learning_rate(cfg, 0) == pytest.approx(cfg.recipe.lr / 10)
    assert genhmr_experiments.learning_rate(cfg, 10) == pytest.approx(cfg.recipe.lr)
    assert genhmr_experiments.learning_rate(cfg, 110) == pytest.approx(cfg.recipe.lr * 0.01)
    assert genhmr_experiments.learning_rate(genhmr.PAPER, 12345) == genhmr.PAPER.recipe.lr


def test_token_head_is_the_scaled_distance_to_each_code(model):
    """NOTE G21: logit_k = -exp(s) ||W h - c_k||^2 against a per-code loop; s starts at
    -log(mean squared distance between nearest codes)."""
    gen, book = model.masked_transformer, model.tokenizer.quantizer.codebook
    levels, _, _ = model.encode_image(torch.rand(2, 3, 32, 32, generator=seeded(4)))
    ids = torch.randint(0, model.num_codes + 1, (2, model.num_tokens), generator=seeded(5))
    logits = model.logits(ids, levels)
    captured = {}
    handle = gen.head.register_forward_hook(lambda m, i, o: captured.update(h=o))
    try:
        model.logits(ids, levels)
    finally:
        handle.remove()
    loop = torch.stack([-((captured["h"] - c) ** 2).sum(-1) for c in book], -1) * gen.log_scale.exp()
    torch.testing.assert_close(logits, loop, rtol=1e-4, atol=1e-4)
    nearest = min(((book[i] - book[j]) ** 2).sum() for i in range(len(book)) for j in range(len(book)) if i != j)
    per_code = torch.stack([min(((book[i] - book[j]) ** 2).sum() for j in range(len(book)) if j != i)
                            for i in range(len(book))])
    assert nearest > 0 and gen.log_scale.item() == pytest.approx(-per_code.mean().log().item(), rel=1e-4)


def test_backbone_stage_hands_its_vit_and_tokenizer_to_the_image_stage(tokenizer):
    """The HMR2.0 stand-in (PoseRegressor): the image stage starts from a COPY of its ViT and shape/camera
    head (equal values, no shared storage: the checkpoint of the image stage holds them) and shares its
    frozen tokenizer."""
    torch.manual_seed(0)
    regressor = genhmr_experiments.BackboneStage.build_model(IMG, tokenizer).eval()
    for p in regressor.backbone.parameters():
        p.data.add_(0.1)  # "trained"
    model = genhmr_experiments.build_model(IMG, regressor)
    assert model.tokenizer is tokenizer
    for part in ("backbone", "shape_camera_head"):
        mine, theirs = getattr(model, part).state_dict(), getattr(regressor, part).state_dict()
        for name, tensor in theirs.items():
            assert torch.equal(mine[name], tensor) and mine[name].data_ptr() != tensor.data_ptr(), (part, name)
    out = regressor(torch.rand(2, 3, 32, 32))
    R = out["R"]
    torch.testing.assert_close(R @ R.transpose(-1, -2), torch.eye(3).expand_as(R), atol=1e-5, rtol=0)
    assert out["betas"].shape == (2, 10) and out["cam"].shape == (2, 3)


def test_prior_stage_trains_the_transformer_on_poses_alone_and_hands_a_copy_on(tokenizer):
    """NOTE G25: TokenPrior holds the backbone stage frozen and trains, by Eq. (1) on pose tokens, only
    the parts of the masked transformer that read no image; the image stage starts from a COPY of its whole
    transformer (all of it trainable there) and its ViT from the backbone stage's, and refuses a prior of
    another architecture, naming the field."""
    torch.manual_seed(0)
    prior_stage = genhmr_experiments.PriorStage
    regressor = genhmr_experiments.BackboneStage.build_model(IMG, tokenizer).eval()
    prior = prior_stage.build_model(IMG, regressor).train()
    assert prior.tokenizer is tokenizer and not any(p.requires_grad for p in prior.parent.parameters())
    trainable = [n for n, p in prior.named_parameters() if p.requires_grad]
    reads_image = (".cross_attn.", ".norm2.", "masked_transformer.reference")
    assert trainable and all(n.startswith("masked_transformer.") and not any(r in n for r in reads_image)
                             for n in trainable)
    poses = {"smpl_pose": torch.randn(4, 24, 3, generator=seeded(3)) * 0.3}
    loss, terms = genhmr_experiments.PriorStage.training_loss(prior, poses,
                                             IMG, 0)
    loss.backward()
    assert set(terms) == {"mask", "masked_acc"} and all(
        p.grad is not None and p.grad.norm() > 0 for p in prior.parameters() if p.requires_grad)
    for p in prior.masked_transformer.parameters():
        p.data.add_(0.1)  # "trained"
    model = genhmr_experiments.build_model(IMG, prior)
    assert model.tokenizer is tokenizer and all(p.requires_grad for p in model.masked_transformer.parameters())
    mine = model.masked_transformer.state_dict()
    for name, tensor in prior.masked_transformer.state_dict().items():
        assert torch.equal(mine[name], tensor) and mine[name].data_ptr() != tensor.data_ptr(), name
    for name, tensor in regressor.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[name], tensor), name
    with pytest.raises(ValueError, match="the prior stage's num_layers=2 differs from this config's 1"):
        genhmr_experiments.build_model(IMG, prior_stage.build_model(with_fields(IMG, num_layers=2), regressor))
    # the start offsets come with the prior's transformer: an image stage set to others must not train from them
    with pytest.raises(ValueError, match="the prior stage's offset_start='detr' differs from this config's 'map'"):
        genhmr_experiments.build_model(with_fields(IMG, offset_start="map"), prior_stage.build_model(IMG, regressor))
    with pytest.raises(ValueError, match="prior stage starts from the trained backbone stage"):
        genhmr_experiments.PriorStage.build_model(IMG, tokenizer)


def test_prior_stage_overfits_one_batch(tokenizer):
    torch.manual_seed(0)
    cfg = with_fields(IMG, lr=3e-3)
    regressor = genhmr_experiments.BackboneStage.build_model(cfg, tokenizer)
    prior = genhmr_experiments.PriorStage.build_model(cfg, regressor).train()
    poses = {"smpl_pose": torch.randn(8, 24, 3, generator=seeded(4)) * 0.4}
    losses = _overfit(genhmr_experiments.PriorStage, prior, cfg, poses, 80)
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0]


def test_prior_predict_fills_the_hidden_quarter_per_sample_whatever_the_batch(tokenizer):
    """prior_predict: each pose's tokens with a quarter hidden by its index, filled by the prior's argmax (the
    visible ones kept); its accuracy is context_accuracies' with no image; every output, the poses UGS draws
    from all [MASK] included, is the same for a sample in any batch."""
    torch.manual_seed(0)
    regressor = genhmr_experiments.BackboneStage.build_model(IMG, tokenizer)
    prior = genhmr_experiments.PriorStage.build_model(IMG, regressor).eval()
    batch = {"smpl_pose": torch.randn(4, 24, 3, generator=seeded(5)) * 0.3, "smpl_shape": torch.zeros(4, 10),
             "index": torch.tensor([3, 7, 11, 12])}
    out = genhmr_experiments.PriorStage.predict(prior, batch, IMG)
    assert out["prior_verts"].shape == out["prior_generated_verts"].shape == (4, 6890, 3)
    halves = [genhmr_experiments.PriorStage.predict(prior, {k: v[rows] for k, v in batch.items()}, IMG)
              for rows in (slice(0, 1), slice(1, 4))]
    for key, value in out.items():
        torch.testing.assert_close(torch.cat([h[key] for h in halves]), value, rtol=0, atol=1e-6)
    y = tokenizer.tokenize(batch["smpl_pose"])
    hidden = genhmr_experiments.context_masks(batch["index"], y.shape[1])
    assert hidden.sum(1).tolist() == [6] * 4  # 24 tokens, 18 shown
    filled = torch.where(hidden, prior.logits(y.masked_fill(hidden, prior.num_codes)).argmax(-1), y)
    torch.testing.assert_close(out["prior_joints3d"],
                               tokenizer.body.joints(tokenizer.decode_ids(filled), batch["smpl_shape"]))
    torch.testing.assert_close(out["prior_masked_token_accuracy_75"],
                               genhmr_experiments.context_accuracies(prior, None, batch)["masked_token_accuracy_75"])


def test_backbone_stage_overfits_one_batch(tokenizer):
    torch.manual_seed(0)
    cfg = with_fields(IMG, lr=2e-3)
    regressor = genhmr_experiments.BackboneStage.build_model(cfg, tokenizer).train()
    batch = body_batch(4, seed=11)  # its joints made those of its SMPL parameters, 20 m away
    R = bodymodels.axis_angle_to_matrix(batch["smpl_pose"])
    batch["joints3d"] = tokenizer.body.joints(R, batch["smpl_shape"]) + torch.tensor([0.0, 0.0, 20.0])
    batch["joints2d"] = bodymodels.project_to_crop(batch["joints3d"], torch.zeros(4, 3)) * 32 + 16
    losses = _overfit(genhmr_experiments.BackboneStage, regressor, cfg, batch, 60)
    assert sum(losses[-5:]) / 5 < 0.3 * losses[0]
    assert all(p.grad is None for p in regressor.tokenizer.parameters())


def test_conv_stem_gives_the_patch_grid():
    cfg = with_fields(IMG, conv_stem=(8, 16, 32))
    vit = genhmr.DropPathViT(cfg.model)
    assert hasattr(vit.patch_embed, "stem") and not hasattr(vit.patch_embed, "proj")
    assert hasattr(genhmr.DropPathViT(IMG.model).patch_embed, "proj")  # HMR2.0's name
    assert vit(torch.rand(2, 3, 32, 32)).shape == (2, 32, 4, 4)


# ---------------------------------------------------------------------------------------------
# Bad input


def test_bad_inputs_get_one_clear_error(tokenizer):
    with pytest.raises(ValueError, match=r"expected an SMPL pose \(B, 24, 3\)"):
        tokenizer.tokenize(torch.zeros(2, 23, 3))
    with pytest.raises(ValueError, match="the stage 'genhmr_prior' .* train the stages before it first"):
        genhmr_experiments.build_model(IMG, None)
    with pytest.raises(ValueError, match="starts from the trained pose tokenizer"):
        genhmr_experiments.BackboneStage.build_model(IMG, None)
    with pytest.raises(ValueError, match=r"conv_stem=\(8, 16\): expected log2\(patch_size=8\)"):
        with_fields(IMG, conv_stem=(8, 16))
    regressor = genhmr_experiments.BackboneStage.build_model(IMG, tokenizer)
    with pytest.raises(ValueError, match="the backbone stage's vit_width=32 differs from this config's 64"):
        genhmr_experiments.build_model(with_fields(IMG, vit_width=64, d_model=32), regressor)
    with pytest.raises(ValueError, match="never trained"):
        genhmr_experiments.build_model(IMG, genhmr.PoseTokenizer(TOK.model))
    with pytest.raises(ValueError, match="multiple of 24"):
        genhmr.TokenizerConfig(num_tokens=50)
    with pytest.raises(ValueError, match="starts from no parent"):
        genhmr_experiments.TokenizerStage.build_model(TOK, tokenizer)


# ---------------------------------------------------------------------------------------------
# Released weights: HMR2.0's and ViTPose-H's key lists (tests/official_keys) load strictly at paper size


@pytest.mark.parametrize("name, parts, left_out", [
    ("hmr2", {"backbone", "smpl_head"}, {"discriminator", "smpl", "initialized"}),
    ("vitpose_h", {"backbone"}, {"keypoint_head"})])
def test_paper_backbone_stage_loads_the_released_key_lists_strictly(name, parts, left_out):
    with torch.device("meta"):
        tokenizer = genhmr.PoseTokenizer(TOK.model, body=torch.nn.Module())
        paper = genhmr_experiments.BACKBONE_CONFIGS["paper"]
        regressor = genhmr_experiments.PoseRegressor(paper.model, paper.regressor, tokenizer)
    state = support.official_state(name)
    mapped = genhmr.backbone_state_dicts({"state_dict": state})
    for part in parts:
        bodymodels.load_state_strict(getattr(regressor, part), mapped[part], name)  # every key and shape, both ways
    assert {part for part, sub in mapped.items() if sub} == parts
    assert {k.split(".")[0] for k in state if not k.startswith(tuple(p + "." for p in parts))} == left_out
    assert regressor.backbone(torch.empty(1, 3, 256, 192, device="meta")).shape == (1, 1280, 16, 12)
    with torch.device("meta"):  # the image stage's ViT is the same module
        vit = genhmr.DropPathViT(genhmr.PAPER.model)
    bodymodels.load_state_strict(vit, mapped["backbone"], name)


def test_load_backbone_reads_each_layout_and_names_what_does_not_fit(tmp_path):
    """HMR2.0's Lightning layout (backbone.*, smpl_head.*, extras), ViTPose's (backbone.*, keypoint_head.*) and
    vitpose_backbone.pth's (the ViT's own names) load exactly; a wrong file gets one line naming its keys."""
    torch.manual_seed(0)
    cfg = with_fields(IMG, regressor_head="hmr2", patch_padding=0)
    untrained = genhmr.PoseTokenizer(TOK.model, body=torch.nn.Module())
    source = genhmr_experiments.PoseRegressor(cfg.model, cfg.regressor, untrained)
    vit_state, head_state = source.backbone.state_dict(), source.smpl_head.state_dict()
    layouts = {"hmr2.ckpt": {"state_dict": {**{"backbone." + k: v for k, v in vit_state.items()},
                                            **{"smpl_head." + k: v for k, v in head_state.items()},
                                            "discriminator.w": torch.zeros(1), "initialized": torch.tensor(True)}},
               "vitpose.pth": {"state_dict": {**{"backbone." + k: v for k, v in vit_state.items()},
                                              "keypoint_head.final_layer.weight": torch.zeros(1)},
                               "meta": {"epoch": 210}},
               "vitpose_backbone.pth": {"state_dict": vit_state}}
    for file, checkpoint in layouts.items():
        torch.save(checkpoint, tmp_path / file)
        target = genhmr_experiments.PoseRegressor(cfg.model, cfg.regressor, untrained)
        parts = genhmr.load_backbone(target, str(tmp_path / file))
        assert parts == (["backbone", "smpl_head"] if file == "hmr2.ckpt" else ["backbone"])
        for part in parts:
            theirs = getattr(source, part).state_dict()
            assert all(torch.equal(v, theirs[k]) for k, v in getattr(target, part).state_dict().items())
    del layouts["vitpose.pth"]["state_dict"]["backbone.blocks.0.attn.proj.bias"]
    torch.save(layouts["vitpose.pth"], tmp_path / "vitpose.pth")
    with pytest.raises(ValueError, match=r"vitpose.pth \(backbone.\*\): does not fit DropPathViT \(after the key "
                                         r"mapping\): "
                                         r"missing keys \['blocks.0.attn.proj.bias'"):
        genhmr.load_backbone(genhmr.DropPathViT(cfg.model), str(tmp_path / "vitpose.pth"))
    with pytest.raises(ValueError, match=r"wrong shapes \['pos_embed \(1, 17, 32\) \(expected \(1, 5, 32\)\)'\]"):
        genhmr.load_backbone(genhmr.DropPathViT(with_fields(cfg, image_size=16).model),
                             str(tmp_path / "vitpose_backbone.pth"))
    with pytest.raises(FileNotFoundError, match=r"nope.pth: no such file \(expected ViTPose-H's or HMR2.0's"):
        genhmr.load_backbone(source, "nope.pth")
    with pytest.raises(FileNotFoundError, match="backbone checkpoint 'nope.pth' does not exist"):
        genhmr_experiments.check_inputs(with_fields(cfg, backbone_checkpoint="nope.pth"), "synthetic", "")
    torch.save({"state_dict": vit_state, "hyper_parameters": Unpicklable()}, tmp_path / "lightning.ckpt")
    with pytest.raises(ValueError, match=r"lightning.ckpt: holds pickled objects besides tensors "
                                         r"\(test_genhmr.Unpicklable\).*safe_globals\(\[test_genhmr.Unpicklable\]\)"):
        genhmr.load_backbone(source, str(tmp_path / "lightning.ckpt"))


def test_official_hmr2_vit_and_smpl_head_fixture_matches():
    """4D-Humans' own ViT + SMPL transformer head (tests/official/hmr2, reduced size): its state dict loads
    strictly through `backbone_state_dicts`; on the fixture's uint8 images / 255 our normalisation, ViT
    features and SMPL head outputs match it to relative 1e-5."""
    path = os.path.join(os.path.dirname(__file__), "official", "hmr2", "hmr2_vit_smpl_head.pt")
    fx = torch.load(path, weights_only=True)
    cfg = with_fields(genhmr_experiments.BACKBONE_CONFIGS["paper"], image_size=(64, 48), vit_width=32, vit_depth=2,
                              vit_heads=2, hmr2_head=(32, 2, 2, 16, 64))
    tokenizer = genhmr.PoseTokenizer(TOK.model, body=torch.nn.Module())
    regressor = genhmr_experiments.PoseRegressor(cfg.model, cfg.regressor, tokenizer).eval()
    parts = genhmr.backbone_state_dicts(fx)
    for part in ("backbone", "smpl_head"):
        bodymodels.load_state_strict(getattr(regressor, part), parts[part], "fixture")
    image = fx["image_uint8"].float() / 255  # our input: RGB in [0, 1]
    normalised = (image - regressor.mean_std[0]) / regressor.mean_std[1]
    captured = {}
    regressor.backbone.register_forward_hook(lambda m, i, o: captured.update(input=i[0], feature=o))
    with torch.no_grad():
        out = regressor(image)
    official = {"image_normalised": fx["image_normalised"], "feature": fx["feature"],
                "R": torch.cat([fx["global_orient"], fx["body_pose"]], 1), "betas": fx["betas"], "cam": fx["cam"]}
    ours = {"image_normalised": normalised, "feature": captured["feature"], **out}
    assert torch.equal(captured["input"], normalised)
    for key, theirs in official.items():
        error = ((ours[key] - theirs).abs().max() / theirs.abs().max()).item()
        print(f"{key}: max relative error {error:.2e}")
        assert error < 1e-5, (key, error)


# Names defined in both genhmr.py and hmr_adapter.py are the same code (docstrings and comments aside); the
# trainer's protocol names are each paper's own by design
PROTOCOL = {"build_model", "training_loss", "predict", "learning_rate", "check_inputs", "param_groups", "diagnostics",
            "parameter_table", "CONFIGS", "PAPER", "TINY", "ABLATIONS", "compute_loss"}


def _top_level(module):
    """{name: ast node} of a module's top-level functions, classes and assigned names."""
    nodes = {}
    for node in ast.parse(inspect.getsource(module)).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            nodes[node.name] = node
        elif isinstance(node, ast.Assign):
            nodes.update({t.id: node for t in node.targets if isinstance(t, ast.Name)})
    return nodes


def _without_docstrings(node):
    """ast.unparse of a definition with every docstring in it dropped (comments are not in the tree)."""
    node = ast.parse(ast.unparse(node)).body[0]  # a copy
    for n in ast.walk(node):
        body = getattr(n, "body", None)
        if (isinstance(n, (ast.FunctionDef, ast.ClassDef)) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            n.body = body[1:] or [ast.Pass()]
    return ast.unparse(node)


def test_names_in_both_paper_files_are_the_same_code():
    """Twins: every name genhmr.py and hmr_adapter.py both define (the protocol's aside) is identical source
    once docstrings are dropped; where the two must differ the names say how (`DropPathViT`, `conv_bn_stem`).
    HMR2.0's SMPL head (the backbone stage's) is HaMeR's head's decoder: both use bodymodels'."""
    import hmr_adapter
    ours, theirs = _top_level(genhmr), _top_level(hmr_adapter)
    shared = sorted(set(ours) & set(theirs) - PROTOCOL)
    assert {"Attention", "Mlp"} <= set(shared)
    assert genhmr_experiments.TransformerDecoder is hmr_adapter.TransformerDecoder
    differ = [name for name in shared if _without_docstrings(ours[name]) != _without_docstrings(theirs[name])]
    assert not differ, f"defined in both with different code: {differ}"


def test_attention_through_attend_equals_the_fused_qkv_formula_bitwise():
    """`Attention` (one implementation, `bodymodels.attend`) gives bit for bit what ViTPose's fused form gives:
    qkv.view(B, N, 3, M, C / M).permute(2, 0, 3, 1, 4), SDPA, transpose, reshape; also its gradients."""
    torch.manual_seed(0)
    attn = genhmr.Attention(32, 4)
    x = torch.randn(3, 10, 32, requires_grad=True)

    def fused(x):
        B, N, C = x.shape
        q, k, v = attn.qkv(x).view(B, N, 3, 4, C // 4).permute(2, 0, 3, 1, 4)
        return attn.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, C))
    ours, reference = attn(x), fused(x)
    assert torch.equal(ours, reference)
    g = torch.randn_like(ours)
    assert torch.equal(torch.autograd.grad(ours, x, g)[0], torch.autograd.grad(reference, x, g)[0])


class Unpicklable:
    """Stands for HMR2.0's pickled yacs config: torch.load(weights_only=True) refuses it."""


# ---------------------------------------------------------------------------------------------
# `python demo.py --model genhmr --image PATH`: a short-trained chain through train.py, a held-out render


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def trained(genhmr_chain, tmp_path_factory):
    """The session's short chain through train.py (tests/conftest.py), and the held-out render (train.py's
    evaluation set) written as an 8-bit PNG, with its sample."""
    from lab import synthetic
    out = genhmr_chain
    sample = synthetic.body_dataset("synthetic", None, "evaluation", genhmr.TINY, 0, 2)[1]
    pixels = (sample["image"] * 255).round().byte()
    png = tmp_path_factory.mktemp("genhmr_demo") / "person.png"
    Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(png)
    return types.SimpleNamespace(out=out, ckpt=out / "genhmr" / "ckpt.pt", png=png, sample=sample,
                                 image_8bit=pixels.float() / 255)


def silhouette(verts, K, hw):
    from lab import render
    return set(render.rasterize(torch.as_tensor(verts).float(), genhmr._smpl().faces_tensor,
                                torch.as_tensor(K), hw)[0].tolist())


def iou(a, b):
    return len(a & b) / max(1, len(a | b))


def test_image_command_writes_the_picture_mesh_and_arrays_of_predict(trained, tmp_path):
    """`python demo.py --model genhmr --image` in a subprocess: exit 0, one line per file; the .npz's
    crop-frame vertices are `predict`'s UGS vertices on the 8-bit image; the .obj reads back to the .npz's
    vertices and SMPL's faces; the overlay's silhouette against the render's (reported: a 2-step model is poor)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    run = subprocess.run([sys.executable, "demo.py", "--model", "genhmr", "--image", trained.png,
                          "--checkpoint", trained.ckpt, "--out", tmp_path / "demo"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    names = [f"wrote {tmp_path / 'demo' / 'person'}{ext}" for ext in (".png", ".obj", ".npz")]
    assert run.stdout.splitlines() == names
    npz = np.load(tmp_path / "demo" / "person.npz")
    for key in ("verts", "joints3d", "joints2d", "pose", "betas", "cam", "cam_t", "K", "box", "crop_matrix",
                "token_ids", "crop_verts", "crop_joints3d", "README"):
        assert key in npz, key
    assert int(npz["refined"]) == 0 and "refined_verts" not in npz
    model, cfg = demo.load_trained(trained.ckpt, demo.GENHMR_STAGES)
    cfg = with_fields(cfg, refine_iterations=0)
    batch = {"image": trained.image_8bit[None], "index": torch.zeros(1),
             **{k: trained.sample[k][None] for k in ("joints2d", "joints3d", "K")}}
    ours = genhmr_experiments.predict(model, batch, cfg)
    assert torch.equal(torch.as_tensor(npz["token_ids"]), ours["ids"][0])
    torch.testing.assert_close(torch.as_tensor(npz["crop_verts"]), ours["verts"][0], atol=1e-5, rtol=0)
    verts, faces = demo.read_obj(tmp_path / "demo" / "person.obj")
    torch.testing.assert_close(verts, torch.as_tensor(npz["verts"]).double(), atol=1e-6, rtol=0)
    assert torch.equal(faces, genhmr._smpl().faces_tensor.long())
    hw = trained.image_8bit.shape[-2:]
    overlap = iou(silhouette(npz["verts"], npz["K"], hw), silhouette(trained.sample["verts"], trained.sample["K"], hw))
    print(f"short-trained GenHMR: overlay silhouette IoU {overlap:.3f} with the render's")


def test_ground_truth_camera_through_the_conversion_covers_the_render(trained):
    """Placement with ground-truth inputs: the render's crop-camera translation through
    `demo.person_crop` and `crop_translation_to_full` puts its mesh on its silhouette, the render
    alone (the crop is the identity, K the render's) and pasted into a larger photograph with --box."""
    s = trained.sample
    root_relative = s["verts"] - s["cam_t"]
    H, W = s["image"].shape[-2:]
    focal = genhmr.FOCAL_LENGTH / genhmr.CROP_SIZE * H  # the crop camera's, in crop pixels

    def placed(image_hw, box):
        _, A = demo.person_crop(image_hw, (H, W), box)
        t = crop_translation_to_full(s["cam_t"].double(), A, (H, W), image_hw[::-1], focal)
        return A, root_relative + t.float(), full_image_intrinsics(image_hw[::-1])

    truth = silhouette(s["verts"], s["K"], (H, W))
    A, verts, K = placed((H, W), None)
    assert torch.equal(A, torch.eye(3, dtype=torch.float64))
    torch.testing.assert_close(K, s["K"])
    whole = iou(silhouette(verts, K, (H, W)), truth)
    photo, (x0, y0) = torch.zeros(3, 150, 230), (140, 40)
    photo[:, y0:y0 + H, x0:x0 + W] = s["image"]
    A, verts, K = placed((150, 230), (x0, y0, x0 + W, y0 + H))
    assert (warp_image(photo, A, (H, W)) - s["image"]).abs().max() < 1e-4  # float32 grid
    pasted = iou(silhouette(verts, K, (150, 230)), {(p // W + y0) * 230 + p % W + x0 for p in truth})
    print(f"ground-truth placement IoU: whole render {whole:.3f}, pasted into 230 x 150 {pasted:.3f}")
    assert whole > 0.99 and pasted > 0.95


# COCO-17 keypoint (open-mmlab/mmpose configs/_base_/datasets/coco.py ids) -> the SMPL joint (vchoutas/smplx
# joint_names.py SMPL_JOINT_NAMES) at the same body point, typed here so the file does not come from demo's table
COCO_AT_SMPL = {5: 16, 6: 17,  # left_shoulder, right_shoulder
                7: 18, 8: 19,  # left_elbow, right_elbow
                9: 20, 10: 21,  # left_wrist, right_wrist
                11: 1, 12: 2,  # left_hip, right_hip
                13: 4, 14: 5,  # left_knee, right_knee
                15: 7, 16: 8}  # left_ankle, right_ankle


def test_keypoints_file_runs_the_papers_refinement(trained, tmp_path, capsys):
    """--keypoints (a COCO file of the render's projected joints, face points unlabelled): the box comes
    from them, Eqs. 2-4 run (refined_* keys), and the 2D error to the keypoints falls; the errors demo reports
    are those at the SMPL joints of the keypoints' names (a left/right swap in demo's matching changes them)."""
    joints2d = trained.sample["joints2d"]
    kp = np.zeros((17, 3))
    for coco, smpl in COCO_AT_SMPL.items():
        kp[coco] = [*joints2d[smpl].tolist(), 2]
    path = tmp_path / "keypoints.json"
    path.write_text(json.dumps({"annotations": [{"keypoints": kp.flatten().tolist()}]}))
    code, out, err = support.run_demo("genhmr", ["--image", trained.png, "--checkpoint", trained.ckpt,
                                                 "--out", tmp_path / "demo", "--keypoints", path], capsys)
    assert code == 0 and len(out) == 3, err
    npz = np.load(tmp_path / "demo" / "person.npz")
    assert int(npz["refined"]) == 1 and {"refined_verts", "refined_pose", "refined_joints2d", "keypoints"} <= set(npz)
    print(f"2D error to the keypoints: {float(npz['reproj_error_px']):.2f} px -> "
          f"{float(npz['refined_reproj_error_px']):.2f} px after refinement")
    assert npz["refined_reproj_error_px"] < npz["reproj_error_px"]

    # the errors demo reports are those of the joints of the keypoints' names (its matching is COCO_AT_SMPL's)
    for prefix in ("", "refined_"):
        error = np.mean([np.linalg.norm(npz[f"{prefix}joints2d"][smpl] - kp[coco, :2])
                         for coco, smpl in COCO_AT_SMPL.items()])
        assert error == pytest.approx(float(npz[f"{prefix}reproj_error_px"]), rel=1e-4), \
            f"{prefix}reproj_error_px {float(npz[f'{prefix}reproj_error_px']):.3f} px is not the error at the " \
            f"joints named as the keypoints ({error:.3f} px): demo matches COCO keypoints to other SMPL joints"
    torch.testing.assert_close(demo.read_obj(tmp_path / "demo" / "person.obj")[0],
                               torch.as_tensor(npz["refined_verts"]).double(), atol=1e-6, rtol=0)


def bad_input(name, trained, tmp):
    """argv pieces for one kind of bad input, and the words its one error line must hold."""
    ckpts = tmp / "ckpts"
    for stage in ("genhmr_tokenizer", "genhmr_backbone", "genhmr_prior"):  # the parents, beside the bad checkpoints
        (ckpts / stage).mkdir(parents=True, exist_ok=True)
        shutil.copy(trained.out / stage / "ckpt.pt", ckpts / stage / "ckpt.pt")
    (ckpts / "genhmr").mkdir(exist_ok=True)
    if name == "missing image":
        return ["--image", tmp / "nobody.png"], "no such file"
    if name == "not an image":
        (tmp / "notes.png").write_text("not a picture")
        return ["--image", tmp / "notes.png"], "not a readable image"
    if name == "box outside the image":
        return ["--box", 500, 500, 600, 600], "outside the image"
    if name == "empty box":
        return ["--box", 10, 10, 10, 30], "empty"
    if name == "tokenizer checkpoint":
        return ["--checkpoint", trained.out / "genhmr_tokenizer" / "ckpt.pt"], "holds a 'genhmr_tokenizer' model"
    if name == "another paper's checkpoint":
        torch.save({"model_name": "hmr_adapter", "model": {}, "config": {}}, ckpts / "genhmr" / "ckpt.pt")
        return ["--checkpoint", ckpts / "genhmr" / "ckpt.pt"], "holds a 'hmr_adapter' model"
    blob = (trained.out / "genhmr" / "ckpt.pt").read_bytes()
    (ckpts / "genhmr" / "ckpt.pt").write_bytes(blob[:len(blob) // 2])
    return ["--checkpoint", ckpts / "genhmr" / "ckpt.pt"], "not a readable train.py checkpoint"


@pytest.mark.parametrize("name", ["missing image", "not an image", "box outside the image", "empty box",
                                  "tokenizer checkpoint", "another paper's checkpoint", "truncated checkpoint"])
def test_bad_input_is_one_line_exit_2_and_no_file(trained, tmp_path, capsys, name):
    args, words = bad_input(name, trained, tmp_path)
    argv = ["--image", trained.png, "--checkpoint", trained.ckpt, "--out", tmp_path / "demo"] + args
    code, out, err = support.run_demo("genhmr", argv, capsys)
    assert code == 2 and out == [] and len(err) == 1 and words in err[0], err
    assert err[0].startswith("demo.py: ")
    assert not (tmp_path / "demo").exists()


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16"])
def test_grayscale_rgba_and_16_bit_images_are_read(trained, tmp_path, capsys, mode):
    """Any image mode runs; RGBA (alpha dropped) gives `predict`'s vertices on the RGB image."""
    rgb = Image.open(trained.png)
    if mode == "I;16":
        image = Image.fromarray((np.asarray(rgb.convert("L"), dtype=np.uint16) * 257))
    else:
        image = rgb.convert(mode)
    image.save(tmp_path / "person.png")
    code, out, err = support.run_demo("genhmr", ["--image", tmp_path / "person.png", "--checkpoint", trained.ckpt,
                               "--out", tmp_path / "demo"], capsys)
    assert code == 0 and len(out) == 3, err
    if mode == "RGBA":
        model, cfg = demo.load_trained(trained.ckpt, demo.GENHMR_STAGES)
        ugs = genhmr.uncertainty_guided_sampling(model, trained.image_8bit[None], cfg.inference.ugs_iterations,
                                                 choice_temperature=cfg.inference.choice_temperature,
                                                 seeds=torch.zeros(1))
        verts = genhmr.mesh_outputs(model.tokenizer, model.tokenizer.decode_ids(ugs["ids"]), ugs["betas"],
                                    ugs["cam"], cfg.model.image_hw)["verts"][0]
        torch.testing.assert_close(torch.as_tensor(np.load(tmp_path / "demo" / "person.npz")["crop_verts"]), verts,
                                   atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------
# Hand-computed values: UGS on stub logits, swap_visible, training_loss, smpl_losses, the tokenizer loss,
# the refinement objective (each expected value computed here from the definitions, not by the code under test)


class _LogitsStub:
    """A stand-in generator for `sample_from_features`: call t (1-based) returns table[t - 1] (B, L, K) (a callable
    gets (ids, levels, t)); records the ids it was given."""

    def __init__(self, num_tokens, num_codes, table):
        self.num_tokens, self.num_codes, self.table, self.seen = num_tokens, num_codes, table, []

    def logits(self, ids, levels):
        self.seen.append(ids.clone())
        t = len(self.seen)
        return self.table(ids, levels, t) if callable(self.table) else self.table[t - 1]


def _rows(strengths, codes, K):
    """Logit rows: strength a at code c, 0 elsewhere (the chosen token's probability e^a / (e^a + K - 1))."""
    return torch.stack([a * F.one_hot(torch.tensor(c), K).float() for a, c in zip(strengths, codes)])


def _ugs_by_hand(logits_fn, B, L, K, T, c=0.0, seeds=None):
    """Uncertainty-guided sampling written from its definition, per sample in plain Python: sample the argmax at
    every [MASK]; keep fixed tokens; re-mask the n_t = ceil(gamma(t/T) L) still-masked tokens of lowest score
    (score = p of the argmax, or log p + c (1 - t/T) g), ties to the lower index. -> (ids, masks, inputs)."""
    ids = [[K] * L for _ in range(B)]
    masked = [set(range(L)) for _ in range(B)]
    masks, inputs = [], []
    for t in range(1, T + 1):
        n = math.ceil((1 + math.cos(math.pi * t / T)) / 2 * L - 1e-9)
        inputs.append(torch.tensor(ids))
        probs = logits_fn(torch.tensor(ids), t).float().softmax(-1)
        g = genhmr.gumbel_noise((B, L), seeds, t) if c > 0 and n else None
        for b in range(B):
            score = {}
            for i in range(L):
                p = probs[b, i].tolist()
                best = max(range(K), key=lambda k: (p[k], -k))  # argmax, first index on ties
                if i in masked[b]:
                    ids[b][i] = best
                score[i] = probs[b, i, best]
                if g is not None:
                    score[i] = (score[i].clamp_min(1e-30).log() + c * (1 - t / T) * g[b, i]).item()
                else:
                    score[i] = score[i].item()
            masked[b] = set(sorted(masked[b], key=lambda i: (score[i], i))[:n])
            for i in masked[b]:
                ids[b][i] = K
        masks.append(torch.tensor([[i in masked[b] for i in range(L)] for b in range(B)]))
    return torch.tensor(ids), masks, inputs


def test_ugs_remasks_the_least_confident_still_masked_tokens_ties_to_the_lower_index():
    """UGS (c = 0), known logits: masks, generator inputs and ids by hand; least confident masked first, ties low."""
    # each history mask is the n_t least-confident STILL-MASKED tokens (fixed ones never re-masked, even when least
    # confident), exact ties broken toward the lower index; confidence = p of the argmax; the final ids by hand
    B, L, K, T = 2, 8, 4, 3
    assert genhmr.remask_counts(L, T) == [6, 2, 0]
    # sample 0, t = 1: strengths 2 (code 3) at 0, 2, 6 tie across the cut of 6: 5, 1, 3, 7, 0, 2 re-masked, 6, 4 fixed
    s0 = [_rows([2, 1, 2, 1, 5, 0.5, 2, 1], [3, 1, 3, 1, 2, 0, 3, 1], K),
          # t = 2: the fixed 4 and 6 are the least confident (uniform rows) but stay fixed; among the masked 2 (0.2)
          # then the tie 1, 3, 5 (strength 1, code 2) -> 1: masked {1, 2}
          _rows([4, 1, 0.2, 1, 0, 1, 0, 3], [0, 2, 1, 2, 0, 2, 0, 0], K),
          _rows([1] * 8, [3] * 8, K)]
    # sample 1: every row identical (one exact tie): the lowest indices are re-masked
    s1 = [_rows([1.5] * 8, [2] * 8, K), _rows([1.5] * 8, [1] * 8, K), _rows([1.5] * 8, [3] * 8, K)]
    table = [torch.stack([a, b]) for a, b in zip(s0, s1)]
    stub = _LogitsStub(L, K, table)
    ids, history = genhmr.sample_from_features(stub, [torch.zeros(B, 1)], T, schedule="cosine", choice_temperature=0.0)
    expected_masks = [[{0, 1, 2, 3, 5, 7}, {0, 1, 2, 3, 4, 5}], [{1, 2}, {0, 1}], [set(), set()]]
    for t, ((mask, confidence, _), sets) in enumerate(zip(history, expected_masks), 1):
        assert [set(m.nonzero()[:, 0].tolist()) for m in mask] == sets, f"t={t}"
        p = table[t - 1].softmax(-1).max(-1).values  # the probability of each position's argmax
        torch.testing.assert_close(confidence, p, rtol=0, atol=0)
    assert torch.equal(ids, torch.tensor([[0, 3, 3, 2, 2, 2, 3, 0], [3, 3, 1, 1, 1, 1, 2, 2]]))
    M = K  # [MASK] id: what the generator is given at each call
    assert torch.equal(stub.seen[0], torch.full((B, L), M))
    assert torch.equal(stub.seen[1], torch.tensor([[M, M, M, M, 2, M, 3, M], [M, M, M, M, M, M, 2, 2]]))
    assert torch.equal(stub.seen[2], torch.tensor([[0, M, M, 2, 2, 2, 3, 0], [M, M, 1, 1, 1, 1, 2, 2]]))
    assert not history[-1][0].any() and len(history) == T
    for t in range(1, T):  # each iteration's ids: what the next call is given, before [MASK] is put back
        assert torch.equal(history[t - 1][2].masked_fill(history[t - 1][0], M), stub.seen[t])
    assert torch.equal(history[-1][2], ids)


@given(st.integers(1, 40), st.integers(1, 40), st.integers(1, 6))
@settings(max_examples=40, deadline=None)
@example(8, 6, 4)  # TINY's 1x level
@example(16, 12, 4)  # the paper's 1x level: Deformable DETR's own start
def test_map_offsets_start_each_heads_first_point_inside_any_map(H, W, points):
    """NOTE G28: with offset_start "map", the first point of every head, seen from any reference point the reference
    points can start at ([0.1, 0.9] of the image), lies inside the H x W map; from 10 pixels a side up the offsets
    are Deformable DETR's own."""
    attn = genhmr.MSDeformAttn(16, 8, 2, points, level_sizes=((H, W), (2 * H, 2 * W)))
    detr = genhmr.MSDeformAttn(16, 8, 2, points)
    offsets = attn.sampling_offsets.bias.view(8, 2, points, 2)  # (M, levels, P, 2) pixels of each level
    sizes = torch.tensor([[W, H], [2 * W, 2 * H]], dtype=torch.float32)[None, :, None]
    first = offsets[:, :, 0] / sizes[:, :, 0]  # (M, levels, 2) fractions of the map
    for corner in (0.1, 0.9):
        loc = corner + first
        assert ((loc >= -1e-6) & (loc <= 1 + 1e-6)).all()
    for level, side in enumerate((min(H, W), 2 * min(H, W))):
        same = torch.equal(offsets[:, level], detr.sampling_offsets.bias.view(8, 2, points, 2)[:, level])
        assert same == (side >= 10)


def test_ugs_commits_scores_only_the_tokens_fixed_at_each_iteration():
    """Appendix D's `ugs_commits`: at t, the precision of the tokens masked before t and fixed after it against the
    true pose's tokens (NaN without a pose label), and the pose decoded from every position's token at t."""
    y = torch.tensor([[1, 2, 3, 0], [1, 2, 3, 0]])  # the true pose's tokens

    class Tokenizer:
        tokenize = staticmethod(lambda pose: y)
        decode_ids = staticmethod(lambda ids: ids.float())
        body = type("Body", (), {"joints": staticmethod(lambda R, betas: R[..., None].expand(-1, -1, 3))})

    history = [(torch.tensor([[True, True, False, False]] * 2), None, torch.tensor([[0, 2, 3, 1]] * 2)),
               (torch.zeros(2, 4, dtype=torch.bool), None, torch.tensor([[1, 2, 3, 1]] * 2))]
    batch = {"smpl_pose": torch.zeros(2, 24, 3), "has_smpl_pose": torch.tensor([1.0, 0.0])}
    out = genhmr_experiments.ugs_commits(Tokenizer(), history, torch.zeros(2, 10), batch)
    assert out["ugs_t1_commit_precision"][0] == 0.5  # fixed at t = 1: positions 2 (right) and 3 (wrong)
    assert out["ugs_t2_commit_precision"][0] == 1.0  # fixed at t = 2: positions 0 and 1, both right
    assert out["ugs_t1_commit_precision"][1].isnan() and out["ugs_t2_commit_precision"][1].isnan()
    assert torch.equal(out["ugs_t2_joints3d"][0, :, 0], torch.tensor([1.0, 2.0, 3.0, 1.0]))


@pytest.mark.parametrize("T", [1, 4, 7])
def test_ugs_matches_a_hand_written_reference_on_tie_heavy_logits(T):
    """UGS (c = 0) on tie-heavy integer logits equals the plain-Python reference `_ugs_by_hand` at every step."""
    B, L, K = 3, 10, 3
    table = torch.randint(0, 3, (T, B, L, K), generator=seeded(T)).float()
    stub = _LogitsStub(L, K, table)
    ids, history = genhmr.sample_from_features(stub, [torch.zeros(B, 1)], T, schedule="cosine", choice_temperature=0.0)
    ref_ids, ref_masks, ref_inputs = _ugs_by_hand(lambda ids, t: table[t - 1], B, L, K, T)
    assert len(history) == len(stub.seen) == T and all(torch.equal(a, b) for (a, *_), b in zip(history, ref_masks))
    assert all(torch.equal(a, b) for a, b in zip(stub.seen, ref_inputs)) and torch.equal(ids, ref_ids)


def test_ugs_with_choice_temperature_is_per_sample_seeded_and_ranks_log_p_plus_gumbel():
    """UGS, c > 0: per-sample seeded (alone = in a batch); masks rank log p + c (1 - t/T) gumbel_noise(seeds, t)."""
    B, L, K, T, c = 3, 12, 30, 4, 2.0  # log p and the noise of comparable spread: neither alone gives these masks
    base = torch.randn(B, T, L, K, generator=seeded(21)) * 1.5

    def generator_logits(ids, levels, t):  # each row from its own sample's map and its own context only
        return levels[0][:, t - 1] + 0.5 * F.one_hot(ids, K + 1)[..., :K].float()

    seeds = torch.tensor([3, 7, 11])
    run = lambda rows, temp: genhmr.sample_from_features(_LogitsStub(L, K, generator_logits), [base[rows]], T,
                                                         schedule="cosine", choice_temperature=temp, seeds=seeds[rows])
    ids, history = run(slice(None), c)
    for b in range(B):
        alone_ids, alone_history = run(slice(b, b + 1), c)
        assert torch.equal(alone_ids[0], ids[b])
        assert all(torch.equal(a[0], h[b]) for (a, *_), (h, *_) in zip(alone_history, history))
    ref_ids, ref_masks, _ = _ugs_by_hand(lambda i, t: generator_logits(i, [base], t), B, L, K, T, c=c, seeds=seeds)
    assert len(history) == T and all(torch.equal(m, r) for (m, *_), r in zip(history, ref_masks))
    assert torch.equal(ids, ref_ids)
    _, plain = run(slice(None), 0.0)
    assert any(not torch.equal(m, p) for (m, *_), (p, *_) in zip(history, plain))  # the test sees the noise


def test_swap_visible_by_hand():
    """swap_visible: pkeep 1 no-op; pkeep 0 = the seeded randint draw at visible tokens; 0.5 changes 0.5 (1 - 1/K)."""
    K = 4
    ids = torch.randint(0, K, (6, 9), generator=seeded(30))
    masked = torch.rand(6, 9, generator=seeded(31)) < 0.3
    y_m = torch.where(masked, K, ids)
    assert torch.equal(genhmr.swap_visible(y_m, masked, K, 1.0, generator=seeded(32)), y_m)
    out = genhmr.swap_visible(y_m, masked, K, 0.0, generator=seeded(33))
    g = seeded(33)
    torch.rand(y_m.shape, generator=g)  # the keep draw comes first
    random_ids = torch.randint(K, y_m.shape, generator=g)
    assert torch.equal(out[~masked], random_ids[~masked]) and torch.equal(out[masked], y_m[masked])
    ids = torch.randint(0, K, (200, 100), generator=seeded(34))
    masked = torch.rand(200, 100, generator=seeded(35)) < 0.25
    y_m = torch.where(masked, K, ids)
    out = genhmr.swap_visible(y_m, masked, K, 0.5, generator=seeded(36))
    assert torch.equal(out[masked], y_m[masked])
    n = int((~masked).sum())
    changed = int((out != y_m)[~masked].sum())
    p = 0.5 * (1 - 1 / K)  # swapped w.p. 1/2, and a uniform draw equals the old code w.p. 1/K
    assert abs(changed - n * p) < 5 * math.sqrt(n * p * (1 - p)), (changed / n, p)


class _FixedGenHMR:
    """A stand-in image-stage model for `training_loss`: the real tokenizer and `GenHMR.forward`, fixed logits /
    betas / cam."""

    def __init__(self, tokenizer, logits, betas, cam):
        self.tokenizer, self.num_codes = tokenizer, tokenizer.cfg.codebook_size
        self.seen = []
        self.fixed_logits, self.betas, self.cam = logits, betas, cam

    def encode_image(self, images):
        return None, self.betas, self.cam

    def logits(self, ids, levels):
        self.seen.append(ids.clone())
        return self.fixed_logits

    def __call__(self, images, ids, temperature=1.0, true_ids=None):  # NOTE G13's variant when given true_ids
        if true_ids is None:
            return genhmr.GenHMR.forward(self, images, ids, temperature)
        return genhmr_experiments.VisibleTruthGenHMR.forward(self, images, ids, temperature, true_ids)


@pytest.mark.parametrize("ce_on, gumbel_positions", [("all", "all"), ("masked", "masked")])
def test_training_loss_mask_and_pose_terms_by_hand(tokenizer, monkeypatch, ce_on, gumbel_positions):
    """training_loss, draws fixed: L_mask (CE over all / masked) and L_theta by hand, unlabelled rows 0 in the mean."""
    # masks, swaps, logits and Gumbel codes fixed; also checked: the arguments handed along, tau and the step,
    # masked_acc, and the total as the weighted sum of the terms
    cfg = with_fields(IMG, ce_on=ce_on, gumbel_positions=gumbel_positions, loss_batch=3, pkeep=0.5,
                              mask_tau_max=0.7, max_steps=100, anneal_fraction=0.5)
    B, L, K = 3, tokenizer.cfg.num_tokens, tokenizer.cfg.codebook_size
    batch = body_batch(B, seed=40)
    batch["has_smpl_pose"] = torch.tensor([1.0, 0.0, 1.0])
    y_gt = tokenizer.tokenize(batch["smpl_pose"])
    mask = torch.zeros(B, L, dtype=torch.bool)
    mask[0, :5], mask[1, 10:20], mask[2, [3, 7, 23]] = True, True, True
    swapped = torch.where(mask, K, y_gt)
    swapped[0, 6], swapped[2, 0] = (y_gt[0, 6] + 1) % K, (y_gt[2, 0] + 5) % K
    logits = torch.randn(B, L, K, generator=seeded(41)) * 3
    logits[0, 1] = F.one_hot(y_gt[0, 1], K) * 20.0  # one masked position predicted right for sure
    gumbel_ids = torch.randint(0, K, (B, L), generator=seeded(42))
    calls = {}

    def fake_masking(ids, mask_id, mask_tau_max=1.0):
        calls["masking"] = (ids.clone(), mask_id, mask_tau_max)
        return torch.where(mask, mask_id, ids), mask

    def fake_swap(ids, masked, num_codes, pkeep, generator=None):
        calls["swap"] = (ids.clone(), masked.clone(), num_codes, pkeep)
        return swapped

    def fake_gumbel(l, temperature, noise=None):
        calls["gumbel"] = (l, temperature)
        return F.one_hot(gumbel_ids, K).float()
    monkeypatch.setattr(genhmr, "random_masking", fake_masking)
    monkeypatch.setattr(genhmr, "swap_visible", fake_swap)
    monkeypatch.setattr(genhmr, "gumbel_softmax_st", fake_gumbel)
    betas, cam = torch.randn(B, 10, generator=seeded(43)) * 0.3, torch.tensor([[0.9, 0.01, -0.02]] * B)
    stub = _FixedGenHMR(tokenizer, logits, betas, cam)
    loss, terms = genhmr_experiments.training_loss(stub, batch, cfg, 25)
    # the pieces handed along
    assert torch.equal(calls["masking"][0], y_gt) and calls["masking"][1:] == (K, 0.7)
    assert torch.equal(calls["swap"][0], torch.where(mask, K, y_gt)) and torch.equal(calls["swap"][1], mask)
    assert calls["swap"][2:] == (K, 0.5) and torch.equal(stub.seen[0], swapped)
    assert calls["gumbel"][1] == pytest.approx(0.01 + 0.5 * 0.99 * (1 + math.cos(math.pi * 25 / 50)))  # 0.505
    assert terms["temperature"].item() == pytest.approx(0.505)  # the trainer's step, not one the model keeps
    # Eq. (1) by hand: -log softmax at the true code
    l64 = logits.double()
    ce = torch.log(torch.exp(l64).sum(-1)) - l64.gather(-1, y_gt[..., None])[..., 0]  # (B, L)
    rows = [sum(ce[b, i] for i in range(L)) / L if ce_on == "all"
            else sum(ce[b, i] for i in range(L) if mask[b, i]) / int(mask[b].sum()) for b in range(B)]
    expected_mask = (rows[0] * 1 + rows[1] * 0 + rows[2] * 1) / 3  # row 1 has no pose label: 0, still counted
    assert terms["mask"].item() == pytest.approx(float(expected_mask), rel=1e-5)
    # L_theta by hand: R from the Gumbel codes (GT codes at visible positions when gumbel_positions = masked)
    codes = torch.where(mask, gumbel_ids, y_gt) if gumbel_positions == "masked" else gumbel_ids
    with torch.no_grad():
        R = tokenizer.decode(tokenizer.quantizer.codebook[codes]).double()
    R_gt = bodymodels.axis_angle_to_matrix(batch["smpl_pose"].double())
    per_sample = [float(((R[b] - R_gt[b]) ** 2).sum()) * float(batch["has_smpl_pose"][b]) for b in range(B)]
    assert terms["pose"].item() == pytest.approx(3 * sum(per_sample) / B, rel=1e-4)
    assert per_sample[1] == 0 and min(per_sample[0], per_sample[2]) > 0
    hits = [sum(int(logits[b, i].argmax() == y_gt[b, i]) for i in range(L) if mask[b, i]) / int(mask[b].sum())
            for b in range(B)]
    assert hits[0] > 0 and terms["masked_acc"].item() == pytest.approx(sum(hits) / B, rel=1e-6)
    m = cfg.model
    total = (m.w_mask * terms["mask"] + m.w_pose * terms["pose"] + m.w_betas * terms["betas"]
             + m.w_3d * terms["joints3d"] + m.w_2d * terms["joints2d"])
    assert loss.item() == pytest.approx(total.item(), rel=1e-6)


def _rot_z(angle):
    """R_z(angle) (..., 3, 3) written out."""
    c, s, z, o = angle.cos(), angle.sin(), torch.zeros_like(angle), torch.ones_like(angle)
    return torch.stack([torch.stack([c, -s, z], -1), torch.stack([s, c, z], -1), torch.stack([z, z, o], -1)], -2)


class _FixedJoints:
    """A stand-in SMPL layer for `smpl_losses`: joints(R, betas) returns fixed joints and records its inputs."""

    def __init__(self, joints):
        self.value, self.seen = joints, []

    def joints(self, R, betas):
        self.seen.append((R, betas))
        return self.value


def test_smpl_losses_by_hand():
    """smpl_losses: each term by hand (closed-form L_theta, projection, H != W), weights, x loss_batch, sample mean."""
    g = seeded(50)
    B, H, W, f, S = 2, 40, 30, 5000.0, 256.0
    a, b = torch.rand(B, 24, generator=g) * 4 - 2, torch.rand(B, 24, generator=g) * 4 - 2
    joints = torch.randn(B, 24, 3, generator=g) * 0.3 + torch.tensor([0.0, 0.0, 1.0])
    pose_about_z = torch.stack([torch.zeros_like(a), torch.zeros_like(a), a], -1)
    batch = {"image": torch.zeros(B, 3, H, W), "smpl_pose": pose_about_z,
             "smpl_shape": torch.randn(B, 10, generator=g), "joints3d": torch.randn(B, 24, 3, generator=g) + 5,
             "joints2d": torch.rand(B, 24, 2, generator=g) * 40}
    betas = torch.randn(B, 10, generator=g)
    cam = torch.tensor([[0.8, 0.1, -0.05], [1.2, -0.2, 0.03]])
    body = _FixedJoints(joints)
    cfg = with_fields(IMG, loss_batch=5).model
    R = _rot_z(b)
    # by hand, float64, per sample
    pose = [sum(4 * (1 - math.cos(a[n, j] - b[n, j])) for j in range(24)) for n in range(B)]
    shape = [float(((betas[n].double() - batch["smpl_shape"][n].double()) ** 2).sum()) for n in range(B)]
    J, G = joints.double(), batch["joints3d"].double()
    j3d = [[float(((J[n, j] - J[n, 0]) - (G[n, j] - G[n, 0])).abs().sum()) for j in range(24)] for n in range(B)]
    j2d = []
    for n in range(B):
        s, tx, ty = cam[n].double().tolist()
        tz = 2 * f / (S * s)
        row = []
        for j in range(24):
            x, y, z = J[n, j].tolist()
            u, v = f / S * (x + tx) / (z + tz), f / S * (y + ty) / (z + tz)
            px, py = batch["joints2d"][n, j].double().tolist()
            row.append(abs(u - (px - W / 2) / H) + abs(v - (py - H / 2) / H))
        j2d.append(row)
    pred = genhmr.smpl_prediction(body, R, betas, cam)
    targets = dict(batch, joints2d=genhmr.normalise_joints2d(batch["joints2d"], (H, W)))
    out = genhmr.smpl_losses(pred, targets, cfg)
    assert body.seen[0][0] is R and body.seen[0][1] is betas
    expected = {"pose": pose, "betas": shape, "joints3d": [sum(r) for r in j3d], "joints2d": [sum(r) for r in j2d]}
    for name, per_sample in expected.items():
        assert float(out[name]) == pytest.approx(5 * sum(per_sample) / B, rel=1e-5), name
    # with the optional labels: has_smpl_pose / has_smpl_shape per sample, per-joint weights of the L1 terms
    w2d, w3d = (torch.rand(B, 24, generator=g).round() * 0.5 + 0.25 for _ in range(2))
    batch.update(has_smpl_pose=torch.tensor([0.0, 1.0]), has_smpl_shape=torch.tensor([1.0, 0.0]),
                 joints2d_weight=w2d, joints3d_weight=w3d)
    targets = dict(batch, joints2d=genhmr.normalise_joints2d(batch["joints2d"], (H, W)))
    out = genhmr.smpl_losses(pred, targets, cfg)
    expected = {"pose": [0, pose[1]], "betas": [shape[0], 0],
                "joints3d": [sum(w * e for w, e in zip(w3d[n].tolist(), j3d[n])) for n in range(B)],
                "joints2d": [sum(w * e for w, e in zip(w2d[n].tolist(), j2d[n])) for n in range(B)]}
    for name, per_sample in expected.items():
        assert float(out[name]) == pytest.approx(5 * sum(per_sample) / B, rel=1e-5), name


class _FixedTokenizerModel:
    """A stand-in pose tokenizer for the tokenizer stage's training_loss: fixed R, commitment and perplexity, the
    real `PoseTokenizer.compute_loss`; its `body` maps R linearly to 'vertices' and 'joints' (B, 5, 3), (B, 4, 3)
    and records its calls."""
    compute_loss = genhmr.PoseTokenizer.compute_loss

    def __init__(self, R, commit, perplexity, Mv, Mj, cfg):
        self.out, self.seen, self.cfg = {"R": R, "commit": commit, "perplexity": perplexity}, [], cfg
        self.Mv, self.Mj, self.body_calls = Mv, Mj, []
        self.body = self._body

    def __call__(self, pose):
        self.seen.append(pose.clone())
        return self.out

    def _body(self, R, betas, vertex_count=0):
        self.body_calls.append((R, betas, vertex_count))
        flat = R.flatten(1)
        return (flat @ self.Mv).view(len(R), 5, 3), (flat @ self.Mj).view(len(R), 4, 3)


def test_tokenizer_training_loss_by_hand():
    """tokenizer_training_loss: Eq. Lvq by hand from fixed model outputs and a linear body; the augmentation by hand."""
    g = seeded(60)
    B = 3
    angles = torch.rand(B, 24, generator=g) * 4 - 2
    pose = torch.stack([torch.zeros_like(angles), torch.zeros_like(angles), angles], -1)
    R = _rot_z(torch.rand(B, 24, generator=g) * 4 - 2)
    Mv, Mj = torch.randn(24 * 9, 15, generator=g), torch.randn(24 * 9, 12, generator=g)
    cfg = with_fields(TOK, w_re=2.0, w_pose=0.7, w_verts=0.5, w_joints=0.3, w_commit=0.02, loss_vertices=64)
    model = _FixedTokenizerModel(R, torch.tensor(0.7), torch.tensor(12.0), Mv, Mj, cfg.model)
    loss, terms = genhmr_experiments.TokenizerStage.training_loss(model, {"smpl_pose": pose}, cfg, 0)
    R_gt = _rot_z(angles.double())
    pose_term = (R.double() - R_gt).abs().sum() / (B * 24 * 9)
    dv = (R.double().flatten(1) - R_gt.flatten(1)) @ Mv.double()
    dj = (R.double().flatten(1) - R_gt.flatten(1)) @ Mj.double()
    verts_term, joints_term = dv.abs().sum() / (B * 15), dj.abs().sum() / (B * 12)
    for name, value in (("pose", pose_term), ("verts", verts_term), ("joints", joints_term), ("commit", 0.7),
                        ("perplexity", 12.0)):
        assert float(terms[name]) == pytest.approx(float(value), rel=1e-5), name
    expected = 2.0 * (0.7 * pose_term + 0.5 * verts_term + 0.3 * joints_term) + 0.02 * 0.7
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert torch.equal(model.seen[0], pose)  # no augmentation at 0 degrees
    for R_in, betas, count in model.body_calls:
        assert torch.equal(betas, torch.zeros(B, 10)) and count == 64
    torch.testing.assert_close(model.body_calls[0][0].double(), R_gt, rtol=0, atol=1e-6)
    assert model.body_calls[1][0] is R
    # augmentation: yaw about y, roll about z, pre-multiplying the root
    aug = with_fields(cfg, aug_yaw_deg=40.0, aug_roll_deg=10.0)
    torch.manual_seed(61)
    u = torch.rand(B, 2) * 2 - 1
    torch.manual_seed(61)
    genhmr_experiments.TokenizerStage.training_loss(model, {"smpl_pose": pose}, aug, 0)
    seen = model.seen[-1]
    assert torch.equal(seen[:, 1:], pose[:, 1:])
    yaw, roll = torch.deg2rad(u[:, 0] * 40.0).double(), torch.deg2rad(u[:, 1] * 10.0).double()
    cy, sy, z, o = yaw.cos(), yaw.sin(), torch.zeros(B, dtype=torch.float64), torch.ones(B, dtype=torch.float64)
    Ry = torch.stack([torch.stack([cy, z, sy], -1), torch.stack([z, o, z], -1), torch.stack([-sy, z, cy], -1)], -2)
    root = _rot_z(roll) @ Ry @ _rot_z(angles[:, 0].double())
    torch.testing.assert_close(bodymodels.axis_angle_to_matrix(seen[:, 0].double()), root, rtol=0, atol=1e-5)


def test_refinement_objective_by_hand(tokenizer):
    """refinement_objective: G = sum_j w_j ||scale (uv_j - target_j)||^2 + reg ||R - R0||^2 by hand; None = ones."""
    g = seeded(70)
    B, L = 2, tokenizer.cfg.num_tokens
    book = tokenizer.quantizer.codebook
    ids = torch.randint(0, len(book), (B, L), generator=g)
    e = book[ids] + 0.1 * torch.randn(B, L, book.shape[1], generator=g)
    betas = torch.randn(B, 10, generator=g) * 0.5
    t = torch.tensor([[0.05, -0.1, 40.0], [-0.02, 0.08, 25.0]])
    targets = torch.rand(B, 24, 2, generator=g) * 0.4 - 0.2
    with torch.no_grad():
        R0 = tokenizer.decode(book[torch.randint(0, len(book), (B, L), generator=g)])
        R = tokenizer.decode(e)
        joints = tokenizer.body.joints(R, betas).double()
    weights = torch.rand(B, 24, generator=g)
    reg, scale, f, S = 7.0, 192.0, 5000.0, 256.0
    expected = {}
    for name, w in (("weighted", weights.double()), ("ones", torch.ones(B, 24, dtype=torch.float64))):
        G = []
        for n in range(B):
            total = 0.0
            for j in range(24):
                X, Y, Z = joints[n, j].tolist()
                u = f / S * (X + float(t[n, 0])) / (Z + float(t[n, 2]))
                v = f / S * (Y + float(t[n, 1])) / (Z + float(t[n, 2]))
                du, dv = scale * (u - float(targets[n, j, 0])), scale * (v - float(targets[n, j, 1]))
                total += float(w[n, j]) * (du * du + dv * dv)
            G.append(total + reg * float(((R[n].double() - R0[n].double()) ** 2).sum()))
        expected[name] = torch.tensor(G, dtype=torch.float64)
    with torch.no_grad():
        weighted = genhmr.refinement_objective(tokenizer, e, betas, t, targets, R0, reg, scale, weights)
        plain = genhmr.refinement_objective(tokenizer, e, betas, t, targets, R0, reg, scale)
        ones = genhmr.refinement_objective(tokenizer, e, betas, t, targets, R0, reg, scale, torch.ones(B, 24))
    torch.testing.assert_close(weighted.double(), expected["weighted"], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(plain.double(), expected["ones"], rtol=1e-5, atol=1e-4)
    assert torch.equal(plain, ones)
    assert (expected["ones"] - expected["weighted"]).abs().min() > 1  # the weights matter here


def test_intrinsics_place_the_same_prediction_in_the_given_camera(trained, tmp_path, capsys):
    """`demo.py --intrinsics`: the same prediction (tokens, crop camera, crop-frame vertices); K the given one; the
    mesh moved so that its root plane lands where the crop's camera saw it: the mesh origin (cam_t), and each
    joint moved onto that plane, on the same pixel under both cameras (the joints themselves are off by their
    depth off the plane, more so in the nearer camera)."""
    argv = ["--image", trained.png, "--checkpoint", trained.ckpt]
    assert support.run_demo("genhmr", argv + ["--out", tmp_path / "default"], capsys)[0] == 0
    assert support.run_demo("genhmr", argv + ["--out", tmp_path / "given",
                                                   "--intrinsics", "150", "150", "20.5", "35.25"], capsys)[0] == 0
    d, g = np.load(tmp_path / "default" / "person.npz"), np.load(tmp_path / "given" / "person.npz")
    K = np.array([[150.0, 0, 20.5], [0, 150, 35.25], [0, 0, 1]], dtype=np.float32)
    assert np.array_equal(g["K"], K) and not np.array_equal(d["K"], K)
    for key in ("token_ids", "cam", "crop_verts", "crop_cam_t", "box", "crop_matrix"):
        assert np.array_equal(g[key], d[key]), key
    project = lambda p, K: bodymodels.perspective_projection(torch.as_tensor(p).double(), torch.as_tensor(K).double())
    torch.testing.assert_close(project(g["cam_t"][None], g["K"]), project(d["cam_t"][None], d["K"]), rtol=0, atol=1e-3)
    torch.testing.assert_close(project(g["joints3d"], g["K"]), torch.as_tensor(g["joints2d"]).double(), rtol=0,
                               atol=1e-3)
    def on_plane(z):  # each joint moved onto the root's depth plane lands on the same pixel under both cameras
        rel = torch.as_tensor(z["joints3d"] - z["cam_t"]).double()
        return rel * torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64) + torch.as_tensor(z["cam_t"]).double()

    torch.testing.assert_close(project(on_plane(g), g["K"]), project(on_plane(d), d["K"]), rtol=0, atol=1e-3)
    off = (torch.as_tensor(g["joints2d"]) - torch.as_tensor(d["joints2d"])).norm(dim=-1)
    print(f"joints off their default-camera pixels by at most {off.max():.3f} px (their depth off the root's plane)")


def test_small_preset_builds_every_stage_and_each_image_stage_takes_a_step(tokenizer):
    """The `small` preset between TINY and PAPER (docs/genhmr.md, "GenHMR as it scales"): every stage has it, its
    renders are twice TINY's side on TINY's grid, and the backbone stage and the image stage built from it each take
    one AdamW step on CPU that moves their weights, with finite losses."""
    for configs_of_stage in (genhmr_experiments.TOKENIZER_CONFIGS, genhmr_experiments.BACKBONE_CONFIGS,
                             genhmr_experiments.PRIOR_CONFIGS, genhmr_experiments.CONFIGS):
        assert "small" in configs_of_stage
    small, tiny = genhmr_experiments.CONFIGS["small"].model, genhmr.TINY.model
    assert small.image_hw == tuple(2 * s for s in tiny.image_hw) and small.d_model == 256
    assert genhmr.level_sizes(small) == genhmr.level_sizes(tiny)
    batch = body_batch(2, size=128)
    batch["image"] = batch["image"][..., :96]
    torch.manual_seed(0)
    stages = ((genhmr_experiments.BackboneStage, genhmr_experiments.BACKBONE_CONFIGS["small"]),
              (genhmr_experiments, genhmr_experiments.CONFIGS["small"]))
    parent = tokenizer
    for protocol, cfg in stages:
        model = protocol.build_model(cfg, parent).train()
        trainable = [p for p in model.parameters() if p.requires_grad]
        before = [p.detach().clone() for p in trainable]
        optimizer = torch.optim.AdamW(trainable, lr=1e-3)
        loss, _ = protocol.training_loss(model, batch, cfg, 0)
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss) and any(not torch.equal(a, p) for a, p in zip(before, trainable))
        parent = model.eval()
