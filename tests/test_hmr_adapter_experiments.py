"""HMR-Adapter's experiments (hmr_adapter_experiments.py): train.py's protocol on the adapters (frozen bases, the
arm chain they read, the frozen cache, losses that mean the same on any number of ranks, a one-batch overfit), the
bases' stand-ins and their losses, and the ablation rows of Tables 3-6 (each trains what it says, starts at the
frozen models, and counts the paper's trainable parameters)."""
import copy
import math
import typing

import numpy as np
import pytest
import torch

from lab import configs
import hmr_adapter as ha
from lab import hmr_adapter_experiments as hx
import metrics
from lab import synthetic
import train
from test_hmr_adapter import random_rotations



@pytest.fixture(scope="module")
def bases():
    torch.manual_seed(0)
    return hx.build_bases(ha.BASES_TINY)  # TINY's stand-ins, with their keypoint head (NOTE H17)


@pytest.fixture(scope="module")
def batch():  # test_hmr_adapter.py's 4 people
    dataset = synthetic.SyntheticWholeBody(4, image_size=(256, 192), occlusion_prob=0.5, seed=5)
    return torch.utils.data.default_collate([dataset[i] for i in range(4)])


# ---------------------------------------------------------------------------------------------
# Table 3 No.5's control at initialisation


def test_no_body_control_at_init_doubles_each_blocks_cross_attention(bases):
    """The Table 3 No.5 control (appendix C): SA' = SA and CA' = CA at init, and CA' attends to F^H, so each
    block's cross-attention update is exactly twice the frozen one; it has no F^B parameters."""
    head = bases.hand_expert.mano_head
    control = hx.ImageAdapter(head)
    assert not hasattr(control, "body_embed") and not hasattr(control, "joint_embed")
    tokens = torch.randn(2, 48, 64)
    z = head.transformer.start(2)
    for sa, ca, ff in head.transformer.transformer.layers:
        z = z + sa(z)
        z = z + 2 * ca(z, tokens)
        z = z + ff(z)
    for got, want in zip(control(head, tokens, None), head.readout(z)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)



def test_own_hand_crops_are_the_experts_crops_of_its_own_images_left_hands_flipped(batch):
    """The bases' stage feeds the expert its own images as `hand_crops` would cut them: (2B, 3, S, S), left first
    and mirrored, and the targets' 2D keypoints (those hands' own labels) in those images' squares (`bases_loss`)."""
    dataset = synthetic.SyntheticWholeBody(2, image_size=(256, 192), seed=5, hand_images=32)
    own = torch.utils.data.default_collate([dataset[i] for i in range(2)])
    crops = hx.own_hand_crops(own)
    assert crops.shape == (4, 3, 32, 32) and hx.own_hand_crops(batch) is None
    assert torch.equal(crops[0], own["left_hand_image"][0].flip(-1))
    assert torch.equal(crops[1], own["right_hand_image"][0])
    # the crops and bases_loss's targets agree: at every target keypoint (the crop's [-0.5, 0.5] frame, mirrored for
    # left hands) the crop shows the hand, not the background pattern behind it
    target = ha.hand_targets(hx.sides(own, "hand_image_mano_pose"), hx.sides(own, "hand_image_joints2d"),
                             hx.sides(own, "hand_image_box"))
    for crop, uv in zip(crops, target["uv"]):
        p = ((uv[(uv.abs() < 0.5).all(-1)] + 0.5) * 32).long()  # the keypoints inside the crop
        at_joints = crop[:, p[:, 1], p[:, 0]]
        assert (at_joints - crop.mean((1, 2))[:, None]).abs().sum(0).mean() > 0.05


def test_with_control_trains_the_no5_control_beside_the_paper_adapters_and_nothing_else(bases, batch):
    """TINY's recipe.control: the model is HMRAdapter plus Table 3 No.5's `ImageAdapter`, and the control does not
    change the paper's part: its hand and body outputs are HMRAdapter's own, bit for bit, from the same weights."""
    torch.manual_seed(0)
    model = hx.build_model(ha.TINY, bases)
    assert type(model) is hx.WithControl and type(model.control) is hx.ImageAdapter
    paper = ha.HMRAdapter(ha.TINY.model, bases)
    missing, unexpected = paper.load_state_dict(model.state_dict(), strict=False)
    assert not missing and all(k.startswith("control.") for k in unexpected) and unexpected
    args = (batch["image"], hx.gt_boxes(batch), batch["smplx_pose"], hx.sides(batch, "hand_joints2d"))
    pred, want = model(*args), paper(*args)
    assert all(torch.equal(pred[k], want[k]) for k in ("hand_pose", "theta_hat"))
    loss, terms = hx.training_loss(model, batch, ha.TINY, 0)
    assert {"control_hand_3d", "hand_3d", "body_pose"} <= set(terms)
    groups = hx.param_groups(model, ha.TINY)
    assert {id(p) for p in model.control.parameters()} <= {id(p) for p in groups[0][1]}
    no_control = hx.build_model(configs.with_fields(ha.TINY, control=False), bases)
    assert type(no_control) is ha.HMRAdapter


# ---------------------------------------------------------------------------------------------
# frozen bases


def test_frozen_bases_get_no_gradient_and_do_not_move(bases, batch):
    model = hx.build_model(ha.TINY, bases)
    before = {k: v.clone() for k, v in model.bases.state_dict().items()}
    model.train()
    assert not model.bases.training and model.hand_adapter.training
    groups = train.param_groups(hx, model, ha.TINY)  # the trainer's check: every trainable parameter once
    assert [scale for scale, _ in groups] == [1.0, ha.TINY.recipe.body_lr / ha.TINY.recipe.lr]
    optimizer = torch.optim.AdamW([dict(params=params, lr=1e-2 * scale) for scale, params in groups])
    loss, _ = hx.training_loss(model, batch, ha.TINY, 0)
    loss.backward()
    assert all(p.grad is None for p in model.bases.parameters())
    for name, p in model.named_parameters():
        if p.requires_grad and not name.startswith("body_adapter.regressor.0"):  # behind the zero layer at step 0
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    optimizer.step()
    assert sum("running_mean" in k for k in before) == 5  # BatchNorms: box net 2, hand RoI 1, keypoint head 2 (TINY)
    assert all(torch.equal(v, before[k]) for k, v in model.bases.state_dict().items())  # weights and BN statistics
    # the paper's model trains exactly the two adapters; TINY's recipe trains Table 3 No.5's control beside them
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == {"hand_adapter", "body_adapter",
                                                                                         "control"}
    assert type(hx.build_model(configs.with_fields(ha.TINY, control=False), bases)) is ha.HMRAdapter



def test_chain_field_builds_both_readings_and_paper_reads_local_rotations(bases, batch, monkeypatch):
    assert ha.PAPER.model.chain == "local" and ha.TINY.model.chain == "global"
    cfg = train.apply_overrides(ha.TINY, ["chain=local"])
    assert cfg.model.chain == "local"
    arm_chains, read = ha.arm_chains, []
    monkeypatch.setattr(ha, "arm_chains",
                        lambda R, chain="global", **kw: read.append(chain) or arm_chains(R, chain, **kw))
    losses, models, cfgs = {}, {}, {}
    for name in ("local", "global"):
        torch.manual_seed(0)
        cfgs[name] = configs.with_fields(ha.TINY, chain=name, hand_only_prob=0.0)
        models[name] = hx.build_model(cfgs[name], bases)
        losses[name] = hx.training_loss(models[name], batch, cfgs[name], 0)[1]
    assert read == ["local", "global"]  # the hand adapter reads the chain its config names ...
    assert all("fingers_3d" in terms for terms in losses.values())  # Eq. 7 over the whole-body joints, as SMPLer-X
    # the body adapter reads no chain, nor does Table 3 No.5's control (its own row's model)
    assert all(torch.equal(losses["local"][k], losses["global"][k]) for k in ("body_pose", "body_3d", "fingers_3d"))
    control = {}
    for name in ("local", "global"):
        torch.manual_seed(0)
        row_cfg = configs.with_fields(ha.TINY, chain=name, hand_only_prob=0.0, hand_method="image")
        control[name] = hx.training_loss(hx.build_model(row_cfg, bases), batch, row_cfg, 0)[1]["hand_3d"]
    assert torch.equal(control["local"], control["global"])
    # ... and nothing else differs: the "global" model fed the local chains scores the "local" model's loss
    monkeypatch.setattr(ha, "arm_chains", lambda R, chain="global", **kw: arm_chains(R, "local", **kw))
    torch.manual_seed(0)
    torch.testing.assert_close(hx.training_loss(models["global"], batch, cfgs["global"], 0)[1]["hand_3d"],
                               losses["local"]["hand_3d"])



# ---------------------------------------------------------------------------------------------
# the ablations' other ways (Tables 3-6)


HAND_METHODS = typing.get_args(ha.AdapterConfig.__annotations__["hand_method"])
BODY_METHODS = typing.get_args(ha.AdapterConfig.__annotations__["body_method"])


@pytest.mark.parametrize("field, method", [("hand_method", m) for m in HAND_METHODS] +
                         [("body_method", m) for m in BODY_METHODS])
def test_every_ablation_method_trains_what_it_says_and_predicts(bases, batch, field, method):
    cfg = configs.with_fields(ha.TINY, **{field: method})
    torch.manual_seed(0)
    model = hx.build_model(cfg, bases).train()
    assert type(model) is (hx.WithControl if method == "adapter" else hx.AblationRow)  # TINY: No.5 beside it
    groups = train.param_groups(hx, model, cfg)  # every trainable parameter in one group
    loss, _ = hx.training_loss(model, batch, cfg, 0)
    loss.backward()
    behind_zero = "body_adapter.regressor.0"  # the Eq. 4 adapter's layer before its zero one: no gradient at step 0
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad and behind_zero not in n)
    assert all(p.grad is None for p in model.bases.parameters())
    own_hand = method in ("full", "scratch") and field == "hand_method"
    own_body = method in ("head", "full", "scratch") and field == "body_method"
    if method != "adapter":  # a row's own hand expert or whole-body model, or the frozen ones
        assert (model.hand_expert is not bases.hand_expert) == own_hand
        assert (model.whole_body is not bases.whole_body) == own_body
    if field == "body_method" and method == "head":  # No.3: the encoder stays as it is
        assert not any(p.requires_grad for p in model.whole_body.encoder.parameters())
    assert (len(groups[1][1]) == 0) == (field == "body_method" and method == "frozen")
    model.eval()
    pred = hx.predict(model, batch, cfg)
    got = metrics.wholebody_metrics(pred, batch)
    assert all(np.isfinite(v) for v in got.values())
    if method == "frozen" and field == "hand_method":  # the pre-trained HaMeR row: the expert's own hands
        assert torch.equal(pred["hand_adapter_verts"], pred["hand_expert_verts"])


def test_methods_trainable_parameters_at_paper_size_are_tables_3_and_4s():
    """Table 3's and 4's "Trainable Params." column, counted on the meta device."""
    def trainable(**method):
        with torch.device("meta"):
            cfg = configs.with_fields(ha.PAPER, **method)
            model = hx.build_model(cfg, ha.Bases(ha.BASES_PAPER.model))
        groups = hx.param_groups(model, cfg)
        return sum(p.numel() for p in groups[0][1]) / 1e6, sum(p.numel() for p in groups[1][1]) / 1e6
    assert 670 < trainable(hand_method="full")[0] < 671  # No.1, No.2: 671M
    assert trainable(hand_method="scratch")[0] == trainable(hand_method="full")[0]
    assert 39 < trainable(hand_method="head")[0] < 40  # No.3: 39M
    assert 39 < trainable(hand_method="concat")[0] < 40  # No.4: 39M (the head and a Linear(6 -> 1280))
    assert 26 < trainable(hand_method="image")[0] < 28 and 26 < trainable()[0] < 28  # No.5, No.6: 27M
    # No.1, No.2: 662M (ours: SMPLer-X less its hand regressor, face box)
    assert 660 < trainable(body_method="full")[1] < 663
    assert 29 < trainable(body_method="head")[1] < 31  # No.3: 31M (the same 1.65M less)
    assert 35 < trainable(body_method="task_tokens")[1] < 38 and 35 < trainable()[1] < 38  # No.5, No.6: 37M


def test_whole_body_pose_holds_each_arm_chain_where_the_right_arm_is():
    R = random_rotations(22, 3)[None]
    for chain in ("local", "global"):
        whole, arm = hx.whole_body_chains(R, chain), ha.arm_chains(R, chain)
        assert whole.shape == (1, 2, 22, 6)
        # the left hand sees the mirrored body with left and right swapped: its own arm where the right arm is
        torch.testing.assert_close(whole[:, :, list(ha.ARMS["right"])], arm)


def test_fine_tuned_copies_and_concatenation_start_at_the_frozen_models(bases, batch):
    head, tokens, chain = bases.hand_expert.mano_head, torch.randn(3, 48, 64), torch.randn(3, 8, 6)
    for how in ("head", "full"):
        for got, want in zip(hx.TunedHand(bases.hand_expert, bases.cfg, how)(head, tokens, chain), head(tokens)):
            assert torch.equal(got, want)
    out = bases.whole_body(batch["image"])
    rois, joints = bases.whole_body.hands(out["feature_map"], out["boxes"], batch["image"].shape[-2:])
    # readouts that read their input (the stand-ins' start at 0)
    regressor = copy.deepcopy(bases.whole_body.body_regressor)
    for layer in (regressor.root_pose_out[0], regressor.body_pose_out[0]):
        torch.nn.init.normal_(layer.weight, std=0.01)
    token = out["body_tokens"][:, 0]  # shape and camera tokens: not read by theta_0
    theta0 = regressor(out["body_tokens"], out["body_joints"], token, token)[0]
    inputs = (theta0, rois, joints[:, :, list(ha.MCP), :2], out["body_tokens"], out["body_joints"])
    concat = hx.FusedRegressor(ha.TINY.model, regressor, 64, "concat")
    torch.testing.assert_close(concat(*inputs), theta0)  # MCP columns at 0
    # the weighted sum: the readouts read w_0 x + w_J f^J. With f^J = 0 and the moderator at w = (3/4, 1/4),
    # that is 3/4 x, and the affine readouts give 3/4 theta_0 + 1/4 their bias
    fused = hx.FusedRegressor(ha.TINY.model, regressor, 64, "weighted_sum")
    with torch.no_grad():
        for p in (fused.hand_embed.weight, fused.hand_embed.bias, fused.moderator[-1].weight):
            p.zero_()
        fused.moderator[-1].bias.copy_(torch.tensor([math.log(3.0), 0.0]))
    bias = torch.cat([regressor.root_pose_out[0].bias, regressor.body_pose_out[0].bias]).view(1, -1, 6)
    torch.testing.assert_close(fused(*inputs), 0.75 * theta0 + 0.25 * bias)
    # the body feature reaches the head: concat, its tokens F^B = theta_b W_B + b + E join F^H as context ...
    fused = hx.FusedHead(head, 8, "concat")
    body_tokens = fused.body_embed(chain) + fused.joint_embed
    for got, want in zip(fused(head, tokens, chain), head(torch.cat([tokens, body_tokens], 1))):
        torch.testing.assert_close(got, want)
    # ... weighted sum, every image token becomes w_H F^H + w_B f^B (the moderator set to w = (3/4, 1/4))
    fused = hx.FusedHead(head, 8, "weighted_sum")
    with torch.no_grad():
        fused.moderator[-1].weight.zero_()
        fused.moderator[-1].bias.copy_(torch.tensor([math.log(3.0), 0.0]))
    mixed = 0.75 * tokens + 0.25 * fused.body_embed(chain.flatten(1))[:, None]
    for got, want in zip(fused(head, tokens, chain), head(mixed)):
        torch.testing.assert_close(got, want)



def test_the_bases_train_the_whole_body_model_on_the_finger_joints_too(bases, batch):
    """The whole-body stand-in learns Eq. 7's finger term, as SMPLer-X its wrist-relative hand joints. Moving the 30
    finger joints' targets by s and by 2 s (s farther than any prediction): each of their 90 wrist-relative
    coordinates' |error| grows by exactly s, so the finger term (their mean) by s, and nothing else of the loss
    moves."""
    s, terms = 100.0, []
    for shift in (s, 2 * s):
        moved = dict(batch, joints3d=batch["joints3d"].clone())
        moved["joints3d"][:, list(ha.HAND_FINGER_JOINTS)] += shift
        with torch.no_grad():
            terms.append(hx.BASES.training_loss(bases.eval(), moved, ha.BASES_TINY, 0)[1])
    assert float(terms[1]["fingers_3d"] - terms[0]["fingers_3d"]) == pytest.approx(s, rel=1e-4)
    assert all(torch.equal(terms[0][k], terms[1][k]) for k in terms[0] if k != "fingers_3d")


def test_ablation_rows_name_fields_and_metrics_that_exist(bases, batch):
    names = set(configs.config_leaves(ha.TINY))
    columns = set()
    for table in hx.ABLATIONS.values():
        assert table["chosen"] in [label for label, _, _ in table["rows"]]
        for label, overrides, paper in table["rows"]:
            assert set(overrides) <= names and len(paper) == len(table["columns"]), label
            cfg = train.apply_overrides(ha.TINY, [f"{k}={v}" for k, v in overrides.items()])  # --set round trip
            assert all(configs.config_leaves(cfg)[k] == v for k, v in overrides.items())
        columns |= {c for c, _ in table["columns"]}
    model = hx.build_model(ha.TINY, bases).eval()
    assert columns <= set(metrics.wholebody_metrics(hx.predict(model, batch, ha.TINY), batch))



def test_frozen_cache_serves_each_sample_as_computed_alone(bases, batch):
    """cache_frozen (TINY): the frozen bases run once per training index, on that sample alone (so its
    bits do not depend on its batch), and later batches, in any order, are served from the cache
    without running them; what is served matches the batched live computation."""
    model = hx.build_model(ha.TINY, bases)
    indexed = dict(batch, index=torch.tensor([7, 3, 11, 5]))
    live = model.frozen_inputs(batch["image"], hx.gt_boxes(batch))
    first = hx.cached_frozen_inputs(model, indexed)
    assert sorted(model.frozen_cache) == [3, 5, 7, 11]
    for i in range(4):
        alone = model.frozen_inputs(batch["image"][i:i + 1], hx.gt_boxes(batch)[i:i + 1])
        for name, value in first.items():
            assert torch.equal(value[i], alone[name][0]), name
            torch.testing.assert_close(value[i], live[name][i], rtol=1e-4, atol=1e-5)
    calls = []
    hook = model.bases.whole_body.register_forward_hook(lambda *args: calls.append(1))
    order = [2, 0, 3, 1]
    again = hx.cached_frozen_inputs(model, {k: v[order] for k, v in indexed.items()})
    hook.remove()
    assert not calls and all(torch.equal(again[name], first[name][order]) for name in first)
    assert not ha.PAPER.recipe.cache_frozen
    assert hx.build_model(configs.with_fields(ha.TINY, cache_frozen=False), bases).frozen_cache is None


@pytest.fixture(scope="module")
def batch8():
    dataset = synthetic.SyntheticWholeBody(8, image_size=(256, 192), occlusion_prob=0.5, seed=6)
    return {k: v.double() if v.is_floating_point() else v for k, v in
            torch.utils.data.default_collate([dataset[i] for i in range(8)]).items()}


def _gradients(model, batch, loss):
    model.zero_grad(set_to_none=True)
    loss(model, batch)[0].backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_every_loss_means_the_same_on_1_2_or_8_ranks(bases, batch8):
    """DDP averages the ranks' gradients: the gradient of a batch must equal the mean of its k equal
    shards' gradients (k ranks), for the adapters' loss and the bases' loss with HaMeR's calibration
    (loss_batch 8; TINY's 0 leaves the same means unscaled); float64, the bases' BatchNorms in eval
    mode (no batch statistics). A loss summed over each rank's batch fails this for k > 1."""
    cfg = configs.with_fields(ha.TINY, loss_batch=8, hand_only_prob=0.0, cache_frozen=False)
    adapted = hx.build_model(cfg, copy.deepcopy(bases)).double().train()
    bases_cfg = configs.with_fields(ha.BASES_TINY, losses="paper")
    stand_ins = hx.build_bases(bases_cfg)
    stand_ins.load_state_dict(bases.state_dict())
    for model, loss in ((adapted, lambda m, b: hx.training_loss(m, b, cfg, 0)),
                        (stand_ins.double().eval(), lambda m, b: hx.BASES.training_loss(m, b, bases_cfg, 0))):
        whole = _gradients(model, batch8, loss)
        for k in (1, 2, 8):
            shards = [_gradients(model, {n: v[i::k] for n, v in batch8.items()}, loss) for i in range(k)]
            for name, g in whole.items():
                torch.testing.assert_close(sum(s[name] for s in shards) / k, g, rtol=1e-7, atol=1e-12, msg=name)



def test_one_batch_overfit_of_each_adapter(bases, batch):
    """The hand and body adapters of the paper's model, and the hand adapter of Table 3 No.5's control row, each
    halve their loss on one batch."""
    torch.manual_seed(0)
    cfg = configs.with_fields(ha.TINY, hand_only_prob=0.0)
    model = hx.build_model(cfg, bases).train()
    control = hx.build_model(configs.with_fields(cfg, hand_method="image"), bases).train()
    params = [p for m in (model, control.hand_adapter) for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=3e-3)
    eq5 = ("hand_3d", "hand_2d", "hand_verts", "hand_pose", "hand_betas")
    first = None
    for _ in range(100):
        loss, terms = hx.training_loss(model, batch, cfg, 0)
        hand = sum(w * terms[k] for w, k in ((0.05, "hand_3d"), (0.05, "hand_verts"), (0.001, "hand_pose")))
        # Eq. 7's weights (TINY)
        body = 10 * terms["body_pose"] + 100 * (terms["body_3d"] + terms["fingers_3d"]) + terms["body_2d"]
        control_pred = control(batch["image"], hx.gt_boxes(batch), batch["smplx_pose"],
                               hx.sides(batch, "hand_joints2d"))
        control_terms = ha.hand_path_loss(control_pred, hx.targets_of(batch), cfg.model)[1]
        no_body = sum(getattr(cfg.model, f"w_{k}") * control_terms[k] for k in eq5)  # its Eq. 5
        if first is None:
            first = dict(hand=hand.item(), no_body=no_body.item(), body=body.item())
        optimizer.zero_grad()
        (loss + no_body).backward()
        optimizer.step()
    assert hand.item() < first["hand"] / 2
    assert no_body.item() < first["no_body"] / 2
    assert body.item() < first["body"] / 2



def test_keypoint_head_reads_a_peaked_map_at_that_cells_crop_pixel():
    cfg = ha.BASES_TINY.model  # 32-px crop, the ViT on its centre 32 x 24 (8 x 6 tokens): maps of 32 x 24
    head = hx.KeypointHead(cfg, ha.BASES_TINY.recipe.hand_keypoint_channels, ha.HandExpert(cfg).backbone.grid)
    S, margin = cfg.hand_crop, cfg.hand_crop // 8
    maps = torch.full((1, 21, 32, 24), -1e4)
    rows, cols = torch.arange(21) % 32, (torch.arange(21) * 5) % 24
    maps[0, torch.arange(21), rows, cols] = 0.0
    del head.net  # a fixed map in place of the decoder
    head.net = lambda x: maps
    pixels = torch.stack([margin + cols + 0.5, rows + 0.5], -1)[None].float()  # crop pixels of the cells' centres
    want = ha.to_crop(pixels, torch.tensor([[0.0, 0.0, S, S]]), torch.zeros(1, dtype=torch.bool))
    torch.testing.assert_close(head(torch.zeros(1, 48, 64)), want)


def test_build_model_without_the_trained_bases_says_so():
    with pytest.raises(ValueError, match="needs the trained bases"):
        hx.build_model(ha.TINY, None)


def test_the_experts_loss_reads_its_own_hands_labels_not_the_peoples(monkeypatch):
    """The expert's own images show fingers of their own (a hand dataset's hands), so `bases_loss` scores it against
    their labels: a prediction of exactly those rotations has zero rotation error, and a prediction of the people's
    fingers does not (the bug of reading S_hand_mano_pose for the own images)."""
    dataset = synthetic.SyntheticWholeBody(2, image_size=(256, 192), seed=5, hand_images=32)
    own = torch.utils.data.default_collate([dataset[i] for i in range(2)])
    monkeypatch.setattr(hx, "whole_body_loss", lambda *a: (torch.tensor(0.0), dict.fromkeys(hx.SMPLERX_TERMS, 0.0)))
    bases = hx.BASES.CONFIGS["tiny"]
    weights = hx.CONFIGS[bases.recipe.losses].model  # the AdapterConfig whose loss weights the stage uses
    errors = {}
    for key in ("hand_image_mano_pose", "hand_mano_pose"):
        pose = hx.sides(own, key).flatten(0, 1)  # (2B, 16, 3), left first
        out = (ha.matrix_to_rot6d(ha.axis_angle_to_matrix(pose)), torch.zeros(len(pose), 10), torch.zeros(len(pose), 3))
        errors[key] = float(hx.bases_loss((out, None, None), own, bases.model, weights, bases.recipe)[1]["hand_pose"])
    assert errors["hand_image_mano_pose"] < 1e-9 < 0.05 < errors["hand_mano_pose"], errors
