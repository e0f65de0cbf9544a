"""What changes from one epoch to the next, and what repeats: every sampler, shuffle and augmentation.

The trainer's order (distributed.StepBatches: a permutation per epoch seeded by (seed, epoch)), its loader
(distributed.EpochIndexed hands each sample's epoch to the dataset), the real hand datasets' augmentation (data.py,
`_PhotoHands`: sample_rng(seed, epoch, index)), the synthetic sets' draws (lab/synthetic.py: augmentation from the
epoch; with vary_with_epoch the person too) and the per-step draws of the losses (GenHMR's masking, swap and pose
rotations from the global RNG that train.py seeds with seed + rank). Each is shown to differ between two epochs
(or steps) and to repeat exactly for the same epoch and seed, from a fresh object: a shuffle or an augmentation
that repeats every epoch fails here, and so does one that is not a function of (seed, epoch).
"""
import pytest
import torch

import data
import genhmr
from lab import distributed, synthetic
from test_data import write_npz_fixture


def same(a, b):
    """Two samples (dicts of tensors) are equal, key by key."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------
# The trainer's order


def epoch_orders(n, batch, seed, epochs, rank=0, world=1, start=0):
    """{epoch: [indices in the order rank `rank` reads them]} over the steps of `epochs` whole epochs (n divisible
    by batch), from a sampler started at step `start`."""
    steps = epochs * n // batch
    orders = {}
    for keys in distributed.StepBatches(n, batch, rank, world, seed, start, steps):
        for epoch, index in keys:
            orders.setdefault(epoch, []).append(index)
    return orders


def test_each_epoch_is_a_new_permutation_the_same_for_the_same_seed_and_epoch():
    n, batch = 40, 8
    orders = epoch_orders(n, batch, seed=3, epochs=3)
    assert sorted(orders) == [0, 1, 2] and all(sorted(o) == list(range(n)) for o in orders.values())
    assert orders[0] != orders[1] and orders[1] != orders[2] and orders[0] != orders[2]
    assert epoch_orders(n, batch, seed=3, epochs=3) == orders  # a fresh sampler: the same epochs
    assert epoch_orders(n, batch, seed=3, epochs=3, start=n // batch)[1] == orders[1]  # resumed at epoch 1
    assert epoch_orders(n, batch, seed=4, epochs=1)[0] != orders[0]  # another seed, another order
    # two ranks: each reads its half of every global batch, and the halves change with the epoch too
    halves = [epoch_orders(n, batch, seed=3, epochs=3, rank=r, world=2) for r in (0, 1)]
    for e in range(3):
        assert sorted(halves[0][e] + halves[1][e]) == list(range(n)) and halves[0][e] != halves[0][(e + 1) % 3]


# ---------------------------------------------------------------------------------------------
# The real hands' augmentation, alone and through the trainer's loader


@pytest.fixture(scope="module")
def npz_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("npz_hands")
    write_npz_fixture(root, torch.Generator().manual_seed(5), count=3)
    return root


@pytest.mark.parametrize("augment", sorted(data.HAND_AUGMENTS))
def test_real_hands_are_augmented_anew_each_epoch_and_alike_for_the_same_epoch(npz_root, augment):
    def read(epoch, seed=0, index=1):
        d = data.NpzHands(npz_root, "val", image_size=32, augment=True, seed=seed,
                          augment_config=data.HAND_AUGMENTS[augment])
        d.set_epoch(epoch)
        return d[index]

    first = read(0)
    assert same(first, read(0)) and same(read(2), read(2))
    for other in (read(1), read(0, seed=1), read(0, index=2)):
        assert not torch.equal(first["image"], other["image"]) and not torch.equal(first["K"], other["K"])
    plain = data.NpzHands(npz_root, "val", image_size=32)
    before = plain[1]
    plain.set_epoch(5)
    assert same(before, plain[1])  # no augmentation: every epoch the same sample


def trainer_batches(dataset, n, batch, seed, start, stop, rank=0, world=1):
    """The batches train.py's loader gives rank `rank` for steps [start, stop) (run_stage's DataLoader)."""
    sampler = distributed.StepBatches(n, batch, rank, world, seed, start, stop)
    loader = torch.utils.data.DataLoader(distributed.EpochIndexed(dataset), batch_sampler=sampler,
                                         generator=torch.Generator().manual_seed(seed))
    return list(loader)


def test_the_trainers_loader_reads_each_sample_in_its_epochs_augmentation(npz_root):
    """Steps 0-2 of a 3-sample set at batch 1 are epoch 0, steps 3-5 epoch 1: the same index comes back with a new
    augmentation in epoch 1, and the same batches come back for the same steps (a resumed run's)."""
    dataset = lambda: data.NpzHands(npz_root, "val", image_size=32, augment=True, seed=0)
    order = epoch_orders(3, 1, seed=0, epochs=2)
    batches = trainer_batches(dataset(), 3, 1, 0, 0, 6)
    by_epoch = [{i: b for i, b in zip(order[e], batches[3 * e:3 * e + 3])} for e in (0, 1)]
    for i in range(3):
        assert not torch.equal(by_epoch[0][i]["image"], by_epoch[1][i]["image"]), i
        assert not torch.equal(by_epoch[0][i]["joints2d"], by_epoch[1][i]["joints2d"]), i
    resumed = trainer_batches(dataset(), 3, 1, 0, 4, 6)  # a fresh loader from step 4
    assert all(same(a, b) for a, b in zip(resumed, batches[4:]))


# ---------------------------------------------------------------------------------------------
# The synthetic sets' draws


def draw(make, epoch, index=1):
    d = make()
    d.set_epoch(epoch)
    return d[index]


SYNTHETIC = {  # name: (a set that changes with the epoch, the keys that must change, a set that must not)
    "hands augmented": (lambda: synthetic.SyntheticHands(3, image_size=32, augment=True), ("image", "K"),
                        lambda: synthetic.SyntheticHands(3, image_size=32)),
    "hands varying": (lambda: synthetic.SyntheticHands(3, image_size=32, vary_with_epoch=True),
                      ("image", "mano_shape", "mano_pose"), None),
    "bodies augmented": (lambda: synthetic.SyntheticBodies(3, image_size=32, augment=True), ("image", "K", "cam_t"),
                         lambda: synthetic.SyntheticBodies(3, image_size=32)),
    "bodies varying": (lambda: synthetic.SyntheticBodies(3, image_size=32, vary_with_epoch=True),
                       ("image", "smpl_pose", "smpl_shape"), None),
    "poses varying": (lambda: synthetic.SyntheticPoses(3, vary_with_epoch=True), ("smpl_pose", "smpl_shape"),
                      lambda: synthetic.SyntheticPoses(3)),
    "indexed poses varying": (lambda: data.Indexed(synthetic.SyntheticPoses(3, vary_with_epoch=True)),
                              ("smpl_pose",), lambda: data.Indexed(synthetic.SyntheticPoses(3))),
    "whole bodies augmented": (lambda: synthetic.SyntheticWholeBody(3, image_size=(64, 48), augment=True),
                               ("image", "K", "cam_t"), None),
    "whole bodies varying": (lambda: synthetic.SyntheticWholeBody(3, image_size=(64, 48), vary_with_epoch=True),
                             ("image", "smplx_pose", "smplx_shape"), None),
}


@pytest.mark.parametrize("name", list(SYNTHETIC))
def test_synthetic_draws_change_with_the_epoch_and_repeat_for_the_same_one(name):
    make, keys, fixed = SYNTHETIC[name]
    first, again, later = draw(make, 0), draw(make, 0), draw(make, 1)
    assert same(first, again), name  # a fresh set, the same epoch: the same sample
    for key in keys:
        assert not torch.equal(first[key], later[key]), (name, key)
    if fixed is not None:  # without augmentation or vary_with_epoch: the same sample every epoch
        assert same(draw(fixed, 0), draw(fixed, 4)), name


def test_whole_bodies_keep_the_person_across_epochs_without_vary_with_epoch():
    """SyntheticWholeBody without vary_with_epoch: the same person (pose, shape, camera) in every epoch."""
    make = lambda: synthetic.SyntheticWholeBody(2, image_size=(64, 48))
    a, b = draw(make, 0), draw(make, 2)
    for key in ("smplx_pose", "smplx_shape", "smplx_expression", "K", "cam_t", "joints2d"):
        assert torch.equal(a[key], b[key]), key


def test_a_rendered_set_is_the_same_every_epoch(tmp_path):
    """train.py renders a synthetic training set once (synthetic.render_once): every epoch sees it as drawn."""
    rendered = synthetic.render_once(synthetic.SyntheticHands(2, image_size=32, augment=True), tmp_path / "c.pt")
    before = rendered[1]
    rendered.set_epoch(3)
    assert same(before, rendered[1])


# ---------------------------------------------------------------------------------------------
# The losses' own draws, step by step (the global RNG, seeded by train.py with seed + rank)


def test_genhmr_per_step_draws_change_every_step_and_repeat_for_the_same_seed():
    """The tokenizer's pose rotations (augment_pose, App. > Data Augmentation) and the image stage's masking and
    swap (corrupt_tokens): new at every step, the same for the same seed, apart for two ranks' seeds."""
    pose = torch.zeros(4, 24, 3)
    ids = torch.randint(0, 64, (4, 48), generator=torch.Generator().manual_seed(0))
    tok, img = genhmr.TOKENIZER_TINY.recipe, genhmr.TINY.recipe

    def steps(seed):
        torch.manual_seed(seed)
        return [(genhmr.augment_pose(pose, tok), *genhmr.corrupt_tokens(ids, 64, img)) for _ in range(2)]

    a, b, other = steps(0), steps(0), steps(1)
    for x, y in zip(a, b):
        assert all(torch.equal(u, v) for u, v in zip(x, y))
    for x, y in (a, (a[0], other[0])):
        assert all(not torch.equal(u, v) for u, v in zip(x, y))
