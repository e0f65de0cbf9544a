"""Tests for render.py: the z-buffer against the brute-force `render.reference_rasterize`, cracks, culling,
the GPU, and Lambert shading."""
import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import data
from lab import render
from test_synthetic import random_background



# ---------------------------------------------------------------------------------------------
# helpers

def icosphere(subdivisions=2):
    """Unit sphere mesh: verts (V, 3) float64, faces (F, 3) with outward counter-clockwise winding."""
    t = (1 + 5 ** 0.5) / 2
    verts = [(-1, t, 0), (1, t, 0), (-1, -t, 0), (1, -t, 0), (0, -1, t), (0, 1, t), (0, -1, -t), (0, 1, -t),
             (t, 0, -1), (t, 0, 1), (-t, 0, -1), (-t, 0, 1)]
    faces = [(0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11), (1, 5, 9), (5, 11, 4), (11, 10, 2),
             (10, 7, 6), (7, 1, 8), (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8), (3, 8, 9), (4, 9, 5), (2, 4, 11),
             (6, 2, 10), (8, 6, 7), (9, 8, 1)]
    verts = [tuple(c / math.sqrt(sum(x * x for x in v)) for c in v) for v in verts]
    for _ in range(subdivisions):
        midpoint, new_faces = {}, []

        def mid(a, b):
            if (a, b) not in midpoint:
                p = [(x + y) / 2 for x, y in zip(verts[a], verts[b])]
                norm = math.sqrt(sum(c * c for c in p))
                verts.append(tuple(c / norm for c in p))
                midpoint[(a, b)] = midpoint[(b, a)] = len(verts) - 1
            return midpoint[(a, b)]

        for a, b, c in faces:
            ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
            new_faces += [(a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca)]
        faces = new_faces
    return torch.tensor(verts, dtype=torch.float64), torch.tensor(faces)



def random_triangle_soup(rng, count):
    """count random triangles in front of a camera K; -> verts (3 count, 3), faces (count, 3), K."""
    centres = torch.stack([torch.empty(count).uniform_(-0.3, 0.3, generator=rng),
                           torch.empty(count).uniform_(-0.3, 0.3, generator=rng),
                           torch.empty(count).uniform_(1.0, 3.0, generator=rng)], -1)
    verts = (centres[:, None, :] + 0.3 * torch.randn(count, 3, 3, generator=rng) * torch.tensor([1, 1, 0.3]))
    verts = verts.reshape(-1, 3)
    K = torch.tensor([[40.0, 0, 16], [0, 40.0, 12], [0, 0, 1]])
    return verts.float(), torch.arange(3 * count).view(count, 3), K


# ---------------------------------------------------------------------------------------------
# 1. renderer

@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), count=st.integers(1, 40))
@example(seed=0, count=1)
def test_rasterize_agrees_with_brute_force_zbuffer(seed, count):
    rng = torch.Generator().manual_seed(seed)
    verts, faces, K = random_triangle_soup(rng, count)
    height, width = 24, 32
    pix, face, bary = render.rasterize(verts, faces, K, (height, width))
    oracle, margin, gap = render.reference_rasterize(verts, faces, K, (height, width))
    got = torch.full((height * width,), -1, dtype=torch.long)
    got[pix] = face
    clear = (margin > 1e-3) & (gap > 1e-4)  # pixels far from every edge and without a depth tie
    assert torch.equal(got[clear], oracle[clear])
    # the barycentric weights reproduce the pixel centre
    uvw = verts.double() @ K.double().T
    uv = (uvw[:, :2] / uvw[:, 2:])[faces[face]]  # (P, 3, 2)
    centre = torch.stack([pix % width + 0.5, pix // width + 0.5], -1).double()
    assert torch.allclose((bary.double()[:, :, None] * uv).sum(1), centre, atol=1e-3)
    assert torch.allclose(bary.sum(1), torch.ones(len(pix)), atol=1e-5)


def test_rasterize_sphere_covers_its_projected_disc_without_cracks():
    verts, faces = icosphere(3)
    radius, depth, f = 0.1, 1.0, 400.0
    verts = (verts * radius + torch.tensor([0.0, 0.0, depth])).float()
    K = torch.tensor([[f, 0, 64], [0, f, 64], [0, 0, 1]])
    _, mask = render.render_mesh(verts, faces, K, 128, return_mask=True)
    ys, xs = torch.meshgrid(torch.arange(128) + 0.5, torch.arange(128) + 0.5, indexing="ij")
    r = ((xs - 64) ** 2 + (ys - 64) ** 2).sqrt()
    r_disc = f * radius / math.sqrt(depth**2 - radius**2)  # silhouette of a sphere seen in perspective
    assert mask[r < r_disc - 1.5].all()  # no cracks inside
    assert not mask[r > r_disc + 0.5].any()


def test_backface_culling_changes_nothing_for_a_closed_outward_mesh():
    verts, faces = icosphere(2)
    verts = (verts * torch.tensor([0.1, 0.06, 0.08]) + torch.tensor([0.02, -0.01, 0.5])).float()
    K = torch.tensor([[300.0, 0, 40], [0, 300.0, 36], [0, 0, 1]])
    both = render.render_mesh(verts, faces, K, (72, 80))
    culled = render.render_mesh(verts, faces, K, (72, 80), cull_backfaces=True)
    assert torch.allclose(both, culled, atol=1e-5) and both.max() > 0
    # culling with the winding reversed leaves only the inside of the far half: a different picture
    inside = render.render_mesh(verts, faces.flip(1), K, (72, 80), cull_backfaces=True)
    assert not torch.allclose(both, inside, atol=1e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_render_mesh_gives_the_same_image_on_the_gpu():
    verts, faces = icosphere(3)
    verts = (verts * torch.tensor([0.1, 0.06, 0.08]) + torch.tensor([0.02, -0.01, 0.5])).float()
    K = torch.tensor([[300.0, 0, 40], [0, 300.0, 36], [0, 0, 1]])
    background = random_background(data.sample_rng(0, 0, 0), (72, 80))
    cpu = render.render_mesh(verts, faces, K, (72, 80), background=background)
    gpu = render.render_mesh(verts.cuda(), faces.cuda(), K.cuda(), (72, 80), background=background.cuda())
    assert gpu.is_cuda and (gpu.cpu() - cpu).abs().max() < 1e-4
    zoom = torch.diag(torch.tensor([1.1, 1.1, 1.0], dtype=torch.float64))
    warped = data.warp_image(background.cuda(), zoom, (72, 80))
    assert warped.is_cuda


def test_render_mesh_lambert_shading_of_a_facing_square():
    # a square facing the camera, light from the camera: I = albedo (ambient + (1 - ambient) cos)
    verts = torch.tensor([[-1.0, -1, 2], [1, -1, 2], [1, 1, 2], [-1, 1, 2]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    K = torch.tensor([[8.0, 0, 8], [0, 8.0, 8], [0, 0, 1]])
    color, ambient = torch.tensor([0.8, 0.5, 0.2]), 0.3
    tilt = math.radians(60)
    light = (0.0, math.sin(tilt), -math.cos(tilt))
    image = render.render_mesh(verts, faces, K, 16, color=color, light=light, ambient=ambient)
    expected = color * (ambient + (1 - ambient) * math.cos(tilt))
    assert torch.allclose(image[:, 8, 8], expected, atol=1e-5)
    assert torch.allclose(image[:, 0, 0], torch.zeros(3))  # outside: black background
    # winding does not matter
    flipped = render.render_mesh(verts, faces.flip(1), K, 16, color=color, light=light, ambient=ambient)
    assert torch.allclose(image, flipped)
