"""Every value a user can pass to train.py is checked before any work: a field of every preset of every stage, set to
one of its edge cases (0, -1, NaN, inf, a huge number, the wrong type, an empty string), either starts the job or
stops it with one line naming the field (exit status 2); never a traceback. Property-based (hypothesis): the check
alone, without training, over every field; then a few drawn cases end to end, as 1-step jobs."""
import json
import pathlib
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings, strategies as st

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from lab import configs  # noqa: E402
import data  # noqa: E402
from lab import distributed  # noqa: E402
import train  # noqa: E402

HUGE = str(2 ** 63)
EDGES = ("0", "-1", "nan", "inf", "-inf", "1e300", HUGE, "abc", "", "0.5", "true")
# every (stage, preset, field) of train.py's stages
FIELDS = [(stage, preset, field) for stage, row in train.MODELS.items() for preset, cfg in row.paper.CONFIGS.items()
          for field in configs.leaf_paths(cfg)]


PRESET_ERRORS = {}  # (stage, preset) -> the line the command stops with when nothing is set, or None


class Started(Exception):
    """Raised instead of forming the group: the command checked everything and would start the job."""


def command(argv, monkeypatch=None):
    """train.py's command in this process -> (exit status, the line it printed on stderr or None). With
    `monkeypatch`, the job does not start: status "started" once every check passed."""
    if monkeypatch is not None:
        monkeypatch.setattr(distributed, "run_job", lambda *a, **k: (_ for _ in ()).throw(Started()))
    try:
        distributed.command(lambda: train.main(argv), "train.py")
    except Started:
        return "started", None
    except SystemExit as e:
        return e.code, None
    return 0, None


def check_outcome(status, err, field, text, preset_error=None):
    """One line naming the field (or the line the preset stops with as it is: a paper preset's missing weights)."""
    lines = [line for line in err.splitlines() if line.strip()]
    if status == 2:
        assert len(lines) == 1 and lines[0].startswith("train.py: error: "), err
        assert field in lines[0] or lines[0] == preset_error, (field, text, lines[0])
    else:
        assert "Traceback" not in err and "error" not in err, err


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=st.sampled_from(FIELDS), text=st.sampled_from(EDGES))
def test_every_field_of_every_preset_is_checked_before_any_work(case, text, monkeypatch, capsys, tmp_path_factory):
    """Without training: the command either would start, with the field inside its declared range, or stops in one
    line naming the field."""
    stage, preset, field = case
    out = tmp_path_factory.getbasetemp() / "unused"  # nothing is written before the job starts
    argv = ["--model", stage, "--config", preset, "--out", str(out)]
    if (stage, preset) not in PRESET_ERRORS:  # how the preset as it is fares
        with monkeypatch.context() as m:
            command(argv, m)
        PRESET_ERRORS[stage, preset] = capsys.readouterr().err.strip() or None
    with monkeypatch.context() as m:
        status, _ = command(argv + ["--set", f"{field}={text}"], m)
    err = capsys.readouterr().err
    assert status in ("started", 2), (status, err)
    check_outcome(status, err, field, text, PRESET_ERRORS[stage, preset])
    if status == "started":  # an accepted value: the preset's config with it passes its declared range
        cfg = train.apply_overrides(train.MODELS[stage].paper.CONFIGS[preset], [f"{field}={text}"])
        spec = configs.numeric_leaves(cfg).get(field)
        value = configs.config_leaves(cfg)[field]
        if spec is not None:
            configs.check_value(field, value, int if isinstance(value, int) else type(value), spec)
        assert text not in ("nan", "inf", "-inf") or isinstance(value, str), (field, value)


def test_every_numeric_field_declares_its_range():
    """A range on every int, float and tuple field (Annotated[..., "interval"]): none is left unchecked."""
    missing = {(stage, field) for stage, row in train.MODELS.items() for cfg in row.paper.CONFIGS.values()
               for field, spec in configs.numeric_leaves(cfg).items() if spec is None}
    assert not missing, sorted(missing)


@pytest.mark.parametrize("argv, expected", [
    (["--set", "lr=-1"], "--set lr=-1: SimpleHandRecipe.lr=-1.0: expected a value in [0, inf)"),
    (["--set", "batch_size=0"], "--set batch_size=0: SimpleHandRecipe.batch_size=0: expected a value in [1, inf)"),
    (["--max-steps", "-3"], "argument --max-steps: '-3': expected an integer in [0, inf)"),
    (["--train-samples", "0"], "argument --train-samples: '0': expected an integer in [1, inf)"),
    (["--data", "npz:README.md"], "--data npz:README.md: 'README.md' is a file; expected the dataset's root folder"),
    (["--set", "dropout=nan"], "--set dropout=nan: SimpleHandConfig.dropout=nan: expected a value in [0, 1]"),
    (["--set", "input_norm=rgb"], "--set input_norm=rgb: expected one of imagenet, bgr_minus_half"),
    (["--pg-timeout", "inf"], "argument --pg-timeout: 'inf': expected a number in (0, inf)"),
    (["--seed", "-1"], "argument --seed: '-1': expected an integer in [0, 2147483647]"),
    (["--out", "README.md"], "--out README.md: is a file; expected a folder (made if missing)"),
])
def test_the_issues_bad_inputs_stop_in_one_line(argv, expected, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    out = [] if "--out" in argv else ["--out", "/nonexistent/out"]  # nothing is written
    with monkeypatch.context() as m:
        status, _ = command(["--model", "simplehand"] + out + argv, m)
    err = capsys.readouterr().err
    assert status == 2 and err.endswith(f": error: {expected}\n") and err.count("\n") == 1, err  # argparse: PROG


def test_a_global_batch_that_does_not_split_over_the_ranks_is_refused_before_the_group_forms(monkeypatch, capsys,
                                                                                             tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with monkeypatch.context() as m:
        status, _ = command(["--model", "simplehand", "--out", str(tmp_path)], m)
    assert status == 2 and capsys.readouterr().err == (
        "train.py: error: simplehand: batch_size 32 is the global batch; expected a multiple of the 3 ranks\n")


# End to end: a few drawn cases as 1-step jobs, on the stages that take seconds (SimpleHand, GenHMR's tokenizer)
CHEAP = [(s, p, f) for s, p, f in FIELDS if p == "tiny" and s in ("simplehand", "genhmr_tokenizer")]


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=st.sampled_from(CHEAP), text=st.sampled_from(EDGES))
@example(case=("simplehand", "tiny", "dropout"), text="0.5")  # accepted edges, which run: most draws are refused
@example(case=("simplehand", "tiny", "max_steps"), text="0")
@example(case=("genhmr_tokenizer", "tiny", "loss_vertices"), text="0")
def test_a_drawn_field_and_edge_value_runs_a_one_step_job_or_stops_in_one_line(case, text, capsys, tmp_path_factory):
    stage, preset, field = case
    out = tmp_path_factory.mktemp("run")
    argv = ["--model", stage, "--out", str(out), "--max-steps", "1", "--train-samples", "8", "--eval-samples", "4",
            "--set", "batch_size=4", "--set", f"{field}={text}"]
    with pytest.MonkeyPatch.context() as m:
        checked, _ = command(argv, m)
    capsys.readouterr()
    # an accepted huge size or step count is a job of that size: not one for a test
    assume(not (checked == "started" and text in (HUGE, "1e300")))
    status, _ = command(argv)
    err = capsys.readouterr().err
    assert status in (0, 2, distributed.DIVERGED), (status, err)
    check_outcome(status, err, field, text) if status != distributed.DIVERGED else None
    if status == 0:
        report = json.loads((out / stage / "metrics.json").read_text())
        assert report["steps"] == (1 if field != "max_steps" else int(text)), report["steps"]


# ---------------------------------------------------------------------------------------------
# The data readers check what they read, at load time: small generated files with one fault drawn


def hand_arrays(n):
    rng = np.random.default_rng(0)
    return dict(image_files=np.array([f"crops/{i}.png" for i in range(n)]), K=np.tile(np.eye(3), (n, 1, 1)),
                joints3d=rng.normal(size=(n, 21, 3)), verts=rng.normal(size=(n, 778, 3)),
                mano_pose=rng.normal(size=(n, 16, 3)), mano_shape=rng.normal(size=(n, 10)), is_right=np.ones(n, bool))


def hmr2_arrays(n):
    rng = np.random.default_rng(0)
    return dict(imgname=np.array([f"images/{i}.png" for i in range(n)]), center=rng.uniform(40, 60, (n, 2)),
                scale=np.full((n, 2), 0.3), body_pose=rng.normal(size=(n, 72)), has_body_pose=np.ones(n),
                betas=rng.normal(size=(n, 10)), has_betas=np.ones(n), body_keypoints_2d=rng.normal(size=(n, 25, 3)),
                extra_keypoints_2d=rng.normal(size=(n, 19, 3)), body_keypoints_3d=rng.normal(size=(n, 25, 4)),
                extra_keypoints_3d=rng.normal(size=(n, 19, 4)))


def wholebody_arrays(n):
    rng = np.random.default_rng(0)
    return dict(imgname=np.array([f"images/{i}.png" for i in range(n)]), smplx_pose=rng.normal(size=(n, 55, 3)),
                smplx_shape=rng.normal(size=(n, 10)), smplx_expression=rng.normal(size=(n, 10)),
                transl=rng.normal(size=(n, 3)), K=np.tile(np.eye(3), (n, 1, 1)), bbox=rng.uniform(0, 50, (n, 4)),
                left_hand_box=rng.uniform(0, 50, (n, 4)), right_hand_box=rng.uniform(0, 50, (n, 4)),
                hand_occluded=np.zeros((n, 2)))


READERS = {  # kind: (arrays of n rows, the keys it must have, write them to folder -> path, read the path)
    "npz": (hand_arrays, ("image_files",) + tuple(data.NPZ_LABEL_SHAPES),
            lambda folder: folder / "val.npz", lambda path: data.NpzHands(path.parent, "val", image_size=32)),
    "hmr2": (hmr2_arrays, data.HMR2_REQUIRED, lambda folder: folder / "bench.npz",
             lambda path: data.HMR2Npz(path, (64, 48))),
    "wholebody": (wholebody_arrays, data.WHOLEBODY_REQUIRED, lambda folder: folder / "wholebody.npz",
                  lambda path: data.WholeBodyNpz(path, (64, 48))),
}
FAULTS = ("none", "drop", "shape", "dtype", "nan", "inf", "truncate", "folder")


@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from(sorted(READERS)), fault=st.sampled_from(FAULTS), pick=st.integers(0, 10 ** 6),
       cut=st.floats(0.05, 0.95))
def test_a_faulty_label_file_stops_at_load_time_in_one_line_naming_the_file_key_and_index(kind, fault, pick, cut,
                                                                                          tmp_path_factory):
    arrays_of, required, where, read = READERS[kind]
    folder = tmp_path_factory.mktemp(kind)
    path, arrays = where(folder), arrays_of(3)
    keys = sorted(arrays)
    key = keys[pick % len(keys)]
    numeric = [k for k in keys if arrays[k].dtype.kind == "f"]
    if fault == "drop":
        del arrays[key]
    elif fault == "shape":
        arrays[key] = arrays[key][..., None] if key not in ("imgname", "image_files") else arrays[key][:, None]
    elif fault == "dtype":
        key = numeric[pick % len(numeric)]
        arrays[key] = arrays[key].astype(str)
    elif fault in ("nan", "inf"):
        key = numeric[pick % len(numeric)]
        flat = arrays[key].reshape(-1)
        flat[pick % flat.size] = np.nan if fault == "nan" else -np.inf
        index = tuple(int(i) for i in np.unravel_index(pick % flat.size, arrays[key].shape))
    if fault == "folder":
        path.mkdir()
    else:
        np.savez(path, **arrays)
    if fault == "truncate":
        whole = path.read_bytes()
        path.write_bytes(whole[:int(len(whole) * cut)])
    try:
        read(path)
    except (ValueError, FileNotFoundError) as e:
        message = str(e)
    else:  # loaded: only a file without faults, or without a key the format lets a file leave out
        assert fault == "none" or (fault == "drop" and key not in required), (kind, fault, key)
        return
    assert fault != "none" and "\n" not in message and str(path) in message, message
    if fault in ("drop", "shape", "dtype", "nan", "inf"):
        assert repr(key) in message, (key, message)
    if fault in ("nan", "inf"):
        assert f"not finite at index {index}" in message, (index, message)
    if fault == "folder":
        assert "is a folder" in message, message


@settings(max_examples=20, deadline=None)
@given(name=st.sampled_from(("K", "xyz", "verts", "mano", "scale")), fault=st.sampled_from(("nan", "ragged",
       "truncate", "shape", "folder")), pick=st.integers(0, 10 ** 6))
def test_a_faulty_freihand_file_stops_at_load_time_in_one_line_naming_it(name, fault, pick, tmp_path_factory):
    root = tmp_path_factory.mktemp("freihand")
    n, rng = 2, np.random.default_rng(0)
    values = dict(K=np.tile(np.eye(3), (n, 1, 1)), xyz=rng.normal(size=(n, 21, 3)), verts=rng.normal(size=(n, 778, 3)),
                  mano=rng.normal(size=(n, 1, 61)), scale=np.full(n, 0.03))
    for split in ("training", "evaluation"):
        for key, value in values.items():
            (root / f"{split}_{key}.json").write_text(json.dumps(value.tolist()))
    path = root / f"training_{name}.json"
    text = json.dumps(values[name].tolist())
    if fault == "nan":
        flat = values[name].reshape(-1)
        flat[pick % flat.size] = np.nan
        text = json.dumps(values[name].tolist())  # json writes NaN, which json.load reads back
    elif fault == "ragged":
        text = json.dumps(values[name].tolist()[:-1] + [[0.0]])
    elif fault == "truncate":
        text = text[:max(1, pick % len(text))]
    elif fault == "shape":
        text = json.dumps(np.concatenate([values[name].reshape(-1), [1.0]]).tolist())
    if fault == "folder":
        path.unlink()
        path.mkdir()
    else:
        path.write_text(text)
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        data.FreiHAND(root, "training", image_size=32)
    first = str(info.value).splitlines()[0]  # train.py prints the first line (a missing file's layout follows)
    assert str(path) in first, first
