import pytest

from search.cli import main

PLANTED_SEARCHED = ["hflip", "color", "blur", "brightness", "contrast"]
PLANTED_SPACE = f"""
data: {{source: planted, image_size: 32, train_size: 300, val_size: 300}}
space: {{augmentations: [{", ".join(PLANTED_SEARCHED)}], strength: [0.5, 1.0], lr: 0.003, freeze_depth: 3, batch_size: 32}}
budget: {{num_samples: 3, max_epochs: 4, grace_period: 1}}
screen: {{strength: 1.0, seeds: 1}}
dose: {{enabled: false}}
"""


@pytest.fixture(scope="session")
def planted_run(tmp_path_factory):
    """A small search and its screen on the planted-harm data (test_planted checks its
    verdicts; test_explain explains them)."""
    root = tmp_path_factory.mktemp("planted")
    (root / "space.yaml").write_text(PLANTED_SPACE)
    assert main(["--space", str(root / "space.yaml"), "--storage", str(root), "--name", "planted"]) == 0
    return root / "planted"
