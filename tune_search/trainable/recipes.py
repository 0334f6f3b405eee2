"""Which of the registry's augmentations a backbone's pretrained weights were trained with.

The `explain` study compares the screen's effects of augmentations inside and outside the
pretraining recipe (the motivating thread's "augmentations the backbone was not pretrained
with distract its features"). Recipe operations are mapped to the nearest registry entry:
RandomResizedCrop is crop; ShearX/Y and TranslateX/Y are affine; Color (saturation) is color;
Sharpness is sharpen. Operations the registry lacks (posterize, solarize, equalize, mixup)
are left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torchvision

from tune_search.trainable.models import LITE, ModelSpec


@dataclass(frozen=True)
class Recipe:
    augmentations: tuple[str, ...]  # registry names
    source: str  # where the recipe is written down


REFERENCE = "https://github.com/pytorch/vision/tree/main/references/classification"
CLASSIC = Recipe(("crop", "hflip"), f"{REFERENCE} (RandomResizedCrop, RandomHorizontalFlip)")
AUTOAUGMENT = ("crop", "hflip", "affine", "rotate", "color", "contrast", "sharpen")  # AutoAugment's ImageNet policy
TRIVIAL = ("crop", "hflip", "affine", "rotate", "brightness", "color", "contrast", "sharpen")  # TrivialAugmentWide
# torchvision's weights name their recipe by URL (weights.meta["recipe"]); by its anchor:
BY_ANCHOR = {
    # the "new recipe": TrivialAugmentWide, RandomErasing 0.1, mixup, cutmix, long schedule
    "issues/3995": (*TRIVIAL, "erasing"),
    "#mobilenetv3-large--small": (*AUTOAUGMENT, "erasing"),  # --auto-augment imagenet --random-erase 0.2
    "#efficientnet-v1": AUTOAUGMENT,  # ported from the TensorFlow weights, trained with AutoAugment
    "#efficientnet-v2": (*TRIVIAL, "erasing"),  # --auto-augment ta_wide --random-erase 0.1
}
# The bundled EfficientNet-Lite0 is the TensorFlow reference model (timm's
# tf_efficientnet_lite0 port); its training used the reference preprocessing.
LITE_RECIPE = Recipe(
    ("crop", "hflip"),
    "https://github.com/tensorflow/tpu/blob/master/models/official/efficientnet/preprocessing.py "
    "(distorted bounding-box crop, horizontal flip; timm cards: tf_efficientnet_lite0/1/2.in1k)",
)


def pretraining_recipe(spec: ModelSpec) -> Recipe | None:
    """The recipe `spec`'s weights were pretrained with; None when unknown (random init, or
    a weights file whose origin tune-search cannot know)."""
    if spec.weights != "auto":
        return None
    if spec.name in LITE:
        return LITE_RECIPE
    url = torchvision.models.get_model_weights(spec.name).DEFAULT.meta.get("recipe", "")
    for anchor, augmentations in BY_ANCHOR.items():
        if anchor in url:
            return Recipe(augmentations, url)
    return Recipe(CLASSIC.augmentations, url or CLASSIC.source)
