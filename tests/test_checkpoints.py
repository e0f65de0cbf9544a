"""checkpoints.py: files never half written, RNG states that round-trip through a weights_only file, and a
trained chain read back with the file that is wrong named.

The checkpoints train.py itself writes and resumes from are tested in tests/test_train.py.
"""
import os
import random

import numpy as np
import pytest
import torch
import torch.nn as nn

import checkpoints
from data import InputError


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


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
