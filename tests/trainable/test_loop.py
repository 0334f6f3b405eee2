import subprocess
import sys

import pytest

from trainable.loop import keep_freed_memory

FAULTS_PER_BATCH = """
import resource, sys, torch
from trainable.augment import build_pipeline
from trainable.loop import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
torch.set_num_threads(1)
images = torch.randint(0, 256, (64, 3, 64, 64), dtype=torch.uint8)
pipeline = build_pipeline({"crop": 0.5, "affine": 0.5, "blur": 0.5, "contrast": 0.5}, 64)
for _ in range(3):
    pipeline(images)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    pipeline(images)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


def faults_per_batch(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", FAULTS_PER_BATCH, mode], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_kept_memory_spares_the_page_faults_of_every_batch():
    """Without it each augmented batch faults its float buffers back in from the OS."""
    assert keep_freed_memory()
    default, kept = faults_per_batch("default"), faults_per_batch("keep")
    assert default > 500 and kept < default / 10, (default, kept)
