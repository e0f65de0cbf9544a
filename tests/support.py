"""Helpers the test modules share, one per idea (each had been written in several test files before)."""
import pathlib

import torch

TESTS = pathlib.Path(__file__).parent


def official_state(name):
    """Meta tensors with the names, shapes and dtypes of a released checkpoint, from tests/official_keys/NAME.txt
    (tab-separated key, shape, dtype; measured from the official file, see tests/official/README.md)."""
    state = {}
    for line in open(TESTS / "official_keys" / f"{name}.txt"):
        if not line.startswith("#"):
            key, shape, dtype = line.rstrip("\n").split("\t")
            dims = tuple(int(d) for d in shape.strip("()").split(",") if d.strip())
            state[key] = torch.empty(dims, dtype=getattr(torch, dtype), device="meta")
    return state


def signed_volume(verts, faces):
    """The sum over faces of det(v0, v1, v2) / 6 about the centroid, in float64: > 0 when the faces wind
    counter-clockwise seen from outside; its sign flips under a mirror, never under a rotation."""
    v = torch.as_tensor(verts).double()
    return torch.linalg.det((v - v.mean(0))[torch.as_tensor(faces).long()]).sum().item() / 6


def run_demo(model, argv, capsys):
    """demo.main(["--model", MODEL, *argv]) in this process -> (exit status, stdout lines, stderr lines)."""
    import demo
    try:
        demo.main(["--model", model, *(str(a) for a in argv)])
        status = 0
    except SystemExit as e:
        status = e.code
    captured = capsys.readouterr()
    return status, captured.out.splitlines(), captured.err.splitlines()


def train_genhmr_chain(out):
    """GenHMR's stages through train.main, a few steps each (tokenizer, backbone stage, image stage with 5
    refinement iterations; the prior stage runs its default 0 steps) -> OUT/<stage>/{ckpt.pt,metrics.json,...}."""
    import train
    tiny = ["--out", str(out), "--log-every", "1", "--eval-samples", "6"]
    train.main(["--model", "genhmr_tokenizer", "--max-steps", "3", "--set", "batch_size=8", "--train-samples", "16"]
               + tiny)
    train.main(["--model", "genhmr_backbone", "--max-steps", "2", "--set", "batch_size=4", "--train-samples", "8"]
               + tiny)
    train.main(["--model", "genhmr", "--max-steps", "2", "--set", "batch_size=4", "--train-samples", "8",
                "--set", "refine_iterations=5"] + tiny)
    return out
