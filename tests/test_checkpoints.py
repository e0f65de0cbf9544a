"""checkpoints.py: files never half written, RNG states that round-trip through a weights_only file, and a
trained chain read back with the file that is wrong named.

The checkpoints train.py itself writes and resumes from are tested in tests/test_train.py and tests/test_restarts.py,
with `assert_same_checkpoint` (here): two of train.py's checkpoints hold the same run state, key for key both ways.
"""
import io
import os
import random

import numpy as np
import pytest
import torch
import torch.nn as nn

from lab import checkpoints
from data import InputError


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


# What train.py's checkpoint holds (checkpoints.py's docstring), and no more: there is no GradScaler state (AMP is
# bf16 autocast, which needs none) and no scheduler state (the learning rate is learning_rate(cfg, step)), so a
# resumed run's state is these keys; "changes" only after a `--resume --set lr=...`.
CHECKPOINT_KEYS = {"model_name", "config_name", "config", "model", "optimizer", "step", "rng", "data", "history",
                   "train_time_s", "wall_time_s", "parents"}
OPTIONAL_KEYS = {"changes"}
RUN_FACTS = {"train_time_s", "wall_time_s"}  # seconds: a resumed run's differ from an uninterrupted one's


def assert_same_keys(a, b, what):
    """The two mappings have the same keys: names what `b` lacks (missing) and what it has beyond `a` (unexpected)."""
    missing, unexpected = sorted(map(str, set(a) - set(b))), sorted(map(str, set(b) - set(a)))
    assert not missing and not unexpected, f"{what}: missing {missing[:8]}, unexpected {unexpected[:8]}"


def assert_same_value(a, b, what):
    """Tensors bit for bit (dtype and shape too); containers element by element; other values by ==."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor), f"{what}: {type(a)} vs {type(b)}"
        assert a.dtype == b.dtype and a.shape == b.shape, f"{what}: {a.dtype} {tuple(a.shape)} vs {b.dtype} " \
            f"{tuple(b.shape)}"
        assert torch.equal(a, b), f"{what}: differs (max |a - b| {(a.double() - b.double()).abs().max().item():g})"
    elif isinstance(a, dict) and isinstance(b, dict):
        assert_same_keys(a, b, what)
        for k in a:
            assert_same_value(a[k], b[k], f"{what}[{k!r}]")
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        assert len(a) == len(b), f"{what}: {len(a)} vs {len(b)} entries"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_value(x, y, f"{what}[{i}]")
    else:
        assert a == b, f"{what}: {a!r} vs {b!r}"


def assert_same_checkpoint(a, b):
    """Two train.py checkpoints (e.g. an uninterrupted run's and a killed-and-resumed one's) hold the same run state,
    every key compared in both directions: the checkpoint's own keys (CHECKPOINT_KEYS, no more, no fewer), the model's
    tensors bit for bit, the optimiser's per-parameter state (every trained parameter has its moments and step) and
    param_groups (lr, betas, weight decay, ...), each rank's RNG states, the data position, the step, config and log.
    Only the run's seconds may differ."""
    assert CHECKPOINT_KEYS <= set(a) <= CHECKPOINT_KEYS | OPTIONAL_KEYS, \
        f"checkpoint keys: missing {sorted(CHECKPOINT_KEYS - set(a))}, unexpected {sorted(set(a) - CHECKPOINT_KEYS)}"
    assert_same_keys(a, b, "checkpoint")
    assert a["model"], "checkpoint['model'] is empty"
    for name in ("optimizer", "model", "rng", "data", "step"):
        assert_same_value(a[name], b[name], name)
    groups, state = a["optimizer"]["param_groups"], a["optimizer"]["state"]
    trained = [i for g in groups for i in g["params"]]
    if a["step"] > 0:  # AdamW: every parameter it updated has its step and both moments
        no_state = [i for i in trained if set(state.get(i, {})) < {"step", "exp_avg", "exp_avg_sq"}]
        assert trained and not no_state, f"optimizer: parameters {no_state[:8]} of {len(trained)} have no AdamW state"
    assert len(a["rng"]) >= 1 and all({"torch", "numpy", "python"} <= set(r) for r in a["rng"]), "rng: incomplete"
    for name in sorted(set(a) - {"optimizer", "model", "rng", "data", "step"} - RUN_FACTS):
        assert_same_value(a[name], b[name], name)


def test_save_file_leaves_no_partial_file_on_error(tmp_path):
    path = tmp_path / "ckpt.pt"
    checkpoints.save_file(dict(step=1, w=torch.arange(3.0)), path)
    with pytest.raises(Exception):
        checkpoints.save_file(dict(step=2, w=torch.zeros(10**6), bad=lambda: 0), path)  # fails while pickling
    assert os.listdir(tmp_path) == ["ckpt.pt"]
    assert load(path)["step"] == 1 and torch.equal(load(path)["w"], torch.arange(3.0))


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    device = torch.device("cpu")
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    torch.rand(3), np.random.rand(3), random.random(), np.random.randn()  # leaves numpy with a cached gaussian
    checkpoints.save_file(dict(rng=[checkpoints.rng_state(device)]), tmp_path / "rng.pt")
    expected = torch.rand(4), np.random.rand(4), np.random.randn(), random.random()
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    checkpoints.set_rng_state(load(tmp_path / "rng.pt")["rng"][0], device)
    got = torch.rand(4), np.random.rand(4), np.random.randn(), random.random()
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2:] == expected[2:]


class Head(nn.Module):
    """A second stage: a frozen parent and a head of its own."""

    def __init__(self, parent):
        super().__init__()
        self.parent, self.head = parent.requires_grad_(False), nn.Linear(3, 2)


def build_base(cfg, parent):
    return nn.Linear(cfg["width"], 3)


def test_load_trained_rebuilds_the_chain_and_names_the_missing_parent(tmp_path):
    """Each stage's file holds its own tensors: the chain comes back equal, oldest first, frozen and in eval
    mode; without the parent's file, the error names that file."""
    configs = {"tiny": dict(width=4)}  # a preset: any type its saved fields rebuild (a dict here)
    torch.manual_seed(0)
    base = build_base(configs["tiny"], None)
    model = Head(base)
    for stage, m, parent in (("base", base, None), ("head", model, base)):
        (tmp_path / stage).mkdir()
        checkpoints.save_file(dict(model_name=stage, config_name="tiny", config=dict(width=4),
                                   model=checkpoints.own_state(m, parent)), tmp_path / stage / "ckpt.pt")
    assert set(load(tmp_path / "head" / "ckpt.pt")["model"]) == {"head.weight", "head.bias"}
    chain = [("base", configs, build_base), ("head", configs, lambda cfg, parent: Head(parent))]
    rebuilt, cfg = checkpoints.load_trained(tmp_path / "head" / "ckpt.pt", chain)
    assert cfg == dict(width=4) and not rebuilt.training
    assert not any(p.requires_grad for p in rebuilt.parameters())
    for name, value in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[name], value), name
    os.remove(tmp_path / "base" / "ckpt.pt")
    with pytest.raises(InputError, match=f"{tmp_path / 'base' / 'ckpt.pt'}: no such checkpoint"):
        checkpoints.load_trained(tmp_path / "head" / "ckpt.pt", chain)


def test_load_trained_refuses_a_parent_other_than_the_one_trained_from(tmp_path):
    """A stage records its parents' content (train.py's `parents`): a parent retrained or replaced since is named,
    not silently combined with weights that were fitted to another one."""
    configs = {"tiny": dict(width=4)}
    torch.manual_seed(0)
    base = build_base(configs["tiny"], None)
    model = Head(base)
    (tmp_path / "base").mkdir(), (tmp_path / "head").mkdir()
    base_path, head_path = tmp_path / "base" / "ckpt.pt", tmp_path / "head" / "ckpt.pt"
    checkpoints.save_file(dict(model_name="base", config_name="tiny", config=dict(width=4),
                               model=checkpoints.own_state(base, None)), base_path)
    checkpoints.save_file(dict(model_name="head", config_name="tiny", config=dict(width=4),
                               model=checkpoints.own_state(model, base),
                               parents={"base": checkpoints.file_hash(base_path)}), head_path)
    chain = [("base", configs, build_base), ("head", configs, lambda cfg, parent: Head(parent))]
    checkpoints.load_trained(head_path, chain)  # the same parent: loads
    with torch.no_grad():
        base.weight.add_(1e-3)  # the parent retrained: other weights in the same place
    checkpoints.save_file(dict(model_name="base", config_name="tiny", config=dict(width=4),
                               model=checkpoints.own_state(base, None)), base_path)
    with pytest.raises(InputError, match=rf"{head_path}: was trained from a 'base' checkpoint .* but {base_path} "
                                         r"differs \(retrained or replaced since\)"):
        checkpoints.load_trained(head_path, chain)


def a_checkpoint(steps=2):
    """A checkpoint as train.py writes one, of a small model after `steps` AdamW steps."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        model(torch.randn(5, 3)).square().mean().backward()
        optimizer.step()
    return dict(model_name="m", config_name="tiny", config=dict(width=4), model=model.state_dict(),
                optimizer=optimizer.state_dict(), step=steps, rng=[checkpoints.rng_state(torch.device("cpu"))],
                data=dict(data="synthetic", seed=0, train_samples=8, samples_seen=8 * steps), history=[],
                train_time_s=1.0, wall_time_s=2.0, parents={})


def clone(ckpt):
    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("spoil, message", [
    (lambda c: c["optimizer"].update(state={}), r"optimizer\['state'\]: missing \['0', '1'"),  # a dropped state
    (lambda c: c["optimizer"]["state"][0].pop("exp_avg_sq"), r"optimizer\['state'\]\[0\]: missing \['exp_avg_sq'\]"),
    (lambda c: c["optimizer"]["state"][2]["exp_avg"].add_(1e-7), r"optimizer\['state'\]\[2\]\['exp_avg'\]: differs"),
    (lambda c: c["optimizer"]["param_groups"][0].update(lr=1e-3), r"optimizer\['param_groups'\]\[0\]\['lr'\]"),
    (lambda c: c["model"].pop("1.running_mean"), r"model: missing \['1.running_mean'\]"),
    (lambda c: c["model"].update(extra=torch.zeros(1)), r"model: missing \[\], unexpected \['extra'\]"),
    (lambda c: c["model"]["1.num_batches_tracked"].add_(1), r"model\['1.num_batches_tracked'\]: differs"),
    (lambda c: c["model"].update({"0.bias": c["model"]["0.bias"].double()}), r"model\['0.bias'\]: torch.float32"),
    (lambda c: c["rng"][0]["numpy"].add_(1), r"rng\[0\]\['numpy'\]: differs"),
    (lambda c: c["rng"].append(c["rng"][0]), r"rng: 1 vs 2 entries"),
    (lambda c: c["data"].update(samples_seen=0), r"data\['samples_seen'\]: 16 vs 0"),
    (lambda c: c.update(scaler={}), r"checkpoint: missing \[\], unexpected \['scaler'\]"),
    (lambda c: c.pop("history"), r"checkpoint: missing \['history'\]"),
    (lambda c: c["history"].append(dict(step=1, loss=0.5)), r"history: 0 vs 1 entries"),
])
def test_assert_same_checkpoint_names_each_difference_in_either_direction(spoil, message):
    """The comparison the resume tests use: equal checkpoints pass whatever their seconds; each difference a resume
    could make (a dropped or partial optimiser state, another lr, a lost or extra buffer, an RNG or data position, a
    key one side has alone) fails naming it, whichever side has it."""
    a = a_checkpoint()
    b = dict(clone(a), train_time_s=7.0, wall_time_s=9.0)
    assert_same_checkpoint(a, b)
    spoilt = clone(a)
    spoil(spoilt)
    with pytest.raises(AssertionError, match=message):
        assert_same_checkpoint(a, spoilt)
    with pytest.raises(AssertionError):  # the other way round
        assert_same_checkpoint(spoilt, a)


def test_assert_same_checkpoint_needs_an_optimiser_state_for_every_trained_parameter():
    """Two checkpoints that both lost their optimiser state are equal to each other, and still fail: after a step,
    AdamW holds a state for every parameter it trains."""
    a = a_checkpoint()
    a["optimizer"]["state"].pop(3)
    with pytest.raises(AssertionError, match=r"optimizer: parameters \[3\] of 6 have no AdamW state"):
        assert_same_checkpoint(a, clone(a))
