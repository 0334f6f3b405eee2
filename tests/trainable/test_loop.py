import torch
from torchvision.transforms.v2 import functional as TF

from tune_search.trainable.augment import build_pipeline
from tune_search.trainable.data import Split
from tune_search.trainable.loop import predict


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
