import numpy as np
import pytest
import torch
from PIL import Image


@pytest.fixture
def image_folder(tmp_path):
    """A tiny ImageFolder tree: 3 classes x 12 images of mixed modes (RGB, L, RGBA), 20-40 px."""
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    modes = ["RGB", "L", "RGBA"]
    for c, name in enumerate(["ant", "bee", "cat"]):
        (root / name).mkdir(parents=True)
        for i in range(12):
            size = (20 + 2 * i, 40 - i)
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            pixels[..., c] = 255  # each class has its own dominant channel
            Image.fromarray(pixels).convert(modes[i % 3]).save(root / name / f"{i}.png")
    return root


@pytest.fixture
def images():
    """A batch of 64 smooth random uint8 images, 3 x 32 x 32, with structure to transform."""
    g = torch.Generator().manual_seed(0)
    coarse = torch.randint(0, 256, (64, 3, 8, 8), generator=g, dtype=torch.uint8)
    return torch.nn.functional.interpolate(coarse.float(), size=32, mode="bilinear").round().to(torch.uint8)
