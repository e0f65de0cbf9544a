"""Every schedule of the three papers, pinned at its start, the end of its warm-up, its middle and its end against
the formula its source states, written out here apart from the code; and which parameters each stage's optimiser
trains at which rate (its groups).

Sources: SimpleHand Sec. 4.1 and the official code (patienceFromZhou/simpleHand at
c3e6abc55512d712c4ae9b2695e529607f73b00f, train.py `get_learning_rate`, cfg.py TRAIN); GenHMR's Training Strategy
(m = ceil(gamma(tau) L), gamma(tau) = cos(pi tau / 2)), Eq. (5) with Table 9's 50 % duration, App. "Mask Scheduling
Function" (ceil(gamma(t / T) L)) and App. Implementation Details (Adam; the learning rates); MaskGIT's choice noise
(google-research/maskgit, maskgit/libml/parallel_decode.py: choice_temperature x (1 - (step + 1) / num_iter));
HMR-Adapter Sec. 4.1 (10K steps; the trainable parameters are the adapters') with NOTE H10 (AdamW, warm-up then
cosine to 0, each adapter its own peak rate). Where the paper is silent the project's own schedule is pinned to its
docstring's formula (NOTE G16: the image stage's paper rate is constant; TINY's warm-up and cosine to lr / 100).
"""
import dataclasses
import math

import pytest
import torch

import genhmr
import hmr_adapter as ha
import simplehand
import train
from lab import configs, genhmr_experiments as gx, hmr_adapter_experiments as hx

# ---------------------------------------------------------------------------------------------
# The learning rate of every stage train.py runs, at every preset


def simplehand_lr(r, s):
    """Sec. 4.1: lr until the drop, lr_final after ("5e-4, then adjusted to 5e-5 after 50 epochs"); the official
    code warms up linearly for WARMUP_EPOCH epochs first (get_learning_rate: np.linspace(0, BASE_LR, warmup_iter),
    which reaches BASE_LR at the warm-up's last step; here lr (s + 1) / W, the same line one step ahead). "cosine"
    (TINY): lr -> lr_final over the steps after the warm-up."""
    if s < r.warmup_steps:
        return r.lr * (s + 1) / r.warmup_steps
    if r.lr_schedule == "step":
        return r.lr if s < r.lr_drop_step else r.lr_final
    t = min(1.0, (s - r.warmup_steps) / max(1, r.max_steps - r.warmup_steps))
    return r.lr_final + (r.lr - r.lr_final) * (1 + math.cos(math.pi * t)) / 2


def genhmr_lr(r, s):
    """App. Implementation Details: Adam at a constant rate (tokenizer 1e-4, image stage 1e-5; NOTE G16); the tiny
    presets: linear warm-up, then cosine from lr to lr / 100 at max_steps."""
    if s < r.warmup_steps:
        return r.lr * (s + 1) / r.warmup_steps
    if r.lr_schedule == "constant":
        return r.lr
    t = min(1.0, (s - r.warmup_steps) / max(1, r.max_steps - r.warmup_steps))
    return r.lr / 100 + (r.lr - r.lr / 100) * (1 + math.cos(math.pi * t)) / 2


def adapter_lr(r, s):
    """NOTE H10: linear warm-up, then cosine from lr to 0 at max_steps (the bases' stand-ins alike)."""
    if s < r.warmup_steps:
        return r.lr * (s + 1) / r.warmup_steps
    t = min(1.0, (s - r.warmup_steps) / max(1, r.max_steps - r.warmup_steps))
    return r.lr * (1 + math.cos(math.pi * t)) / 2


FORMULA = {"simplehand": simplehand_lr, "genhmr_tokenizer": genhmr_lr, "genhmr_backbone": genhmr_lr,
           "genhmr_prior": genhmr_lr, "genhmr": genhmr_lr, "hmr_adapter_bases": adapter_lr, "hmr_adapter": adapter_lr}


def pins(r):
    """The steps a schedule is pinned at: its start, the last warm-up step and the first after it, the middle of
    what follows the warm-up, a drop's two sides, the last step and beyond."""
    w, n = r.warmup_steps, r.max_steps
    steps = {0, max(0, w - 1), w, w + (n - w) // 2, max(0, n - 1), n, n + 10}
    drop = getattr(r, "lr_drop_step", 0)
    return sorted(steps | ({drop - 1, drop} if drop else set()))


def test_every_stage_has_a_formula_here():
    assert set(FORMULA) == set(train.MODELS)


@pytest.mark.parametrize("stage, preset", [(s, p) for s in train.MODELS for p in train.MODELS[s].paper.CONFIGS])
def test_each_stages_learning_rate_follows_its_papers_formula(stage, preset):
    cfg = train.MODELS[stage].paper.CONFIGS[preset]
    r = configs.recipe_of(cfg)
    for s in pins(r):
        assert train.MODELS[stage].paper.learning_rate(cfg, s) == pytest.approx(FORMULA[stage](r, s), rel=1e-12,
                                                                                   abs=1e-15), (stage, preset, s)


@pytest.mark.parametrize("stage", list(train.MODELS))
def test_a_warm_up_and_cosine_at_its_landmarks(stage):
    """Each stage's schedule with a warm-up of 10 steps over 110 (the formula's landmarks by hand): lr / 10 at step 0,
    lr at the last warm-up step and the first after it, the cosine's midpoint at step 60 (not step 55: a cosine that
    forgot the warm-up's offset), its floor at the end."""
    paper, cfg = train.MODELS[stage].paper, train.MODELS[stage].paper.CONFIGS["tiny"]
    schedule = {"lr_schedule": "cosine"} if hasattr(configs.recipe_of(cfg), "lr_schedule") else {}
    cfg = configs.with_fields(cfg, warmup_steps=10, max_steps=110, **schedule)
    r = configs.recipe_of(cfg)
    floor = getattr(r, "lr_final", 0.0 if stage.startswith("hmr_adapter") else r.lr / 100)
    lr = lambda s: paper.learning_rate(cfg, s)
    assert lr(0) == pytest.approx(r.lr / 10)
    assert lr(4) == pytest.approx(r.lr / 2)  # the warm-up is a line
    assert lr(9) == pytest.approx(r.lr) and lr(10) == pytest.approx(r.lr)
    assert lr(60) == pytest.approx((r.lr + floor) / 2)
    assert lr(110) == pytest.approx(floor, abs=1e-12) and lr(500) == pytest.approx(floor, abs=1e-12)


def test_simplehand_paper_recipe_steps_down_at_epoch_50_and_the_official_at_100():
    """Sec. 4.1 (100 epochs, 5e-4 then 5e-5 after 50) and the official code (200 "epochs" of 256 iterations,
    BASE_LR / 10 from epoch MAX_EPOCH // 2, WARMUP_EPOCH 5)."""
    r = simplehand.PAPER.recipe
    epoch = r.iters_per_epoch
    assert (r.lr, r.lr_final, r.lr_schedule) == (5e-4, 5e-5, "step")
    assert round(r.max_steps / epoch) == 100 and round(r.lr_drop_step / epoch) == 50
    assert simplehand.learning_rate(r, r.lr_drop_step - 1) == 5e-4
    assert simplehand.learning_rate(r, r.lr_drop_step) == 5e-5
    official = dataclasses.replace(r, **simplehand.OFFICIAL_CODE_RECIPE)
    assert (official.max_steps, official.lr_drop_step, official.warmup_steps) == (200 * 256, 100 * 256, 5 * 256)
    assert simplehand.learning_rate(official, 5 * 256 - 1) == 5e-4  # the warm-up's last step reaches BASE_LR
    assert simplehand.learning_rate(official, 100 * 256 - 1) == 5e-4
    assert simplehand.learning_rate(official, 100 * 256) == pytest.approx(5e-4 / 10)


def test_genhmr_paper_rates_are_the_papers_constants():
    """App. Implementation Details: the tokenizer at 1e-4 for 200K iterations, the masked transformer at 1e-5,
    both Adam (AdamW without weight decay), no schedule stated (NOTE G16: constant)."""
    for cfg, lr in ((gx.TOKENIZER_CONFIGS["paper"], 1e-4), (gx.CONFIGS["paper"], 1e-5)):
        assert cfg.recipe.lr == lr and cfg.recipe.weight_decay == 0.0
        assert {gx.learning_rate(cfg, s) for s in (0, 1, cfg.recipe.max_steps // 2, cfg.recipe.max_steps)} == {lr}
    assert gx.TOKENIZER_CONFIGS["paper"].recipe.max_steps == 200_000


def test_hmr_adapter_paper_recipe():
    """Sec. 4.1: 10K steps, batch 32 on each of 4 GPUs; NOTE H10: AdamW 1e-4 for both adapters, cosine to 0."""
    r = ha.PAPER.recipe
    assert (r.max_steps, r.batch_size, r.lr, r.body_lr) == (10_000, 128, 1e-4, 1e-4)
    middle = r.warmup_steps + (r.max_steps - r.warmup_steps) // 2
    assert hx.learning_rate(ha.PAPER, middle) == pytest.approx(r.lr / 2)
    assert hx.learning_rate(ha.PAPER, r.max_steps) == 0.0


# ---------------------------------------------------------------------------------------------
# GenHMR's temperature and masking schedules


def eq5(r, t):
    """Eq. (5): tau_t = tau_end + (tau_start - tau_end)(1 + cos(t pi / T)) / 2 over T = 50 % of training (Table 9),
    then held at tau_end (NOTE G14)."""
    T = r.anneal_fraction * r.max_steps
    return r.temperature_end + (r.temperature_start - r.temperature_end) * (1 + math.cos(math.pi * min(t, T) / T)) / 2


@pytest.mark.parametrize("preset", list(gx.CONFIGS))
def test_gumbel_temperature_is_eq_5_over_half_of_training(preset):
    r = gx.CONFIGS[preset].recipe
    assert (r.temperature_start, r.temperature_end, r.anneal_fraction) == (1.0, 0.01, 0.5)  # Sec. App., Table 8, 9
    T = r.anneal_fraction * r.max_steps
    for t in (0, T / 4, T / 2, T, (T + r.max_steps) / 2, r.max_steps):
        assert genhmr.gumbel_temperature(r, int(t)) == pytest.approx(eq5(r, int(t)), rel=1e-12), (preset, t)
    assert genhmr.gumbel_temperature(r, 0) == pytest.approx(1.0)
    assert genhmr.gumbel_temperature(r, int(T / 2)) == pytest.approx((1.0 + 0.01) / 2, rel=1e-3)
    assert genhmr.gumbel_temperature(r, int(T)) == pytest.approx(0.01)
    assert genhmr.gumbel_temperature(r, r.max_steps) == pytest.approx(0.01)


def test_the_image_stage_anneals_by_the_step_the_trainer_passes(monkeypatch):
    """training_step reads Eq. (5) at the step it is given (the trainer's optimiser step), not at step 0."""
    seen = []
    monkeypatch.setattr(genhmr, "gumbel_temperature", lambda r, step: seen.append(step) or 0.5)

    class Stop(Exception):
        pass

    def model(images, ids, temperature):
        seen.append(temperature)
        raise Stop

    tokenizer = type("T", (), {"tokenize": lambda self, pose: torch.zeros(len(pose), 8, dtype=torch.long),
                               "cfg": type("C", (), {"codebook_size": 16})()})()
    with pytest.raises(Stop):
        genhmr.training_step(model, tokenizer, None, torch.zeros(2, 24, 3), {}, 1234, gx.CONFIGS["tiny"])
    assert seen == [1234, 0.5]


@pytest.mark.parametrize("tau, L, m", [
    (0.0, 96, 96),  # start: every token masked
    (1 / 3, 96, math.ceil(math.cos(math.pi / 6) * 96)),
    (0.5, 96, math.ceil(math.cos(math.pi / 4) * 96)),  # the middle: ceil(96 / sqrt 2) = 68
    (2 / 3, 96, 48),  # cos(pi / 3) = 1 / 2 exactly: 48, not 49
    (1.0, 96, 1),  # end: cos(pi / 2) = 0, at least one token masked (NOTE G11)
    (0.5, 48, math.ceil(math.cos(math.pi / 4) * 48)),
])
def test_training_masks_ceil_cos_pi_tau_over_2_tokens(tau, L, m):
    """Training Strategy: m = ceil(gamma(tau) L), gamma(tau) = cos(pi tau / 2), clamped to [1, L] (NOTE G11)."""
    assert int(genhmr.num_masked(torch.tensor([tau], dtype=torch.float64), L)) == m


def test_training_draws_tau_uniformly_up_to_mask_tau_max():
    """tau ~ U(0, mask_tau_max) (Table 4: U(0, 1) the paper's): over many rows the masked counts follow
    ceil(cos(pi tau / 2) L) of a uniform tau: mean count L (2 / pi) at U(0, 1), larger at U(0, 0.5)."""
    ids = torch.zeros(8_000, 96, dtype=torch.long)
    torch.manual_seed(0)
    for tau_max in (1.0, 0.5):
        _, mask = genhmr.random_masking(ids, 256, tau_max)
        taus = torch.linspace(0, tau_max, 100_001, dtype=torch.float64)
        expected = genhmr.num_masked(taus, 96).double().mean()
        assert mask.sum(1).double().mean() == pytest.approx(float(expected), rel=0.02), tau_max


@pytest.mark.parametrize("schedule, gamma", [
    ("cosine", lambda r: (1 + math.cos(math.pi * r)) / 2), ("linear", lambda r: 1 - r),
    ("cubic", lambda r: 1 - r ** 3), ("sqrt", lambda r: math.sqrt(1 - r * r))])
@pytest.mark.parametrize("T", [1, 4, 5, 10])
def test_ugs_remasks_ceil_gamma_t_over_T_tokens(schedule, gamma, T):
    """App. "Mask Scheduling Function": after iteration t, ceil(gamma(t / T) L) tokens are masked again; none at T."""
    L = 96
    want = [min(L, math.ceil(round(gamma(t / T) * L, 9))) for t in range(1, T + 1)]
    assert genhmr.remask_counts(L, T, schedule) == want
    assert want[-1] == 0
    if T == 4 and schedule == "cosine":
        assert want[1] == L // 2  # the middle: cos(pi / 2) = 0, half the tokens


class FixedLogits:
    """A generator for sample_from_features whose logits never change: the same confidences every iteration."""

    def __init__(self, logits):
        self.num_tokens, self.num_codes, self.table = logits.shape[1], logits.shape[2], logits

    def logits(self, ids, levels):
        return self.table


def test_ugs_choice_noise_anneals_as_maskgits(monkeypatch):
    """UGS with choice temperature c (NOTE G17) ranks by log p + c (1 - t / T) g (MaskGIT's decode: choice_temperature
    x (1 - (step + 1) / num_iter), step 0-based): with g = 1 the score minus log p is c (1 - t / T) at every t =
    1..T: c (T - 1) / T at the start, c / 2 in the middle, 0 at the end."""
    B, L, K, T, c = 2, 12, 7, 4, 3.0
    logits = torch.randn(B, L, K, generator=torch.Generator().manual_seed(0))
    scores = []
    real = genhmr.least_confident
    monkeypatch.setattr(genhmr, "gumbel_noise", lambda shape, seeds, t, generator, device: torch.ones(shape))
    monkeypatch.setattr(genhmr, "least_confident",
                        lambda score, masked, n: scores.append(score) or real(score, masked, n))
    _, history = genhmr.sample_from_features(FixedLogits(logits), [torch.zeros(B, 1)], T, "cosine",
                                             choice_temperature=c, seeds=torch.arange(B))
    for t, (score, (_, confidence, _)) in enumerate(zip(scores, history), 1):
        if genhmr.remask_counts(L, T)[t - 1] == 0:  # nothing re-masked: the noise is not drawn
            assert torch.equal(score, confidence)
            continue
        torch.testing.assert_close(score - confidence.log(), torch.full((B, L), c * (1 - t / T)), rtol=0, atol=1e-5)
    assert len(scores) == T


# ---------------------------------------------------------------------------------------------
# Optimiser groups: which parameters each stage trains, at which rate


def names(model, params):
    ids = {id(p): n for n, p in model.named_parameters()}
    return sorted(ids[id(p)] for p in params)


def trainable_names(model, prefix=""):
    return sorted(n for n, p in model.named_parameters() if p.requires_grad and n.startswith(prefix))


def groups_of(stage, **fields):
    """(model, [(scale, sorted parameter names)]) of stage `stage` at its tiny preset (with `fields`), through the
    trainer's own `param_groups` (which also refuses a frozen parameter or one left out)."""
    from test_ddp_ranks import build_parent
    paper = train.MODELS[stage].paper
    cfg = configs.with_fields(paper.CONFIGS["tiny"], **fields) if fields else paper.CONFIGS["tiny"]
    torch.manual_seed(0)
    model = paper.build_model(cfg, build_parent(stage))
    return model, [(scale, names(model, params)) for scale, params in train.param_groups(paper, model, cfg)]


def frozen(model):
    return {n for n, p in model.named_parameters() if not p.requires_grad}


@pytest.mark.parametrize("stage", ["simplehand", "genhmr_tokenizer", "hmr_adapter_bases"])
def test_a_first_stage_trains_every_parameter_in_one_group(stage):
    """SimpleHand Sec. 4.1 (AdamW over the network, its backbone from ImageNet weights), GenHMR's tokenizer (Adam;
    its codebook an EMA buffer, outside the optimiser), the bases' stand-ins: one group at the schedule's rate."""
    model, groups = groups_of(stage)
    everything = sorted(n for n, _ in model.named_parameters())
    assert groups == [(1.0, everything)] and not frozen(model)
    if stage == "genhmr_tokenizer":
        assert "quantizer.codebook" in dict(model.named_buffers())


def test_genhmr_backbone_and_prior_stages_train_their_own_part_only():
    model, groups = groups_of("genhmr_backbone")
    assert groups == [(1.0, trainable_names(model))]
    assert frozen(model) == {n for n, _ in model.named_parameters() if n.startswith("tokenizer.")} != set()
    model, groups = groups_of("genhmr_prior")
    assert groups == [(1.0, trainable_names(model))]
    assert all(n.startswith("masked_transformer.") for n in groups[0][1])
    # what reads the image waits, untrained, for the image stage (NOTE G25); the parent is frozen
    assert {n for n in frozen(model) if n.startswith("masked_transformer.")} == {
        n for n, _ in model.named_parameters()
        if n.startswith("masked_transformer.") and (".cross_attn." in n or ".norm2." in n or ".reference" in n)}


def test_genhmr_image_stage_trains_the_vit_at_its_scale_and_the_tokenizer_not_at_all():
    """App. Implementation Details: the masked transformer trains with the pose tokenizer frozen; the image
    encoder's rate is backbone_lr_scale x lr (1 for the paper's one rate)."""
    model, groups = groups_of("genhmr", backbone_lr_scale=0.1)
    vit = trainable_names(model, "backbone.")
    assert vit and groups == [(1.0, sorted(set(trainable_names(model)) - set(vit))), (0.1, vit)]
    assert frozen(model) == {n for n, _ in model.named_parameters() if n.startswith("tokenizer.")} != set()
    assert gx.CONFIGS["paper"].recipe.backbone_lr_scale == gx.CONFIGS["tiny"].recipe.backbone_lr_scale == 1.0


def test_hmr_adapter_trains_the_two_adapters_at_their_own_rates_and_the_bases_not_at_all():
    """Sec. 4.1: the trainable parameters are the adapters' (hand adapter on HaMeR, body adapter on SMPLer-X), the
    bases frozen; NOTE H10: the hand adapter at lr, the body adapter at body_lr (TINY's control, Table 3 No.5,
    trains beside the hand adapter at lr)."""
    model, groups = groups_of("hmr_adapter")
    r = ha.TINY.recipe
    hand = trainable_names(model, "hand_adapter.") + trainable_names(model, "control.")
    body = trainable_names(model, "body_adapter.")
    assert hand and body and groups == [(1.0, sorted(hand)), (r.body_lr / r.lr, body)]
    assert frozen(model) >= {n for n, _ in model.named_parameters() if n.startswith("bases.")} != set()
    # the body group's rate over the schedule: body_lr times the hand group's curve
    for s in pins(r):
        assert hx.learning_rate(ha.TINY, s) * groups[1][0] == pytest.approx(r.body_lr / r.lr * adapter_lr(r, s))
