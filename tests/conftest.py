import numpy as np
import pytest
import torch
from PIL import Image

from tune_search.cli import main


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


PLANTED_SEARCHED = ["hflip", "color", "blur", "brightness", "contrast"]
PLANTED_SPACE = f"""
data: {{source: planted, image_size: 32, train_size: 300, val_size: 300}}
space: {{augmentations: [{", ".join(PLANTED_SEARCHED)}], strength: [0.5, 1.0], lr: 0.003, freeze_depth: 3, batch_size: 32}}
budget: {{num_samples: 3, max_epochs: 4, grace_period: 1}}
screen: {{strength: 1.0, max_seeds: 4}}
dose: {{enabled: false}}
confirm: {{policies: [], seeds: 3}}  # the policy arm is tested on the polarity run (test_planted_declared)
# focus keeps its 4 replicates: after 2 it called brightness (planted harmless, but doubling the
# data's own brightness range at strength 1) hurts, -5.8 [-8.9, -2.6]; after all 4, -2.5 [-5.8, +0.9]
"""


@pytest.fixture(scope="session")
def planted_run(tmp_path_factory):
    """A small search and its screen on the planted-harm data (test_planted checks its
    verdicts; test_explain explains them)."""
    root = tmp_path_factory.mktemp("planted")
    (root / "space.yaml").write_text(PLANTED_SPACE)
    assert main(["--space", str(root / "space.yaml"), "--storage", str(root), "--name", "planted"]) == 0
    return root / "planted"
