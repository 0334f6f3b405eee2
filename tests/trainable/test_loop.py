import subprocess
import sys

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from trainable.augment import build_pipeline
from trainable.data import Split
from trainable.loop import keep_freed_memory, predict

FAULTS_PER_BATCH = """
import resource, sys, torch
from trainable.augment import build_pipeline
from trainable.loop import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
torch.set_num_threads(1)
images = torch.randint(0, 256, (64, 3, 64, 64), dtype=torch.uint8)
pipeline = build_pipeline({"crop": 0.5, "affine": 0.5, "blur": 0.5, "contrast": 0.5}, 64)
model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3))
def step():
    model(pipeline(images)).sum().backward()
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


def faults_per_batch(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", FAULTS_PER_BATCH, mode], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_kept_memory_spares_the_page_faults_of_every_batch():
    """Without it each augment-and-step faults its float buffers back in from the OS (how
    many depends on glibc's adaptive thresholds: the worse of two runs). One float batch
    spans 768 pages; a step touches several such buffers."""
    assert keep_freed_memory()
    default = max(faults_per_batch("default") for _ in range(2))
    kept = faults_per_batch("keep")
    assert default > 1000 and kept < 400, (default, kept)


class PixelModel(torch.nn.Module):
    """Takes pixel values 0-255, uint8 or float, as a StagedClassifier does."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 30 * 30, 5))

    def forward(self, x):
        return self.net(x.float())


def test_predict_passes_each_batch_through_the_pipeline(images):
    torch.manual_seed(0)
    model = PixelModel()
    split = Split(images, torch.zeros(len(images), dtype=torch.long))
    cpu = torch.device("cpu")
    plain = predict(model, split, batch_size=24, device=cpu)
    gray = predict(model, split, batch_size=24, device=cpu, pipeline=build_pipeline({"grayscale": 1.0}, 32))
    expected = model(TF.rgb_to_grayscale(images.float(), num_output_channels=3))
    assert plain.shape == gray.shape == (len(images), 5)
    assert torch.allclose(gray, expected, atol=1e-4) and not torch.allclose(gray, plain, atol=1e-2)
