"""A checkpoint train.py writes: what it holds, written atomically, and a trained model read back from it (by
train.py, lab/ablate.py, demo.py and the notebooks).

OUT/<stage>/ckpt.pt is one dict of tensors and plain Python values, so torch.load(weights_only=True) reads it:

    model_name   the stage (a row of train.py's MODELS), e.g. "genhmr_backbone"
    config_name  the preset it started from ("tiny", "paper", ...); config: its fields as trained (a dict)
    model        the stage's OWN state_dict: the tensors it shares with the stage it starts from (a frozen
                 tokenizer, frozen bases) are left out; they come back from that stage's checkpoint,
                 OUT/<parent stage>/ckpt.pt
    optimizer, step, rng (each rank's RNG states: `rng_state`), data (--data, --seed, the data position),
    history, train_time_s, wall_time_s (the stage's seconds of training, and of every run of it): what a resume
    needs; changes: what a --resume changed, [{step, lr: [then, now]}]
                 (only when one did: `--resume --set lr=...` after a divergence)
    parents      {stage: SHA-256 of its ckpt.pt} for every stage this one starts from (its parent, the parent's
                 parent, ...): `load_trained` refuses a parent file that differs from the one trained from
                 (checkpoints written before 2026-11-28 have none, and their parents are not checked)

A stage that starts from another is rebuilt oldest first: build the parent from its checkpoint, then
`build_model(cfg, parent)` and the stage's own tensors. Bad files raise `data.InputError` naming the file.
"""

import hashlib
import pathlib
import random

import numpy as np
import torch

from lab.files import atomic_write
from lab.configs import config_from_dict
from data import InputError


# ---------------------------------------------------------------------------------------------
# Writing: a file never half written, RNG states as tensors and plain values (weights_only reads them)


def save_file(obj, path):
    """torch.save, atomically: `path` is never half written."""
    atomic_write(path, lambda f: torch.save(obj, f))


def sweep_temporaries(folder):
    """Remove the temporary files that a SIGKILLed write left in `folder` (atomic_write names them NAME.<random>.tmp);
    the file it was replacing is still the last whole one. Rank 0 calls this before a run, when nothing writes."""
    for path in pathlib.Path(folder).glob("*.tmp"):
        path.unlink(missing_ok=True)


def rng_state(device):
    """This process's torch, numpy, python (and cuda) RNG states, as tensors and plain values."""
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = dict(torch=torch.get_rng_state(), numpy=torch.from_numpy(np_keys.astype(np.int64)),
                 numpy_rest=(np_pos, np_has_gauss, np_gauss), python=torch.tensor(py_state),
                 python_rest=(py_version, py_gauss))
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state, device):
    """Restore what `rng_state` saved."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), *state["numpy_rest"]))
    py_version, py_gauss = state["python_rest"]
    random.setstate((py_version, tuple(state["python"].tolist()), py_gauss))
    if device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


# ---------------------------------------------------------------------------------------------
# Reading: a checkpoint checked, a stage's own state, a trained model rebuilt from its chain


def load_checkpoint(path, stage):
    """The dict train.py saved at `path` (weights_only), after checking it is a train.py checkpoint of stage
    `stage`; raises InputError naming the file otherwise (missing, truncated, foreign, another stage's)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint; train one (torchrun train.py --model {stage}) or pass its path")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # mmap: no second copy in memory
    except Exception as e:  # a truncated or foreign file: say which, without the unpickler's traceback
        raise InputError(f"{path}: not a readable train.py checkpoint ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or "model_name" not in ckpt:
        raise InputError(f"{path}: not a train.py checkpoint (expected a dict with 'model_name', 'model', 'config', "
                         "...)")
    if ckpt["model_name"] != stage:
        raise InputError(f"{path}: holds a {ckpt['model_name']!r} model; expected a checkpoint of stage {stage!r}")
    return ckpt


def file_hash(path):
    """The SHA-256 of a file's bytes, as hex (what a checkpoint's `parents` records of each parent's ckpt.pt)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_parents(ckpt, path, parent_path):
    """Raise InputError naming the files if a parent that the checkpoint at `path` records is not, byte for byte,
    the one at parent_path(stage) (retrained or replaced since: the stage's own weights would not fit it)."""
    for stage, digest in ckpt.get("parents", {}).items():
        p = pathlib.Path(parent_path(stage))
        if not p.is_file() or file_hash(p) != digest:
            raise InputError(f"{path}: was trained from a {stage!r} checkpoint with SHA-256 {digest[:12]}..., but "
                             f"{p} {'is missing' if not p.is_file() else 'differs (retrained or replaced since)'}; "
                             "retrain this stage on it or put the original back")


def saved_config(ckpt, configs, path):
    """The config dataclass a checkpoint was trained with; configs: the paper's {preset name: config}."""
    if ckpt["config_name"] not in configs:
        raise InputError(f"{path}: config {ckpt['config_name']!r} is not one of {sorted(configs)}")
    return config_from_dict(type(configs[ckpt["config_name"]]), ckpt["config"])


def own_state(model, parent):
    """The model's state_dict without the tensors it shares with `parent` (what a checkpoint holds)."""
    shared = {t.data_ptr() for t in parent.state_dict().values() if t.numel()} if parent is not None else set()
    return {k: v for k, v in model.state_dict().items() if not (v.numel() and v.data_ptr() in shared)}


def load_own_state(model, state, parent, path):
    """Load a checkpoint's own state into `model`: every key the model has must come from `state` or be shared
    with `parent` (whose weights its own checkpoint holds); raises InputError naming the file otherwise."""
    unexpected = sorted(set(state) - set(model.state_dict()))
    missing = sorted(set(own_state(model, parent)) - set(state))
    if missing or unexpected:
        raise InputError(f"{path}: the weights do not fit the model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    model.load_state_dict(state, strict=False)


def load_trained(path, chain, parent_path=None):
    """A model trained by train.py, rebuilt from its checkpoint and its parents' -> (model in eval mode, frozen,
    on the CPU; its config). chain: [(stage, CONFIGS, build_model(cfg, parent))] from the first stage to the one
    at `path`; a parent's checkpoint is parent_path(stage), by default OUT/<stage>/ckpt.pt beside `path`
    (OUT/<last stage>/ckpt.pt)."""
    path = pathlib.Path(path)
    parent_path = parent_path or (lambda stage: path.parent.parent / stage / "ckpt.pt")
    last = load_checkpoint(path, chain[-1][0])  # read first: the file asked for is named if it is the wrong one
    model = cfg = None
    for k, (stage, configs, build) in enumerate(chain):
        p = path if k == len(chain) - 1 else parent_path(stage)
        ckpt = last if p == path else load_checkpoint(p, stage)
        check_parents(ckpt, p, parent_path)
        cfg = saved_config(ckpt, configs, p)
        parent, model = model, build(cfg, model)
        load_own_state(model, ckpt["model"], parent, p)
        model.eval().requires_grad_(False)
    return model, cfg
