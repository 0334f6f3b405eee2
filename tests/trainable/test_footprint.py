"""A trial's peak memory, measured in a child process as a trial trains and evaluates."""

import json
import subprocess
import sys

import pytest
import torch

from tune_search.trainable.footprint import Probe
from tune_search.trainable.models import ModelSpec, build_model

pytestmark = pytest.mark.slow  # each measurement is a child process that imports torch


def measured(probe: Probe) -> dict[str, int]:
    done = subprocess.run([sys.executable, "-m", "tune_search.trainable.footprint", probe.args()], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def test_the_probe_reports_its_peak_and_the_frozen_prefix_per_image():
    figures = measured(Probe("efficientnet_lite0", "auto", 6, 32, 32, 3, 64))
    assert 2e8 < figures["peak_bytes"] < 4e9  # torch and the model are in it; nothing near a large run's
    prefix = build_model(ModelSpec(), 6, 3).frozen_features(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    assert figures["feature_numbers"] == prefix.numel()


def test_bigger_images_and_batches_take_more():
    small = measured(Probe("efficientnet_lite0", "auto", 6, 32, 16, 0, 32))["peak_bytes"]
    large = measured(Probe("efficientnet_lite0", "auto", 6, 96, 64, 0, 256))["peak_bytes"]
    # 96 px x 64 images: Lite0's saved activations alone are over 0.5 GB more
    assert large > small + 5e8, (small, large)
