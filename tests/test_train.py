"""train.py: DDP equivalence, checkpoints and resume, --set parsing, one-line errors.

Most tests train a small stand-in model (defined here, registered in train.MODELS as "standin") so
they exercise train.py's machinery in seconds; `test_simplehand_*` run the real model briefly.
Run as a script, this file is train.py with the stand-in registered, which is how the subprocess
tests start it (`python tests/test_train.py --model standin ...` or under torchrun).
"""
import contextlib
import dataclasses
import io
import json
import os
import pathlib
import signal
import subprocess
import sys
import types
import typing

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings, strategies as st

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from lab import checkpoints  # noqa: E402
from lab import configs  # noqa: E402
from lab import distributed  # noqa: E402
from lab.files import atomic_write  # noqa: E402
import train  # noqa: E402
from test_checkpoints import assert_same_checkpoint  # noqa: E402

# ---------------------------------------------------------------------------------------------
# Stand-in papers, registered through the public protocol only: a one-hidden-layer network on a
# dataset of images and point sets (keys no paper uses, so the trainer cannot lean on a paper's),
# and a second stage that starts from the first, frozen, and trains a new head on it.


@dataclasses.dataclass
class StandInConfig:
    image_size: int = 8  # pixels
    width: int = 32  # hidden units
    dropout: float = 0.1  # > 0, so a resumed run must restore the torch RNG to match
    batch_size: int = 8  # global batch
    lr: float = 1e-2
    lr_final: float = 1e-4
    warmup_steps: int = 3
    max_steps: int = 12
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    amp: bool = False
    widths: tuple = (4, 8)  # --set parsing only
    mode: typing.Literal["a", "b"] = "a"  # --set parsing only
    scale: typing.Optional[float] = None  # --set parsing only
    flag: bool = False  # --set parsing only


NUM_POINTS = 10


class StandInModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(3 * cfg.image_size ** 2, cfg.width), nn.ReLU(),
                                  nn.Dropout(cfg.dropout))
        self.points = nn.Linear(cfg.width, NUM_POINTS * 3)

    def forward(self, images):
        return self.points(self.body(images)).view(-1, NUM_POINTS, 3)


class StandInHead(nn.Module):
    """Stage 2: the trained stage-1 network, frozen, and a new head on its hidden features."""

    def __init__(self, cfg, base):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.head = nn.Linear(cfg.width, NUM_POINTS * 3)

    def forward(self, images):
        return self.base(images) + self.head(self.base.body(images)).view(-1, NUM_POINTS, 3)


def build_standin(cfg, parent):
    assert parent is None
    return StandInModel(cfg)


def build_standin_head(cfg, parent):
    assert isinstance(parent, StandInModel) and not parent.training
    return StandInHead(cfg, parent)


def standin_loss(model, batch, cfg, step):
    """Squared errors, not L1: Adam's first step is lr g / (|g| + eps), and where L1's sign terms
    cancel exactly, g is 0 in one process but ~1e-9 after averaging two ranks' means, a step
    difference of a fraction of lr that is rounding, not DDP. A smooth loss avoids exact zeros."""
    err = (model(batch["image"]) - batch["points"]).square()
    terms = dict(xy=err[..., :2].mean(), z=err[..., 2].mean())
    return 1e2 * (terms["xy"] + terms["z"]), terms


def standin_predict(model, batch, cfg):
    return dict(points=model(batch["image"]))


def standin_lr(cfg, step):
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr + (cfg.lr_final - cfg.lr) * (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)


class StandInSet(torch.utils.data.Dataset):
    """Sample i: latent z from (seed, i); image and points linear in z; with `augment`, image noise
    from (seed, epoch, i), so the epoch a sample is read in matters."""

    def __init__(self, num_samples, image_size, seed, augment):
        self.n, self.size, self.seed, self.augment, self.epoch = num_samples, image_size, seed, augment, 0
        g = torch.Generator().manual_seed(1234)  # fixed maps, the same for every split
        self.to_image, self.to_points = (torch.randn(d, 6, generator=g) for d in (3 * image_size ** 2, NUM_POINTS * 3))

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        z = torch.randn(6, generator=torch.Generator().manual_seed(self.seed * 100_003 + i))
        image = torch.sigmoid(self.to_image @ z).view(3, self.size, self.size)
        if self.augment:
            seed = (self.seed * 1009 + self.epoch) * 100_003 + i
            noise = torch.rand(image.shape, generator=torch.Generator().manual_seed(seed))
            image = (image + 0.05 * noise).clamp(0, 1)
        return dict(image=image, points=(self.to_points @ z).view(NUM_POINTS, 3) * 0.1)


def standin_data(kind, path, split, cfg, seed, num_samples):
    """synthetic: rendered once by train.py (no augmentation); npz:PATH (PATH is not read): read on
    the fly with augmentation, through the (epoch, index) path."""
    seed = seed + (split == "evaluation") * 777
    return StandInSet(num_samples if kind == "synthetic" or split == "training" else 24, cfg.image_size, seed,
                      augment=kind != "synthetic" and split == "training")


def standin_metrics(pred, gt):
    """Point errors in mm: the mean, and the fraction under 50 mm."""
    err = (pred["points"] - gt["points"]).norm(dim=-1)  # (n, P)
    return dict(error_mm=float(err.mean() * 1000), under50=float((err < 0.05).float().mean()))


def standin_baseline(labels):
    """Always the training set's mean point set."""
    mean = labels["points"].mean(0)
    return lambda gt: dict(points=mean.expand(len(gt["points"]), -1, -1))


def standin_picture(path, eval_set, pred, gt):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(3, 3))
    ax.scatter(*gt["points"][:4, :, :2].reshape(-1, 2).T, color="green")
    ax.scatter(*pred["points"][:4, :, :2].reshape(-1, 2).T, color="red")
    fig.savefig(path)
    plt.close(fig)


STANDIN_PAPER = types.SimpleNamespace(CONFIGS={"tiny": StandInConfig()}, build_model=build_standin,
                                      training_loss=standin_loss, predict=standin_predict, learning_rate=standin_lr)
STANDIN_HEAD_PAPER = types.SimpleNamespace(**dict(vars(STANDIN_PAPER), build_model=build_standin_head))
STANDINS = dict(
    standin=train.Stage(STANDIN_PAPER, data=standin_data, metrics=standin_metrics, baseline=standin_baseline,
                        picture=standin_picture, data_kinds=("synthetic", "npz"), train_samples=64, eval_samples=16),
    standin_head=train.Stage(STANDIN_HEAD_PAPER, data=standin_data, metrics=standin_metrics, baseline=standin_baseline,
                             picture=standin_picture, starts_from="standin", data_kinds=("synthetic", "npz", "other"),
                             train_samples=64, eval_samples=16),
)


@pytest.fixture(autouse=True)
def register_standins(monkeypatch):
    for name, stage in STANDINS.items():
        monkeypatch.setitem(train.MODELS, name, stage)


def run_script(args, tmp_path, nproc=1, check=True, env=None, model="standin", torchrun=(), session=False,
               timeout=300):
    """This file as train.py with the stand-ins, in a subprocess (torchrun when nproc > 1, with the extra
    `torchrun` flags; in a session and process group of its own with `session`), stopped after `timeout` seconds.
    Several ranks run on the CPU (--device cpu): a machine with one GPU must pass these tests too."""
    launcher = ([sys.executable] if nproc == 1
                else [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                      *torchrun])
    proc = subprocess.run(launcher + [__file__, "--model", model, "--device", "cpu"] + args, cwd=tmp_path,
                          capture_output=True, text=True, timeout=timeout, start_new_session=session,
                          env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})))
    if check:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------------------------
# --set, and one-line errors


def error_of(argv, main=train.main):
    """The one-line message `main(argv)` stops with (train.py's, or another script's that shares its errors), run
    as its command runs it (distributed.command): exit status 2 and one line "SCRIPT: error: MESSAGE" on stderr,
    no traceback. -> MESSAGE."""
    script, err = f"{main.__module__}.py", io.StringIO()
    with pytest.raises(SystemExit) as info, contextlib.redirect_stderr(err):
        distributed.command(lambda: main(argv), script)
    line = err.getvalue()
    assert info.value.code == 2, f"exit status {info.value.code!r}, expected 2 (bad input); stderr: {line}"
    assert line.startswith(f"{script}: error: ") and line.count("\n") == 1, line
    return line[len(f"{script}: error: "):-1]


def test_set_parses_each_field_by_its_type():
    cfg = train.apply_overrides(StandInConfig(),
                                ["lr=0.5", "width=7", "widths=1, 2,3", "mode=b", "scale=2", "flag=yes"])
    assert (cfg.lr, cfg.width, cfg.widths, cfg.mode, cfg.scale, cfg.flag) == (0.5, 7, (1, 2, 3), "b", 2.0, True)
    assert type(cfg.width) is int and all(type(w) is int for w in cfg.widths)
    assert train.apply_overrides(cfg, ["scale=None", "flag=0"]).scale is None
    assert (train.apply_overrides(cfg, ["widths=(5, 6)"]).widths == train.apply_overrides(cfg, ["widths=[5,6]"]).widths
            == (5, 6))
    assert StandInConfig().lr == 1e-2  # the preset itself is untouched


@dataclasses.dataclass
class NestedModel:
    width: int = 4
    widths: tuple = (1, 2)


@dataclasses.dataclass
class NestedRecipe:
    lr: float = 1e-2
    max_steps: int = 5


@dataclasses.dataclass
class NestedPreset:
    model: NestedModel = dataclasses.field(default_factory=NestedModel)
    recipe: NestedRecipe = dataclasses.field(default_factory=NestedRecipe)


def test_set_reaches_a_nested_leaf_by_name_or_path_and_leaves_the_rest():
    cfg = train.apply_overrides(NestedPreset(), ["lr=0.5", "model.widths=3,4", "max_steps=7"])
    assert cfg == NestedPreset(NestedModel(widths=(3, 4)), NestedRecipe(lr=0.5, max_steps=7))
    assert configs.config_leaves(cfg) == dict(width=4, widths=(3, 4), lr=0.5, max_steps=7)
    assert configs.recipe_of(cfg).max_steps == 7 and NestedPreset().recipe.lr == 1e-2  # the preset is untouched
    assert "valid fields: width, widths, lr, max_steps" in error_of(["x"], lambda _: train.apply_overrides(
        NestedPreset(), ["nope=1"]))


def test_a_checkpoints_config_dict_rebuilds_the_nested_preset():
    cfg = configs.with_fields(NestedPreset(), lr=0.25, width=9)
    assert configs.config_from_dict(NestedPreset, dataclasses.asdict(cfg)) == cfg


def test_a_leaf_named_twice_in_a_preset_is_refused():
    @dataclasses.dataclass
    class Twice:
        model: NestedModel = dataclasses.field(default_factory=NestedModel)
        other: NestedModel = dataclasses.field(default_factory=NestedModel)
    with pytest.raises(ValueError, match="leaf 'width' is both model.width and other.width"):
        configs.config_leaves(Twice())


@pytest.mark.parametrize("stage", list(train.MODELS))
def test_every_preset_names_each_leaf_once_and_survives_a_checkpoint(stage):
    for name, preset in train.MODELS[stage].paper.CONFIGS.items():
        leaves = configs.config_leaves(preset)  # raises on a name used twice
        assert {"batch_size", "lr", "weight_decay", "max_steps", "grad_clip", "amp"} <= set(leaves), (stage, name)
        assert set(train.MODELS[stage].data_fields) | set(train.MODELS[stage].shares_fields) <= set(leaves)
        assert configs.config_from_dict(type(preset), dataclasses.asdict(preset)) == preset, (stage, name)


@pytest.mark.parametrize("item, expected", [
    ("nope=1", "StandInConfig has no field 'nope'; valid fields: image_size, width, dropout, batch_size, lr"),
    ("width=abc", "--set width=abc: expected a value of type int"),
    ("flag=maybe", "expected a value of type bool"),
    ("mode=c", "--set mode=c: expected one of a, b"),
    ("lr", "--set 'lr': expected KEY=VALUE"),
])
def test_set_errors_name_the_field_and_what_was_expected(item, expected):
    assert expected in error_of([item], lambda items: train.apply_overrides(StandInConfig(), items))


@pytest.mark.parametrize("argv, expected", [
    (["--model", "nope"], "unknown --model 'nope'; expected one of: simplehand"),
    (["--model", "standin", "--config", "huge"], "unknown --config 'huge' for standin; expected one of: tiny"),
    (["--model", "standin", "--data", "npz:/no/such/dir"], "folder '/no/such/dir' does not exist"),
    (["--model", "standin", "--data", "imagenet"], "--data 'imagenet': standin expects synthetic, npz:PATH"),
    (["--model", "standin", "--data", "npz"], "standin expects synthetic, npz:PATH"),
    (["--model", "standin_head", "--data", "other:/tmp"],
     "standin (which standin_head starts from) expects synthetic, npz:PATH"),
    (["--model", "simplehand", "--data", "freihand"], "simplehand expects synthetic, freihand:PATH, npz:PATH"),
    (["--model", "hmr_adapter", "--data", "hmr2:data/x.npz"], "hmr_adapter expects synthetic, wholebody:PATH"),
    (["--model", "hmr_adapter", "--data", "wholebody:/nonexistent/ehf.npz"],
     "file '/nonexistent/ehf.npz' does not exist; expected a whole-body .npz (data.WholeBodyNpz)"),
    (["--model", "standin", "--set", "bogus=1"], "has no field 'bogus'"),
    # a paper config without its ImageNet weights file is refused before timm is imported or data rendered
    (["--model", "simplehand", "--config", "paper"],
     "simplehand: backbone 'hrnet_w64' starts from ImageNet weights (Sec. 4.1), read from a local file"),
    (["--model", "simplehand", "--config", "paper", "--set", "backbone_weights=/no/such.pth"],
     "backbone_weights='/no/such.pth': no such file"),
    # HMR-Adapter's paper bases without the released files: refused before 1.3B parameters are built
    (["--model", "hmr_adapter", "--config", "paper"],
     "base checkpoint 'checkpoints/hamer.ckpt' (ReleasedWeights.hamer_checkpoint) does not exist"),
])
def test_bad_input_gives_one_line_error(argv, expected, tmp_path):
    assert expected in error_of(argv + ["--out", str(tmp_path)])


def test_every_stage_of_the_chain_is_checked_before_the_first_trains(tmp_path, monkeypatch):
    """The protocol's check_inputs runs for --model and each stage it starts from, with the config each is
    built with and --data's kind and path: a parent's missing input stops the run before anything trains."""
    seen = []

    def check(cfg, kind, path):
        seen.append((cfg.width, kind, path))
        raise FileNotFoundError("STANDIN_FILE: missing /no/such.npy\nsecond line")

    paper = types.SimpleNamespace(**dict(vars(STANDIN_PAPER), check_inputs=check))
    monkeypatch.setitem(train.MODELS, "standin", dataclasses.replace(STANDINS["standin"], paper=paper))
    message = error_of(["--model", "standin_head", "--data", "npz:/tmp", "--set", "width=7", "--out", str(tmp_path)])
    assert message == "standin (which standin_head starts from): STANDIN_FILE: missing /no/such.npy"
    assert seen == [(7, "npz", "/tmp")] and not os.listdir(tmp_path)


def test_a_finished_parent_is_checked_with_its_checkpoints_config(tmp_path, monkeypatch):
    """A parent reused from OUT is checked with the config it was trained with (--set does not reach it), the
    stage itself with the preset and --set."""
    train.main(["--model", "standin", "--out", str(tmp_path), "--set", "width=7", "--max-steps", "1"])
    seen = []

    def check(cfg, kind, path):
        seen.append(cfg.width)
        if len(seen) == 2:
            raise ValueError("stop here")

    for name in STANDINS:
        paper = types.SimpleNamespace(**dict(vars(STANDINS[name].paper), check_inputs=check))
        monkeypatch.setitem(train.MODELS, name, dataclasses.replace(STANDINS[name], paper=paper))
    assert error_of(["--model", "standin_head", "--out", str(tmp_path), "--set", "width=9"]).endswith(
        "standin_head: stop here")
    assert seen == [7, 9] and not (tmp_path / "standin_head").exists()


def test_genhmr_on_hmr2_without_the_regressor_stops_before_the_tokenizer_trains(tmp_path):
    """The image stages score --data hmr2 by the benchmarks' protocol: without $HMR_J_REGRESSOR the whole chain
    is refused at once (exit 2, one line naming the variable), no stage folder or checkpoint written."""
    (tmp_path / "bench.npz").write_bytes(b"")  # only its existence is checked before the stages' inputs
    env = {k: v for k, v in os.environ.items() if k != "HMR_J_REGRESSOR"}
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--model", "genhmr", "--data",
                           f"hmr2:{tmp_path / 'bench.npz'}", "--out", str(tmp_path / "out"), "--device", "cpu"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert proc.stderr.startswith("train.py: error: genhmr_backbone (which genhmr starts from): HMR_J_REGRESSOR is "
                                  "not set"), proc.stderr
    assert not (tmp_path / "out").exists()


def test_hmr_adapter_bases_check_the_vertex_ids_before_training(tmp_path, monkeypatch):
    monkeypatch.setenv("HMR_MANO_SMPLX_VERTEX_IDS", str(tmp_path / "none.pkl"))
    monkeypatch.setenv("HMR_FLAME_VERTEX_IDS", str(tmp_path / "none.npy"))
    message = error_of(["--model", "hmr_adapter_bases", "--out", str(tmp_path / "out")])
    assert message == f"hmr_adapter_bases: HMR_FLAME_VERTEX_IDS: missing {tmp_path / 'none.npy'} " \
                      "(expected SMPL-X__FLAME_vertex_ids.npy)"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind, expected", [("freihand", "FreiHAND: missing"), ("npz", "NpzHands: missing")])
def test_empty_dataset_folder_names_the_missing_file(kind, expected, tmp_path):
    message = error_of(["--model", "simplehand", "--data", f"{kind}:{tmp_path}", "--out", str(tmp_path / "out")])
    assert expected in message and str(tmp_path) in message


def test_resume_rejects_a_checkpoint_of_another_model(tmp_path):
    (tmp_path / "standin").mkdir()
    path = tmp_path / "standin" / "ckpt.pt"
    checkpoints.save_file(dict(model_name="simplehand", model={}), path)
    message = error_of(["--model", "standin", "--out", str(tmp_path), "--resume"])
    assert "holds a 'simplehand' model; expected a checkpoint of stage 'standin'" in message
    path.write_bytes(b"not a checkpoint")
    assert "not a readable train.py checkpoint" in error_of(["--model", "standin", "--out", str(tmp_path), "--resume"])
    os.remove(path)
    assert "no such checkpoint" in error_of(["--model", "standin", "--out", str(tmp_path), "--resume"])


def test_more_ranks_than_gpus_is_refused_in_one_line(monkeypatch, tmp_path):
    """On a node with one GPU, two local ranks would send rank 1 to cuda:1 ("invalid device ordinal")."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    message = error_of(["--model", "standin", "--out", str(tmp_path)])
    assert "2 ranks on this node but 1 GPU(s)" in message and "--device cpu" in message


# ---------------------------------------------------------------------------------------------
# Data order


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 40), per_rank=st.integers(1, 7), world=st.integers(1, 4), seed=st.integers(0, 2**31))
def test_step_batches_split_each_global_batch_over_ranks(n, per_rank, world, seed):
    """The ranks' parts of a step are the single process's batch; every epoch is a permutation;
    starting at a later step gives the same stream as running up to it."""
    batch, steps = per_rank * world, 2 * n // per_rank + 3
    single = list(train.distributed.StepBatches(n, batch, 0, 1, seed, 0, steps))
    ranks = [list(train.distributed.StepBatches(n, batch, r, world, seed, 0, steps)) for r in range(world)]
    assert all(sum((ranks[r][s] for r in range(world)), []) == single[s] for s in range(steps))
    flat = sum(single, [])
    for epoch in range(len(flat) // n):
        chunk = flat[epoch * n:(epoch + 1) * n]
        assert {e for e, _ in chunk} == {epoch} and sorted(i for _, i in chunk) == list(range(n))
    assert list(train.distributed.StepBatches(n, batch, 0, 1, seed, steps // 2, steps)) == single[steps // 2:]


def test_step_batches_depend_on_the_seed():
    a = sum(train.distributed.StepBatches(100, 10, 0, 1, 0, 0, 10), [])
    b = sum(train.distributed.StepBatches(100, 10, 0, 1, 1, 0, 10), [])
    assert a != b and sorted(a) == sorted(b)


# ---------------------------------------------------------------------------------------------
# Checkpoints


def test_a_stand_in_paper_trains_checkpoints_resumes_and_evaluates(tmp_path):
    """A paper registered through the protocol alone: it learns (beats its constant baseline), its
    finished checkpoint reloads with weights_only=True and holds what a resume needs, and a resume
    of a finished run trains no further and reproduces the same metrics."""
    args = ["--model", "standin", "--out", str(tmp_path), "--train-samples", "64", "--eval-samples", "16",
            "--log-every", "20"]
    train.main(args + ["--max-steps", "200", "--ckpt-every", "50", "--set", "dropout=0"])
    out = tmp_path / "standin"
    ckpt = load(out / "ckpt.pt")
    assert ckpt["model_name"] == "standin" and ckpt["step"] == 200
    assert ckpt["config"] == dataclasses.asdict(StandInConfig(max_steps=200, dropout=0.0))
    assert ckpt["data"] == dict(data="synthetic", seed=0, train_samples=64, samples_seen=1600, epoch=25,
                                position_in_epoch=0)
    assert len(ckpt["rng"]) == 1 and len(ckpt["history"]) == 10 and ckpt["optimizer"]["state"]
    model = StandInModel(StandInConfig())
    model.load_state_dict(ckpt["model"])  # every tensor, the right shapes
    report = json.loads((out / "metrics.json").read_text())
    assert report["steps"] == 200 and {"error_mm", "under50", "baseline_error_mm", "wall_time_s"} <= set(report)
    assert report["error_mm"] < 0.5 * report["baseline_error_mm"], report  # it learned
    assert (out / "predictions.png").stat().st_size > 5_000
    train.main(args + ["--resume", "--set", "dropout=0"])
    assert json.loads((out / "metrics.json").read_text())["error_mm"] == report["error_mm"]
    assert "pass the same values" in error_of(args + ["--resume", "--seed", "3", "--set", "dropout=0"])
    # the run continued is the run that wrote the checkpoint: another config is refused, naming the field
    assert "continues another run: dropout 0.0 then, 0.1 now" in error_of(args + ["--resume"])
    assert f"{out / 'ckpt.pt'} exists: --resume continues it" in error_of(args)  # never overwritten unasked


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_one_rank_on_cuda_trains_and_scores_a_stage(tmp_path):
    """One process on a GPU: the labels scored beside the predictions come back to the CPU with them (a
    single-rank CUDA run once stopped at its first evaluation, "found at least two devices, cuda:0 and cpu")."""
    train.main(["--model", "standin", "--out", str(tmp_path), "--train-samples", "64", "--eval-samples", "16",
                "--max-steps", "20", "--device", "cuda"])
    report = json.loads((tmp_path / "standin" / "metrics.json").read_text())
    assert report["world_size"] == 1 and report["error_mm"] < report["baseline_error_mm"], report


def test_a_second_stage_trains_its_parent_first_and_keeps_it_frozen(tmp_path):
    """--model standin_head first trains the missing stage it starts from (with this command's
    --max-steps and the --set fields it has), then a head on the frozen parent: the optimiser holds
    only the head, the checkpoint only the head's tensors (the parent's come back from the parent's
    checkpoint), and the parent's weights do not move."""
    common = ["--out", str(tmp_path), "--log-every", "5", "--set", "dropout=0"]
    train.main(["--model", "standin_head", "--max-steps", "10"] + common)
    parent, head = load(tmp_path / "standin" / "ckpt.pt"), load(tmp_path / "standin_head" / "ckpt.pt")
    assert parent["step"] == head["step"] == 10 != StandInConfig().max_steps and parent["config"]["dropout"] == 0
    assert set(head["model"]) == {"head.weight", "head.bias"}
    assert len(head["optimizer"]["param_groups"][0]["params"]) == 2
    model = StandInHead(StandInConfig(), StandInModel(StandInConfig()))
    model.base.load_state_dict(parent["model"])
    model.load_state_dict(head["model"], strict=False)
    # the head trained on top of the parent's final weights, which the second stage never changed
    rebuilt, _ = train.trained_model("standin_head", types.SimpleNamespace(out=str(tmp_path)), torch.device("cpu"))
    for name, value in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[name], value), name
    # a finished parent is not trained again; the second stage resumes on its own
    again = run_script(["--max-steps", "12", "--resume"] + common, tmp_path, model="standin_head")
    assert "stage standin" not in again.stdout and "resumed from" in again.stdout
    assert torch.equal(load(tmp_path / "standin" / "ckpt.pt")["model"]["points.weight"],
                       parent["model"]["points.weight"])
    assert load(tmp_path / "standin_head" / "ckpt.pt")["step"] == 12


def test_param_groups_train_at_their_own_rate(tmp_path, monkeypatch):
    """A paper's `param_groups` gives each group its own multiple of the schedule: at scale 0 the output
    layer never moves (AdamW's decay is scaled by the lr too), the hidden layer trains at half the lr;
    groups that miss a trainable parameter are refused, naming it."""
    groups = lambda model, cfg: [(0.5, model.body.parameters()), (0.0, model.points.parameters())]
    paper = types.SimpleNamespace(**dict(vars(STANDIN_PAPER), param_groups=groups))
    monkeypatch.setitem(train.MODELS, "standin", dataclasses.replace(STANDINS["standin"], paper=paper))
    args = ["--model", "standin", "--out", str(tmp_path), "--set", "dropout=0", "--device", "cpu"]
    train.main(args)
    cfg, ckpt = StandInConfig(), load(tmp_path / "standin" / "ckpt.pt")
    train.seed_everything(0)
    initial = StandInModel(cfg).state_dict()
    assert torch.equal(ckpt["model"]["points.weight"], initial["points.weight"])
    assert not torch.equal(ckpt["model"]["body.1.weight"], initial["body.1.weight"])
    lrs = [g["lr"] for g in ckpt["optimizer"]["param_groups"]]
    assert lrs == [0.5 * standin_lr(cfg, cfg.max_steps - 1), 0.0]
    paper.param_groups = lambda model, cfg: [(1.0, model.body.parameters())]
    assert "in none ['points.bias', 'points.weight']" in error_of(args + ["--out", str(tmp_path / "b")])


def test_two_data_kinds_in_one_out_render_their_own_images(tmp_path):
    """--data ambiguous and --data synthetic of the same stage, seed and size in one OUT: two cache files, and
    the second kind's images are its own, not the first's read back from the cache."""
    cfg, ranks = train.MODELS["genhmr_backbone"].paper.CONFIGS["tiny"], distributed.Ranks(0, 1, torch.device("cpu"))
    sets = {}
    for kind in ("ambiguous", "synthetic"):
        args = types.SimpleNamespace(data=kind, seed=0, out=str(tmp_path))
        sets[kind] = train.build_dataset("genhmr_backbone", cfg, "training", 4, args, ranks)
    assert sorted(p.name.split("-")[1] for p in (tmp_path / "cache").iterdir()) == ["ambiguous", "synthetic"]
    for i in range(4):
        assert not torch.equal(sets["ambiguous"][i]["image"], sets["synthetic"][i]["image"]), i


def test_the_render_cache_key_changes_with_every_module_the_renders_import_and_no_other(monkeypatch):
    """cache_version follows the data function's imports (train.project_modules, those inside functions too): one
    character more in any of those files renders anew; in a file the renders do not import (a paper, the trainer,
    the demo), it keeps the cache. The modules the renders are known to run are among those followed."""
    stage, fields = train.MODELS["hmr_adapter"], {"image_size": (256, 192), "hand_image": 0}
    modules = train.project_modules(stage.data.__module__)
    assert {"data", "bodymodels", "metrics", "lab", "lab.synthetic", "lab.render", "lab.standins"} <= set(modules)
    unrelated = ["train", "demo", "genhmr", "simplehand", "hmr_adapter", "lab.ablate", "lab.hmr_adapter_experiments"]
    assert not set(unrelated) & set(modules)
    read, before = train.read_source, train.cache_version(stage, "synthetic", fields)
    for name in list(modules) + unrelated:
        path = train.ROOT + "/" + (name.replace(".", "/") + ".py" if name != "lab" else "lab/__init__.py")
        monkeypatch.setattr(train, "read_source", lambda p, path=path: read(p) + ("#" if p == path else ""))
        changed = train.cache_version(stage, "synthetic", fields) != before
        assert changed == (name in modules), name
    monkeypatch.setattr(train, "read_source", read)
    assert train.cache_version(stage, "synthetic", dict(fields, hand_image=32)) != before  # a data field
    assert train.cache_version(stage, "ambiguous", fields) != before  # --data's kind


def test_train_names_no_paper_outside_its_models_table():
    """The trainer speaks a protocol: every name, attribute and string of train.py that names a paper lies inside the
    MODELS assignment, and it imports no paper file, only the experiments modules MODELS's rows are made of."""
    import ast
    import re

    tree = ast.parse((ROOT / "train.py").read_text())
    models = next(node for node in tree.body if isinstance(node, ast.Assign)
                  and any(getattr(t, "id", None) == "MODELS" for t in node.targets))
    inside = {id(node) for node in ast.walk(models)}
    paper = re.compile(r"simplehand|genhmr|hmr_adapter|hmr-adapter", re.IGNORECASE)
    outside = []
    for node in ast.walk(tree):
        if isinstance(node, ast.alias):
            assert not paper.fullmatch(node.name.split(".")[-1]), f"train.py imports the paper file {node.name}"
            continue
        text = (node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else
                node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else "")
        if paper.search(text) and id(node) not in inside:
            outside.append((node.lineno, text[:60]))
    assert not outside, f"train.py names a paper outside MODELS: {outside}"
    assert any(paper.search(getattr(node, "id", "")) for node in ast.walk(models))  # the check sees the table


# ---------------------------------------------------------------------------------------------
# DDP and resume (subprocesses)


def test_two_ranks_take_the_same_first_step_as_one_rank(tmp_path):
    """Global batch 8: two gloo ranks with 4 samples each == one process with 8, after one AdamW step
    with gradient clipping. The two-rank run also renders the synthetic cache in two shards and
    gathers the held-out predictions from both ranks: both must match the single process."""
    common = ["--max-steps", "1", "--set", "dropout=0", "--train-samples", "24", "--eval-samples", "10",
              "--device", "cpu"]
    two = run_script(common + ["--out", "two"], tmp_path, nproc=2)
    assert "terminate called" not in two.stderr
    train.main(["--model", "standin", "--out", str(tmp_path / "one")] + common)
    a, b = load(tmp_path / "two" / "standin" / "ckpt.pt"), load(tmp_path / "one" / "standin" / "ckpt.pt")
    torch.manual_seed(0)
    initial = StandInModel(StandInConfig()).state_dict()
    for name, value in b["model"].items():
        assert (value - initial[name]).abs().max() > 1e-4, f"{name} did not move"
        torch.testing.assert_close(a["model"][name], value, rtol=0, atol=1e-6)
    assert len(a["rng"]) == 2 and not torch.equal(a["rng"][0]["torch"], a["rng"][1]["torch"])
    for cache in os.listdir(tmp_path / "one" / "cache"):
        one, two = load(tmp_path / "one" / "cache" / cache), load(tmp_path / "two" / "cache" / cache)
        assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)
    m2, m1 = (json.loads((tmp_path / d / "standin" / "metrics.json").read_text()) for d in ("two", "one"))
    for key in ("error_mm", "under50", "baseline_error_mm"):
        assert m2[key] == pytest.approx(m1[key], rel=1e-5, abs=1e-6), key


def kill_and_resume(args, tmp_path, kill_at, nproc=1, model="standin"):
    """Start a run that SIGKILLs itself (every rank) after `kill_at` steps, then finish it with --resume."""
    killed = run_script(args, tmp_path, nproc=nproc, check=False, env=dict(SIGKILL_AT_STEP=str(kill_at)), model=model)
    if nproc == 1:
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    else:  # torchrun reports its workers' deaths and fails
        assert killed.returncode != 0 and "Signal 9 (SIGKILL)" in killed.stderr, killed.stderr[-2000:]
    assert f"step {kill_at:5d}/" in killed.stdout and f"step {kill_at + 1:5d}/" not in killed.stdout
    return run_script(args + ["--resume"], tmp_path, nproc=nproc, model=model)


def test_resume_after_sigkill_ends_with_bitwise_identical_weights(tmp_path):
    """Dropout (torch RNG), augmentation read by (epoch, index) in 2 DataLoader workers, epochs that
    end mid-batch (30 samples, batch 8): the killed-and-resumed run equals the uninterrupted one."""
    npz = tmp_path / "npz"
    npz.mkdir()
    common = ["--max-steps", "24", "--ckpt-every", "5", "--log-every", "1", "--eval-every", "6", "--data", f"npz:{npz}",
              "--train-samples", "30", "--workers", "2"]
    # both on the CPU (run_script's --device cpu): a GPU's kernels need not match the CPU's bit for bit
    train.main(["--model", "standin", "--device", "cpu", "--out", str(tmp_path / "straight")] + common)
    resumed = kill_and_resume(common + ["--out", "killed"], tmp_path, kill_at=13)
    # the checkpoint of step 12, written before its evaluation (step 10's is the last --ckpt-every one)
    assert "resumed from killed/standin/ckpt.pt at step 12 (1 rank(s) then, 1 now)" in resumed.stdout
    assert_same_checkpoint(load(tmp_path / "straight" / "standin" / "ckpt.pt"),
                      load(tmp_path / "killed" / "standin" / "ckpt.pt"))


@pytest.mark.slow
def test_two_rank_resume_after_sigkill_ends_with_bitwise_identical_weights(tmp_path):
    common = ["--max-steps", "20", "--ckpt-every", "4", "--log-every", "1", "--train-samples", "30",
              "--eval-samples", "16"]
    run_script(common + ["--out", "straight"], tmp_path, nproc=2)
    resumed = kill_and_resume(common + ["--out", "killed"], tmp_path, kill_at=10, nproc=2)
    assert "resumed from killed/standin/ckpt.pt at step 8 (2 rank(s) then, 2 now)" in resumed.stdout
    assert_same_checkpoint(load(tmp_path / "straight" / "standin" / "ckpt.pt"),
                      load(tmp_path / "killed" / "standin" / "ckpt.pt"))


@pytest.mark.slow
def test_two_rank_runs_exit_cleanly_every_time(tmp_path):
    """gloo sometimes aborted at exit while a DDP wrapper was alive (3 of ~50 two-rank runs on CPU)."""
    for i in range(12):
        proc = run_script(["--max-steps", "2", "--train-samples", "16", "--eval-samples", "8", "--out", f"run{i}"],
                          tmp_path, nproc=2, check=False)
        assert proc.returncode == 0 and "terminate called" not in proc.stderr, proc.stderr[-3000:]


# ---------------------------------------------------------------------------------------------
# The real model, briefly


def test_simplehand_runs_end_to_end_and_reports_millimetres(tmp_path):
    """Two steps of the real model, scored in millimetres. The yardstick is computed here, independently, in mm
    from the held-out hands: each hand's RMS distance of its joints (vertices) from their centroid. The PA error
    of ANY prediction is at most that (the alignment may shrink the prediction onto the centroid; its
    least-squares optimum does no worse), so millimetres reported as metres x 1e6 fail the upper bound. An
    untrained model (or the mean hand) explains little of the spread, so a figure in metres read as mm (x 1e-3)
    fails the lower ones. Measured with seeds 0-2: pa_mpjpe 0.85-0.91 x the RMS, the baseline 0.35-0.46 x,
    f5 <= 0.02, f15 <= 0.11."""
    train.main(["--model", "simplehand", "--out", str(tmp_path), "--max-steps", "2", "--set", "batch_size=4",
                "--train-samples", "8", "--eval-samples", "6", "--log-every", "1"])
    report = json.loads((tmp_path / "simplehand" / "metrics.json").read_text())
    cfg = train.simplehand_experiments.CONFIGS["tiny"]
    held_out = train.data.labels(train.synthetic.hand_dataset("synthetic", "", "evaluation", cfg, 0, 6))
    rms_mm = {key: float(((held_out[key].double() - held_out[key].double().mean(1, keepdim=True)) ** 2)
                         .sum(-1).mean(1).sqrt().mean() * 1000) for key in ("joints3d", "verts")}
    assert 30 < rms_mm["joints3d"] < 80, rms_mm  # a hand's joints spread some 5 cm about their centroid
    assert {"pa_mpjpe_mm", "pa_mpvpe_mm", "baseline_pa_mpjpe_mm"} <= set(report["metric_names"])
    for key, points in (("pa_mpjpe_mm", "joints3d"), ("pa_mpvpe_mm", "verts"), ("baseline_pa_mpjpe_mm", "joints3d"),
                        ("baseline_pa_mpvpe_mm", "verts")):
        assert report[key] <= rms_mm[points] * (1 + 1e-9), (key, report[key], "mm, above the bound", rms_mm[points])
    assert report["pa_mpjpe_mm"] >= 0.5 * rms_mm["joints3d"], (report["pa_mpjpe_mm"], rms_mm)  # measured 0.85-0.91 x
    assert report["baseline_pa_mpjpe_mm"] >= 0.2 * rms_mm["joints3d"], (report["baseline_pa_mpjpe_mm"], rms_mm)
    # F-scores at 5 and 15 mm of errors some 40 mm: few points within them (metres read as mm: all of them)
    assert report["f5"] <= report["f15"] <= 0.3, (report["f5"], report["f15"])
    assert (tmp_path / "simplehand" / "predictions.png").stat().st_size > 10_000
    ckpt = load(tmp_path / "simplehand" / "ckpt.pt")
    assert ckpt["step"] == 2 and ckpt["config"]["recipe"]["batch_size"] == 4
    model = train.simplehand_experiments.build_model(
        configs.config_from_dict(train.simplehand_experiments.SimpleHandExperiment, ckpt["config"]))
    model.load_state_dict(ckpt["model"])


def test_simplehand_gradient_of_a_batch_is_the_mean_of_its_halves():
    """What the DDP equivalence needs from the model: no coupling between the samples of a batch
    (no BatchNorm, no dropout in `tiny`), so two ranks' averaged gradients equal one process's."""
    cfg = train.simplehand_experiments.CONFIGS["tiny"]
    torch.manual_seed(0)
    model = train.simplehand_experiments.build_model(cfg)
    dataset = train.synthetic.SyntheticHands(8, cfg.model.image_size, seed=3)
    batch = torch.utils.data.default_collate([dataset[i] for i in range(8)])

    def gradients(part):
        model.zero_grad()
        train.simplehand_experiments.training_loss(model, part, cfg, 0)[0].backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    full = gradients(batch)
    halves = [gradients({k: v[i:i + 4] for k, v in batch.items()}) for i in (0, 4)]
    for name, g in full.items():
        torch.testing.assert_close((halves[0][name] + halves[1][name]) / 2, g, rtol=1e-4, atol=1e-6, msg=name)


GENHMR_KEYS = ("mpjpe_mm", "pa_mpjpe_mm", "pve_mm", "refined_mpjpe_mm", "refined_pa_mpjpe_mm", "refined_pve_mm",
               "refine_2d_improved_fraction", "tokenizer_mpjpe_mm", "codebook_perplexity", "dead_codes")


def test_genhmr_trains_its_tokenizer_backbone_then_the_image_stage_and_reports(genhmr_chain):
    """The three GenHMR rows through train.py: the backbone stage and the image stage find their parents'
    checkpoints, keep the tokenizer frozen (no checkpoint after the first holds a tokenizer tensor; the
    image stage's holds its own fine-tuned copy of the ViT), and metrics.json has its flat keys,
    the baseline's, the tokenizer's, the backbone's and the report-only table."""
    out = genhmr_chain  # support.train_genhmr_chain: the session's chain (tests/conftest.py)
    report = json.loads((out / "genhmr" / "metrics.json").read_text())
    for key in GENHMR_KEYS + tuple(f"baseline_{k}" for k in GENHMR_KEYS[:6]) + ("baseline_tokenizer_mpjpe_mm",):
        assert np.isfinite(report[key]) and report[key] >= 0, key
    # millimetres: the mean pose scores 289-304 mm on these synthetic people (the default run's record: 299.6); a
    # body is about 1.7 m tall, so no prediction of a 2-step model is metres off (measured here: 540-850 mm)
    assert 150 < report["baseline_mpjpe_mm"] < 600
    assert report["baseline_refined_mpjpe_mm"] == report["baseline_mpjpe_mm"]
    assert all(50 < report[k] < 2000 for k in ("mpjpe_mm", "refined_mpjpe_mm", "regression_mpjpe_mm", "pve_mm"))
    assert ({f"table_{s}_T{T}_mpjpe_mm" for s in ("cosine", "linear", "cubic", "sqrt") for T in (1, 3, 5, 10)}
            <= set(report))
    assert "table_refine_P5_mpjpe_mm" in report
    assert report["table_refine_P5_mpjpe_mm"] == pytest.approx(report["refined_mpjpe_mm"], rel=1e-5)
    assert report["regression_mpjpe_mm"] >= 0 and report["baseline_regression_mpjpe_mm"] > 0
    for stage in ("genhmr_tokenizer", "genhmr_backbone", "genhmr_prior", "genhmr"):
        assert (out / stage / "predictions.png").stat().st_size > 10_000
    for stage in ("genhmr_backbone", "genhmr_prior", "genhmr"):
        ckpt = load(out / stage / "ckpt.pt")
        # TINY trains the prior 0 steps (--max-steps caps a stage it starts from, never raises it)
        assert ckpt["step"] == (0 if stage == "genhmr_prior" else 2)
        assert not any(k.startswith("tokenizer.") for k in ckpt["model"])
        if stage == "genhmr_prior":  # the prior's own state is its masked transformer; the parent is not in it
            assert {k.split(".")[0] for k in ckpt["model"]} == {"masked_transformer"}
    assert "backbone.blocks.0.attn.qkv.weight" in ckpt["model"]
    prior = json.loads((out / "genhmr_prior" / "metrics.json").read_text())
    for key in ("prior_mpjpe_mm", "prior_masked_token_accuracy_75", "prior_count_table_accuracy_75",
                "baseline_prior_mpjpe_mm"):
        assert np.isfinite(prior[key]) and prior[key] >= 0, key
    assert prior["prior_mpjpe_mm"] == report["prior_mpjpe_mm"]  # the image stage's report carries its parents'


def killed_at(step_to_die, learning_rate, signum=signal.SIGKILL, group=False):
    """learning_rate, which sends this process (or its whole process group: DataLoader workers too) `signum`
    when asked for the step `step_to_die` (the crash of the resume tests, at an exact step, before that step's
    update)."""
    def wrapped(cfg, step):
        if step == step_to_die:
            os.killpg(0, signum) if group else os.kill(os.getpid(), signum)
        return learning_rate(cfg, step)
    return wrapped


def signalled_at(count, function, signum):
    """function, which sends this process `signum` on its `count`-th call (after a line saying so)."""
    calls = [0]

    def wrapped(*args, **kwargs):
        calls[0] += 1
        if calls[0] == count:
            print(f"rank {os.environ.get('RANK', '0')}: {signal.Signals(signum).name} now", flush=True)
            os.kill(os.getpid(), signum)
        return function(*args, **kwargs)
    return wrapped


def killed_while_writing(step, save_file):
    """checkpoints.save_file, which writes half of step `step`'s checkpoint and then SIGKILLs this process."""
    def wrapped(obj, path):
        if obj["step"] != step:
            return save_file(obj, path)
        buffer = io.BytesIO()
        torch.save(obj, buffer)

        def half_then_die(f):
            f.write(buffer.getvalue()[:len(buffer.getvalue()) // 2])
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        atomic_write(path, half_then_die)
    return wrapped


if __name__ == "__main__":  # train.py with the stand-ins registered (used by the subprocess tests)
    train.MODELS.update(STANDINS)
    first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    # SIGKILL_AT_STEP=S: every rank dies at step S; SIGNAL_AT_STEP=S:NAME:RANK[:group]: rank RANK (and, with
    # group, every process of its process group) gets signal NAME at step S, on torchrun's first attempt only
    at, name, rank, *group = os.environ.get("SIGNAL_AT_STEP", "::").split(":")
    if "SIGKILL_AT_STEP" in os.environ:
        at, name, rank = os.environ["SIGKILL_AT_STEP"], "SIGKILL", os.environ.get("RANK", "0")
    if at and rank == os.environ.get("RANK", "0") and first_attempt:
        for stage in train.MODELS.values():
            stage.paper.learning_rate = killed_at(int(at), stage.paper.learning_rate, getattr(signal, name), group)
    # SIGNAL_AT_PREDICT=K:NAME / SIGNAL_AT_SAMPLE=K:NAME: every rank gets NAME at its K-th predict call (an
    # evaluation) / its K-th sample drawn (rendering); SIGKILL_IN_CHECKPOINT=S: step S's checkpoint write dies
    # midway; OUT_OF_RANK=R:PATH: rank R reads and writes --out PATH (another node's disk)
    if first_attempt and "SIGNAL_AT_PREDICT" in os.environ:
        k, name = os.environ["SIGNAL_AT_PREDICT"].split(":")
        STANDIN_PAPER.predict = signalled_at(int(k), STANDIN_PAPER.predict, getattr(signal, name))
    if first_attempt and "SIGNAL_AT_SAMPLE" in os.environ:
        k, name = os.environ["SIGNAL_AT_SAMPLE"].split(":")
        StandInSet.__getitem__ = signalled_at(int(k), StandInSet.__getitem__, getattr(signal, name))
    if "SIGKILL_IN_CHECKPOINT" in os.environ:
        checkpoints.save_file = killed_while_writing(int(os.environ["SIGKILL_IN_CHECKPOINT"]), checkpoints.save_file)
    rank, _, path = os.environ.get("OUT_OF_RANK", "::").partition(":")
    if rank == os.environ.get("RANK", "0"):
        sys.argv[sys.argv.index("--out") + 1] = path
    train.main()


@pytest.mark.slow  # 30 s: each of the chain's stages is built and scored
def test_genhmr_trains_and_reports_the_benchmark_protocol_on_an_hmr2_npz(tmp_path, monkeypatch):
    """--data hmr2:FILE.npz through the three GenHMR rows: the tokenizer on the file's labelled poses,
    the image stages on its crops (rows without SMPL labels masked in the losses), metrics.json with
    the protocol's numbers (14 keypoints from a J19 regressor, PVE where the file has SMPL labels)."""
    from test_data import write_hmr2_npz

    path, _ = write_hmr2_npz(tmp_path / "bench", count=4)
    regressor = np.zeros((19, 6890))
    regressor[np.arange(19).repeat(2), np.arange(38) * 181] = 0.5  # each keypoint: the mean of two vertices
    np.save(tmp_path / "SMPL_to_J19.npy", regressor)
    monkeypatch.setenv("HMR_J_REGRESSOR", str(tmp_path / "SMPL_to_J19.npy"))
    train.main(["--model", "genhmr", "--data", f"hmr2:{path}", "--out", str(tmp_path / "out"), "--max-steps", "2",
                "--set", "batch_size=2", "--set", "refine_iterations=2", "--log-every", "1"])
    report = json.loads((tmp_path / "out" / "genhmr" / "metrics.json").read_text())
    assert report["data"] == f"hmr2:{path}"
    for key in ("mpjpe_mm", "pa_mpjpe_mm", "pve_mm", "refined_mpjpe_mm", "refined_pve_mm", "regression_mpjpe_mm",
                "tokenizer_mpjpe_mm", "baseline_mpjpe_mm", "baseline_pve_mm", "table_refine_P5_mpjpe_mm"):
        assert np.isfinite(report[key]) and report[key] > 0, key
    missing = tmp_path / "none.npz"
    assert error_of(["--model", "genhmr", "--data", f"hmr2:{missing}", "--out", str(tmp_path / "out")]) == (
        f"--data hmr2:{missing}: file '{missing}' does not exist; expected a 4D-Humans evaluation .npz")


def test_hmr_adapter_trains_and_reports_table1_on_a_wholebody_npz(tmp_path, monkeypatch):
    """--data wholebody:FILE.npz through both HMR-Adapter rows (the bases, then the adapters): trained on
    the file's people and scored on them by Table 1's protocol: all, hands and face numbers in
    metrics.json, no occluded split where the file has no occluded hand; a missing file fails at once."""
    from test_data import write_wholebody_npz

    path, arrays, _ = write_wholebody_npz(tmp_path / "bench", count=2)
    np.savez(path, **{k: v for k, v in arrays.items() if k != "hand_occluded"})  # EHF: no occluded hands
    monkeypatch.delenv("HMR_FLAME_VERTEX_IDS", raising=False)
    train.main(["--model", "hmr_adapter", "--data", f"wholebody:{path}", "--out", str(tmp_path / "out"),
                "--max-steps", "1", "--set", "batch_size=2", "--log-every", "1"])
    report = json.loads((tmp_path / "out" / "hmr_adapter" / "metrics.json").read_text())
    assert report["data"] == f"wholebody:{path}"
    names = report["metric_names"]
    for part in ("all", "hands", "face"):
        for run in ("baseline", "adapted"):
            value = report["pipeline"][run][part]["pve_mm"]
            assert np.isfinite(value) and value > 0, (run, part)
    assert "pipeline/adapted/face/pa_pve_mm" in names and not any("occluded" in k for k in names)
    assert np.isfinite(report["hand_path"]["adapter"]["clean"]["pa_mpjpe_mm"])
    missing = tmp_path / "none.npz"
    assert error_of(["--model", "hmr_adapter", "--data", f"wholebody:{missing}", "--out", str(tmp_path / "out")]) == (
        f"--data wholebody:{missing}: file '{missing}' does not exist; expected a whole-body .npz (data.WholeBodyNpz)")
    monkeypatch.setenv("HMR_FLAME_VERTEX_IDS", str(tmp_path / "none.npy"))  # the face's ids: checked before training
    assert "HMR_FLAME_VERTEX_IDS: missing" in error_of(["--model", "hmr_adapter", "--data", f"wholebody:{path}",
                                                        "--out", str(tmp_path / "out2")])
