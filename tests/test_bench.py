"""bench.py --compare-official: the timing and FLOP counting it rests on, how it imports an official
repository and gives the names back, its flags' checks, and the whole command at the reduced size. The official
side runs only where $HMR_OFFICIAL_SIMPLEHAND / $HMR_OFFICIAL_HAMER name checkouts of the official repositories
(CI has no network to fetch them), with timm (and einops for HaMeR) installed."""

import importlib.util
import os
import sys
import time
import types

import pytest
import torch

from lab import bench

# ---------------------------------------------------------------------------------------------
# 1. Measuring: the median of the timed calls, FLOPs counted once, the training step


def test_measure_counts_a_matrix_products_flops_and_takes_the_median():
    a, b = torch.randn(32, 48), torch.randn(48, 16)
    calls = []
    sleeps = iter([0.0, 0.6, 0.01, 0.02])  # the FLOP-counting call, then three timed calls: one outlier

    def fn():
        calls.append(1)
        time.sleep(next(sleeps))
        return a @ b
    seconds, peak, flops = bench.measure(fn, torch.device("cpu"), reps=3, warmup=0)
    assert flops == 2 * 32 * 48 * 16  # one product, counted once (not once per timed call)
    assert len(calls) == 4 and peak is None  # no CUDA memory on the CPU
    assert 0.005 < seconds < 0.2  # the median: the mean (> 0.2 s) would carry the 0.6 s stall


def test_training_flops_are_three_forwards_of_a_depthwise_convolution_counted_by_hand():
    """Model FLOPs of a step: 3 x the forward's (2 multiply-adds per weight and output pixel), groups respected."""
    conv = torch.nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)  # depthwise, as FastViT's
    x = torch.randn(2, 16, 10, 12)
    forward = 2 * 2 * 16 * 3 * 3 * 10 * 12  # 2 FLOPs x batch x channels x kernel x output pixels
    assert bench.count_flops(lambda: conv(x)) == forward
    assert bench.training_flops(lambda: conv(x).square().sum()) == 3 * forward


def test_training_step_takes_adamws_first_step_and_clears_the_gradients_each_time():
    """AdamW's first step moves each weight by lr (bias-corrected m / sqrt(v) = sign(g)) after decoupled decay;
    a later step's gradients are its own loss's alone (zero_grad), clipped to norm 1."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 3)
    x = torch.randn(8, 4)
    loss_of = lambda: layer(x).pow(2).sum()  # noqa: E731
    w0 = layer.weight.detach().clone()
    g = torch.autograd.grad(loss_of(), layer.weight)[0]
    step = bench.training_step(loss_of, torch.optim.AdamW(layer.parameters(), lr=0.01, weight_decay=0.1), "fp32",
                               clip=1.0)
    step()
    torch.testing.assert_close(layer.weight.detach(), w0 * (1 - 0.01 * 0.1) - 0.01 * g.sign(), rtol=0, atol=1e-6)
    g2 = torch.cat([d.flatten() for d in torch.autograd.grad(loss_of(), list(layer.parameters()))])
    step()
    got = torch.cat([p.grad.flatten() for p in layer.parameters()])
    assert g2.norm() > 1  # so the clipping acts
    torch.testing.assert_close(got, g2 / g2.norm(), rtol=0, atol=1e-5)  # not the sum of both steps' gradients


# ---------------------------------------------------------------------------------------------
# 2. Importing an official repository's modules and giving their names back


def _fake_repository(root):
    """A folder shaped like simpleHand: hand_net.py imports models.thing, which opens models/data.txt (relative
    to the working directory, as simpleHand's models/losses.py opens its MANO files)."""
    (root / "models").mkdir(parents=True)
    (root / "models" / "__init__.py").write_text("")
    (root / "models" / "data.txt").write_text("42")
    (root / "models" / "thing.py").write_text("VALUE = int(open('models/data.txt').read())\n")
    (root / "hand_net.py").write_text("from models.thing import VALUE\n")
    return root


def test_official_import_gives_back_the_names_the_path_and_the_directory(tmp_path, monkeypatch):
    repo = _fake_repository(tmp_path / "repo")
    ours = types.ModuleType("models")  # a module of the same name imported before: it must survive
    monkeypatch.setitem(sys.modules, "models", ours)
    path, cwd = list(sys.path), os.getcwd()
    with bench.official_import(str(repo), ("hand_net", "models")):
        import hand_net  # noqa: F401  (theirs, while inside)
        module = sys.modules["hand_net"]
        assert sys.modules["models"] is not ours
    assert module.VALUE == 42  # read at import from the repository's folder
    assert sys.modules["models"] is ours and "hand_net" not in sys.modules and "models.thing" not in sys.modules
    assert sys.path == path and os.getcwd() == cwd
    with pytest.raises(ZeroDivisionError), bench.official_import(str(repo), ("hand_net", "models")):
        import hand_net  # noqa: F401,F811
        1 / 0
    assert sys.modules["models"] is ours and "hand_net" not in sys.modules
    assert sys.path == path and os.getcwd() == cwd


# ---------------------------------------------------------------------------------------------
# 3. Every flag checked up front: one line naming the flag, the value and what is accepted, exit status 2


def _refused(argv, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("argv, expected", [
    (["--compare-official", "all", "--reps", "0"], "--reps 0: expected an integer >= 1"),
    (["--compare-official", "genhmr", "--batch", "-3"], "--batch -3: expected an integer >= 1"),
    (["--data-bench", "--count", "0"], "--count 0: expected an integer >= 1"),
    (["--model", "genhmr", "--threads", "-1"], "--threads -1: expected an integer >= 0"),
    (["--model", "hmr_adapter", "--repeats", "0"], "--repeats 0: expected an integer >= 1"),
    (["--compare-official", "hamer"], "argument --compare-official: invalid choice: 'hamer'"),
    (["--compare-official", "all", "--size", "huge"], "argument --size: invalid choice: 'huge'"),
    (["--compare-official", "all", "--reps", "two"], "argument --reps: invalid int value: 'two'"),
    (["--compare-official", "genhmr", "--official-simplehand", "."], "--official-simplehand is read only with "
                                                                       "--compare-official simplehand or all"),
    (["--compare-official", "simplehand", "--official-hamer", "."], "--official-hamer is read only with "
                                                                      "--compare-official hmr_adapter or all"),
    (["--model", "genhmr", "--size", "paper"], "--size is read only with --compare-official"),
    (["--model", "simplehand", "--repeats", "3"], "--repeats is read only with --model hmr_adapter"),
    (["--compare-official", "all", "--config", "tiny"], "--config is read only with --model"),
    ([], "expected --model, --compare-official, --data-grid, --data-bench or --video-fps"),
])
def test_a_bad_flag_gets_one_line_naming_it_and_exit_status_2(argv, expected, capsys):
    assert expected in _refused(argv, capsys)


def test_an_official_folder_is_checked_before_any_work(tmp_path, capsys):
    err = _refused(["--compare-official", "simplehand", "--official-simplehand", str(tmp_path)], capsys)
    assert f"--official-simplehand {tmp_path}: lacks hand_net.py, cfg.py, models/modules.py" in err
    assert "patienceFromZhou/simpleHand" in err
    (tmp_path / "file").write_text("")
    err = _refused(["--compare-official", "hmr_adapter", "--official-hamer", str(tmp_path / "file")], capsys)
    assert "--official-hamer" in err and "not a folder (expected a checkout of geopavlakos/hamer)" in err
    err = _refused(["--data-grid", str(tmp_path / "file")], capsys)
    assert "--data-grid" in err and "a file, expected a folder" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA: it checks the refusal where "
                                                       "no CUDA device is")
def test_cuda_without_a_device_is_refused(capsys):
    assert "--device cuda: no CUDA device here" in _refused(["--compare-official", "all", "--device", "cuda"], capsys)


def test_a_failing_paper_keeps_the_other_papers_rows_and_the_command_fails(monkeypatch, capsys):
    """One short GPU lease: a paper that raises prints its traceback, the next paper still runs, and the command
    exits non-zero naming the failed one."""
    def broken(run):
        raise RuntimeError("planted")
    monkeypatch.setattr(bench, "COMPARISONS", {"simplehand": broken, "genhmr": lambda run: print("genhmr row")})
    with pytest.raises(SystemExit) as e:
        bench.compare_official("all", bench.CompareRun(torch.device("cpu"), True, 1, 0))
    out, err = capsys.readouterr()
    assert "genhmr row" in out and "RuntimeError: planted" in err
    # a str code: Python prints it and exits with status 1 (a run that failed, not bad input's 2), in one line
    assert isinstance(e.value.code, str) and "\n" not in e.value.code, e.value.code
    assert e.value.code.startswith("python -m lab.bench: --compare-official simplehand failed (traceback above)"), \
        e.value.code


# ---------------------------------------------------------------------------------------------
# 4. The command at the reduced size: our side always, the official side where its checkout is named

WORK = ("SimpleHand   [official] Patchify training step", "SimpleHand   [official] Patchify inference",
        "HaMeR        expert (reduced) training step", "HaMeR        expert (reduced) forward",
        "HMR-Adapter  [tiny] adapters' training step", "HMR-Adapter  [tiny] pipeline, baseline",
        "HMR-Adapter  [tiny] pipeline, adapted", "GenHMR       [tiny] UGS T=1 + SMPL",
        "GenHMR       [tiny] UGS T=5 + SMPL",
        "GenHMR       [tiny] UGS T=5 + refinement P=1 + SMPL", "GenHMR       [tiny] UGS T=5 + refinement P=5 + SMPL",
        "GenHMR       [tiny] image stage training step")


def _rows(out):
    """{work: [(batch, ours ms, official ms or None, GFLOP, note)]} of the printed table."""
    rows = {}
    for line in out.splitlines():
        work = next((w for w in WORK if line.startswith(w + " ")), None)
        if work:
            cells = line[len(work):].split(None, 10)
            official = None if cells[3] == "-" else float(cells[3])
            rows.setdefault(work, []).append((int(cells[0]), float(cells[2]), official, float(cells[9]),
                                              cells[10] if len(cells) > 10 else ""))
    return rows


def _training_over_inference(rows, train, infer, batch):
    """FLOPs of a training step over those of the forward at the same batch: about 3 (forward + backward)."""
    (t,) = [r for r in rows[train] if r[0] == batch]
    (f,) = [r for r in rows[infer] if r[0] == batch]
    return t[3] / f[3]


def test_compare_official_all_runs_our_side_at_the_reduced_size_and_prints_every_row(capsys):
    bench.main(["--compare-official", "all", "--reps", "1", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "REDUCED size (a smoke test of the machinery: not a result)" in out.splitlines()[0]
    rows = _rows(out)
    assert set(rows) == set(WORK), set(WORK) - set(rows)
    for work, figures in rows.items():
        for batch, ours, official, gflop, note in figures:
            assert ours > 0 and gflop > 0 and official is None, (work, batch)
    assert [r[0] for r in rows["SimpleHand   [official] Patchify inference"]] == [1, 4]
    assert "paper AITI 0.102 s" in rows["GenHMR       [tiny] UGS T=5 + SMPL"][0][4]
    # a training step's FLOPs: 3 x the training forward's, the same network as the eval forward at that batch
    # (HaMeR's expert: no dropout, so both modes take one attention path; on the CPU FlopCounterMode does not count
    # scaled_dot_product_attention's CPU kernel, which SimpleHand's eval forward takes and its dropout-on training
    # forward does not)
    ratio = _training_over_inference(rows, "HaMeR        expert (reduced) training step",
                                     "HaMeR        expert (reduced) forward", 4)
    assert 2.95 < ratio < 3.1


OFFICIAL_SIMPLEHAND, OFFICIAL_HAMER = os.environ.get("HMR_OFFICIAL_SIMPLEHAND"), os.environ.get("HMR_OFFICIAL_HAMER")
HAVE = {p: importlib.util.find_spec(p) is not None for p in ("timm", "einops")}


@pytest.mark.skipif(not (OFFICIAL_SIMPLEHAND or OFFICIAL_HAMER) or not HAVE["timm"],
                    reason="the official side needs $HMR_OFFICIAL_SIMPLEHAND and/or $HMR_OFFICIAL_HAMER naming "
                    "checkouts of patienceFromZhou/simpleHand and geopavlakos/hamer, and timm (HaMeR: also einops) "
                    "installed; CI fetches neither, so there only our side runs (the test above)")
def test_compare_official_with_the_official_code_times_both_sides_of_one_network(capsys):
    argv, models = ["--reps", "1", "--device", "cpu"], []
    if OFFICIAL_SIMPLEHAND:
        argv += ["--official-simplehand", OFFICIAL_SIMPLEHAND]
        models.append("simplehand")
    if OFFICIAL_HAMER and HAVE["einops"]:
        argv += ["--official-hamer", OFFICIAL_HAMER]
        models.append("hmr_adapter")
    which = models[0] if len(models) == 1 else "all"
    bench.main(["--compare-official", which] + argv)
    rows = _rows(capsys.readouterr().out)
    compared = ([w for w in WORK if w.startswith("SimpleHand")] if "simplehand" in models else []) + \
        ([w for w in WORK if w.startswith("HaMeR")] if "hmr_adapter" in models else [])
    for work in compared:
        for batch, ours, official, gflop, note in rows[work]:
            assert official is not None and official > 0, (work, batch)
    if "simplehand" in models:  # its weights through simplehand.official_state_dict: the same vertices
        note = rows["SimpleHand   [official] Patchify training step"][0][4]
        assert "max |verts diff|" in note and float(note.split()[-2]) < 1e-3, note  # millimetres
    if "hmr_adapter" in models:  # its weights through hmr_adapter.hamer_state_dict: the same rotations
        note = rows["HaMeR        expert (reduced) training step"][0][4]
        assert "max |R diff|" in note and float(note.split()[-1]) < 1e-4, note


# ---------------------------------------------------------------------------------------------
# 6. --video-fps: demo.py --video's frames per second, one frame at a time against batches


def test_video_fps_times_every_frame_once_per_batch_size_and_prints_the_ratio(capsys, monkeypatch):
    """Each batch size runs the clip's frames through demo's batched inference, every frame exactly once after one
    warm-up batch; the printed line gives both speeds and their ratio."""
    import demo
    calls = []
    paper = demo.MODELS["genhmr"]
    monkeypatch.setitem(demo.MODELS, "genhmr", paper._replace(
        infer=lambda loaded, images, boxes, people, args: calls.append(len(images)) or paper.infer(
            loaded, images, boxes, people, args)))
    speed = bench.video_fps("genhmr", frames=3, batch_sizes=(1, 2), repeats=1)
    assert calls == [1, 1, 1, 1, 2, 2, 1] and set(speed) == {1, 2} and all(v > 0 for v in speed.values())
    with pytest.raises(SystemExit) as e:
        bench.main(["--video-fps", "--model", "genhmr", "--params"])
    assert e.value.code == 2 and "--video-fps times demo.py --video alone: not with --params" in capsys.readouterr().err
