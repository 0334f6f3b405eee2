from tune_search.config import load_config
from tune_search.pipeline import prepare


def test_an_imbalanced_folder_gets_a_word_and_the_balance_hint(image_folder, capsys):
    for i in range(8):
        (image_folder / "ant" / f"{i}.png").unlink()  # ant 4, bee and cat 12
    prepare(load_config(None, cfg_overrides(image_folder)))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"data: image folder {image_folder}; ") and "3 classes, 16 px" in lines[0]
    assert lines[1] == "  imbalanced: 3 to 9 train images per class; `data: {balance: oversample}` (or `weighted`) evens them out"
    prepare(load_config(None, {**cfg_overrides(image_folder), "data.balance": "oversample"}))
    assert "  imbalanced:" not in capsys.readouterr().out  # asked for: no hint


def cfg_overrides(folder):
    return {"data.source": str(folder), "data.image_size": 16, "data.val_fraction": 0.25, "model.name": "efficientnet_lite0"}
