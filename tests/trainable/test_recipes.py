from tune_search.trainable.models import BUNDLED, ModelSpec
from tune_search.trainable.recipes import pretraining_recipe


def test_recipes_follow_the_weights_each_model_loads():
    assert pretraining_recipe(ModelSpec(BUNDLED)).augmentations == ("crop", "hflip")
    # torchvision's resnet18 default weights use the classic reference recipe, resnet50's the new one
    assert pretraining_recipe(ModelSpec("resnet18")).augmentations == ("crop", "hflip")
    assert "references/classification#resnet" in pretraining_recipe(ModelSpec("resnet18")).source
    new = pretraining_recipe(ModelSpec("resnet50"))
    assert {"brightness", "rotate", "erasing"} <= set(new.augmentations) and "issues/3995" in new.source
    assert "erasing" in pretraining_recipe(ModelSpec("mobilenet_v3_small")).augmentations


def test_a_recipe_is_unknown_without_the_weights_it_names(tmp_path):
    assert pretraining_recipe(ModelSpec("resnet18", "none")) is None
    assert pretraining_recipe(ModelSpec("resnet18", str(tmp_path / "mine.pt"))) is None
