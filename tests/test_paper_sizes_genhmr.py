"""GenHMR at the paper's sizes through train.py (slow): every stage of the chain trains 2 steps on
synthetic data at 256 x 192, evaluates and checkpoints; and the paper's structure (linear token head,
HMR2.0's SMPL head, 1x / 4x / 8x pyramid) trains under 2-rank DDP, where an unused parameter would fail.

Run alone, each stage in its own process:  python -m pytest -m slow tests/test_paper_sizes_genhmr.py -s
Measured on a 2-core CPU machine (README): peak memory and seconds per step are printed per stage."""

import json
import os
import resource
import shutil
import subprocess
import sys
import time

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMON = ["--config", "paper", "--device", "cpu", "--max-steps", "2", "--train-samples", "8", "--eval-samples", "4",
          "--log-every", "1"]
# the paper's batches are 512 poses (tokenizer) and 48 images; 48 ViT-H images are ~35 TFLOP and ~30 GB of
# activations a step on a CPU, so every stage takes 2
SMALL_BATCH = ["--set", "batch_size=2"]


def torchrun(model, args, out, nproc=1):
    """train.py --model `model` under torchrun in a child process -> (stdout, {stage: seconds of its step 2
    (from its step-1 log line to its step-2 one)}, peak resident memory of the largest process so far in GB)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "train.py",
           "--model", model, "--out", str(out)] + COMMON + args
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    lines, stamps, stage = [], {}, model
    for line in proc.stdout:
        lines.append(line)
        if " (paper): " in line and "parameters" in line:  # each stage's header: "NAME (paper): ..."
            stage = line.split(" (paper): ")[0]
        if line.startswith(("step     1/", "step     2/")):
            stamps[stage, line[9]] = time.perf_counter()
    assert proc.wait(timeout=1800) == 0, "".join(lines[-40:])
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # kB -> GB; the largest child so far
    step_s = {name: stamps[name, "2"] - stamps[name, "1"] for name, k in stamps if k == "2"}
    return "".join(lines), step_s, peak_gb


@pytest.mark.slow
def test_paper_chain_trains_every_stage_two_steps_at_paper_size(tmp_path):
    """One command: genhmr_tokenizer -> genhmr_backbone -> genhmr_prior -> genhmr at PAPER (8.7M, 679M, the
    prior 0 steps as the paper, 655M parameters), each other stage 2 steps on one rank (--max-steps caps the
    stages it starts from, --set applies to each stage that has the field), then its held-out evaluation and
    its checkpoint."""
    if os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") < 20 * 2**30:
        pytest.skip("needs 20 GiB of memory: the image stage holds two ViT-H (one frozen, one with AdamW state), "
                    "about 16 GB")
    out = tmp_path / "run"
    try:
        log, step_s, peak_gb = torchrun("genhmr", SMALL_BATCH, out)
        print(f"\n[paper] genhmr chain, one process: peak memory {peak_gb:.1f} GB")
        for model, metric in (("genhmr_tokenizer", "tokenizer_mpjpe_mm"), ("genhmr_backbone", "regression_mpjpe_mm"),
                              ("genhmr", "refined_mpjpe_mm")):
            report = json.loads((out / model / "metrics.json").read_text())
            ckpt = torch.load(out / model / "ckpt.pt", weights_only=True, mmap=True)
            print(f"[paper] {model}: {step_s[model]:.1f} s/step (global batch {report['global_batch']}), "
                  f"{report['wall_time_s']:.0f} s for the stage")
            assert ckpt["step"] == 2 and ckpt["config_name"] == "paper" and report["steps"] == 2
            assert all(map(torch.isfinite, torch.tensor([h["loss"] for h in report["history"]] + [report[metric]])))
        assert "genhmr (paper): " in log and "global batch 2 (2 per rank)" in log
        assert torch.load(out / "genhmr_prior" / "ckpt.pt", weights_only=True, mmap=True)["step"] == 0
        model_cfg = ckpt["config"]["model"]  # the preset's model config (GenHMRConfig)
        assert tuple(model_cfg["image_size"]) == (256, 192) and model_cfg["token_head"] == "linear"
        assert ckpt["model"]["masked_transformer.head.weight"].shape == (2048, 256)  # the paper's logits
    finally:
        shutil.rmtree(out, ignore_errors=True)  # about 16 GB of checkpoints (weights and AdamW state)


@pytest.mark.slow
def test_paper_structure_trains_under_two_rank_ddp(tmp_path):
    """The PAPER configs with narrow widths (--set) on 2 gloo ranks: DDP fails on the second step if a
    parameter got no gradient, so every part of the paper's structure must be used by its loss."""
    narrow = ["--set", "vit_width=64", "--set", "vit_depth=2", "--set", "vit_heads=2", "--set", "head_hidden=64",
              "--set", "hmr2_head=(64,2,2,16,64)", "--set", "batch_size=4"]
    torchrun("genhmr_tokenizer", ["--set", "width=64", "--set", "batch_size=32"], tmp_path, nproc=2)
    torchrun("genhmr_backbone", narrow, tmp_path, nproc=2)
    log, _, _ = torchrun("genhmr", narrow + ["--set", "refine_iterations=2"], tmp_path, nproc=2)
    assert "2 rank(s) on cpu" in log and "step     2/2" in log
