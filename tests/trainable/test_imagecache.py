import dataclasses
import os
import pickle
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from tune_search.trainable import data as data_module
from tune_search.trainable import imagecache
from tune_search.trainable.data import DataError, DataSpec, load_dataset


def _same(a, b) -> bool:
    pairs = ((a.train.images, b.train.images), (a.train.labels, b.train.labels), (a.val.images, b.val.images), (a.val.labels, b.val.labels))
    return all(torch.equal(x, y) for x, y in pairs)


def _count_decodes(monkeypatch) -> list:
    calls = []
    real = data_module._decode

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(data_module, "_decode", counting)
    return calls


@pytest.mark.parametrize("sizes", [{}, {"train_size": 12, "val_size": 6}])
def test_a_folder_through_the_cache_equals_it_decoded_in_memory(image_folder, tmp_path, sizes):
    spec = DataSpec(source=str(image_folder), image_size=24, val_fraction=0.25, seed=3, **sizes)
    cached = load_dataset(dataclasses.replace(spec, cache=str(tmp_path / "cache")))
    assert cached.entry is not None and cached.decoded
    assert _same(cached, load_dataset(spec))
    leftovers = sorted(p.name for p in cached.entry.iterdir())
    assert leftovers == ["meta.json", "train.u8", "train_labels.npy", "val.u8", "val_labels.npy"]  # the decoded-all file is gone


def test_a_built_in_set_through_the_cache_equals_it_in_memory(tmp_path):
    spec = DataSpec(source="planted", image_size=16, train_size=60, val_size=30)
    assert _same(load_dataset(dataclasses.replace(spec, cache=str(tmp_path))), load_dataset(spec))


def test_a_generated_set_is_a_new_entry_when_its_sizes_or_seeds_change(monkeypatch):
    """The sizes and seeds a built-in generator is called with live beside the call, not in
    the generator's module: they are part of the key too."""
    spec = DataSpec(source="planted", image_size=16, cache="cache")
    before = data_module.cache_entry(spec)

    def planted_with_more_validation_images():
        from tune_search.trainable import planted

        tx, ty = planted.generate(per_class=200, seed=101)
        vx, vy = planted.generate(per_class=1000, seed=202)
        return data_module._Raw(tx, ty, vx, vy, planted.CLASSES, "", (600, 300))

    assert data_module.cache_entry(spec) == before  # the key is stable
    monkeypatch.setitem(data_module.BUILTIN, "planted", planted_with_more_validation_images)
    assert data_module.cache_entry(spec) != before


def test_a_second_load_decodes_nothing_and_a_changed_file_decodes_again(image_folder, tmp_path, monkeypatch):
    spec = DataSpec(source=str(image_folder), image_size=16, cache=str(tmp_path / "cache"))
    calls = _count_decodes(monkeypatch)
    first = load_dataset(spec)
    assert len(calls) == 36
    second = load_dataset(spec)
    assert len(calls) == 36 and not second.decoded and second.entry == first.entry and _same(first, second)
    changed = image_folder / "bee" / "4.png"
    changed.write_bytes((image_folder / "cat" / "4.png").read_bytes())  # a new picture under an old name
    third = load_dataset(spec)
    assert len(calls) == 72 and third.decoded and third.entry != first.entry
    assert not _same(first, third)
    os.utime(changed, ns=(1, 1))  # a touched file (same bytes, another time) is a new source too
    assert load_dataset(spec).entry not in (first.entry, third.entry)


def test_a_pickled_cached_set_is_its_entry_and_reads_the_same_in_another_process(tmp_path):
    spec = DataSpec(source="planted", image_size=32, train_size=300, val_size=150, cache=str(tmp_path))
    ds = load_dataset(spec)
    payload = pickle.dumps(ds)
    assert len(payload) < 2_000 < ds.train.images.numel()  # the name, never the bytes
    script = textwrap.dedent("""
        import hashlib, pickle, sys
        ds = pickle.loads(sys.stdin.buffer.read())
        print(ds.entry, hashlib.sha256(ds.train.images.numpy().tobytes() + ds.val.images.numpy().tobytes()).hexdigest())
    """)
    out = subprocess.run([sys.executable, "-c", script], input=payload, capture_output=True, check=True).stdout.decode().split()
    import hashlib

    assert out == [str(ds.entry), hashlib.sha256(ds.train.images.numpy().tobytes() + ds.val.images.numpy().tobytes()).hexdigest()]


def test_a_pickled_set_whose_entry_is_missing_builds_this_machines_own(tmp_path):
    import shutil

    ds = load_dataset(DataSpec(source="planted", image_size=16, train_size=60, val_size=30, cache=str(tmp_path)))
    kept = ds.train.images.clone(), ds.val.images.clone()
    payload = pickle.dumps(ds)
    shutil.rmtree(ds.entry)  # as on a node without the driver's cache
    again = pickle.loads(payload)
    assert again.decoded and imagecache.is_complete(again.entry)
    assert torch.equal(again.train.images, kept[0]) and torch.equal(again.val.images, kept[1])


def test_a_trial_cannot_change_the_cached_images(tmp_path):
    """The images are mapped read-only: a write stops the process that tries it, and the
    cache keeps its bytes."""
    spec = DataSpec(source="planted", image_size=16, train_size=60, val_size=30, cache=str(tmp_path))
    before = load_dataset(spec).train.images.clone()
    script = textwrap.dedent(f"""
        from tune_search.trainable.data import DataSpec, load_dataset
        load_dataset(DataSpec(source="planted", image_size=16, train_size=60, val_size=30, cache={str(tmp_path)!r})).train.images[0].fill_(7)
    """)
    wrote = subprocess.run([sys.executable, "-X", "faulthandler", "-c", script], capture_output=True, text=True)
    assert wrote.returncode == -signal.SIGSEGV, wrote.stderr[-2000:]
    assert torch.equal(load_dataset(spec).train.images, before)


def test_a_split_larger_than_memory_and_swap_maps_and_costs_no_commit(tmp_path):
    """A cached split bigger than the machine's memory and swap together (a sparse file: no
    disk used) opens and reads, and its map adds nothing to the process's data segment
    (VmData, what the kernel's commit limit and RLIMIT_DATA count). A copy-on-write map
    would add its whole size there, and under the default overcommit not map at all."""
    import psutil

    side = 224
    count = (psutil.virtual_memory().total + psutil.swap_memory().total) // imagecache.image_bytes(side) + 1000
    path = tmp_path / "train.u8"
    with open(path, "wb") as f:
        f.truncate(count * imagecache.image_bytes(side))

    def vm_data() -> int:
        return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmData:"))

    before = vm_data()
    images = imagecache.Part(count, side, path=path).images()
    grew = vm_data() - before
    assert images.shape == (count, 3, side, side)
    assert int(images[-1].sum()) == 0 and int(images[count // 2, 0, 7, 7]) == 0
    assert grew < 64 << 20, grew


def test_the_cache_disk_is_checked_before_anything_is_decoded(image_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(imagecache.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 1000})())
    calls = _count_decodes(monkeypatch)
    needs = "36 images at 64 px, decoded and then the rows kept copied, need 884.7 kB of disk and 1.0 kB is free there"
    with pytest.raises(DataError, match=rf"data.cache {tmp_path}: {needs}; set data.cache"):
        load_dataset(DataSpec(source=str(image_folder), image_size=64, cache=str(tmp_path)))
    assert calls == []


def test_a_build_that_fails_leaves_no_entry_and_the_next_one_builds(image_folder, tmp_path, monkeypatch):
    spec = DataSpec(source=str(image_folder), image_size=16, cache=str(tmp_path / "cache"))
    real = data_module._decode
    monkeypatch.setattr(data_module, "_decode", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        load_dataset(spec)
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.is_dir()] == []
    monkeypatch.setattr(data_module, "_decode", real)
    assert load_dataset(spec).decoded


@pytest.mark.slow  # four processes that each load MNIST
def test_building_holds_one_chunk_not_the_whole_set(tmp_path):
    """The builder's peak memory does not grow with the images' size (5,000 images: 15 MB at 32
    px, 384 MB at 160 px); the same sets decoded into memory grow it by at least the difference."""
    script = textwrap.dedent(f"""
        import sys
        from tune_search.trainable import imagecache
        from tune_search.trainable.data import DataSpec, load_dataset, BUILTIN

        def kb(field):
            return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field))

        imagecache.CHUNK_BYTES = 16 << 20
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # the peak (VmHWM) starts again from the memory in use now
        before = kb("VmRSS:")
        cache = None if sys.argv[1] == "memory" else {str(tmp_path)!r}
        side = int(sys.argv[2])
        ds = load_dataset(DataSpec(source="mnist", image_size=side, cache=cache))
        assert ds.train.images.numel() + ds.val.images.numel() == 5000 * 3 * side * side
        print((kb("VmHWM:") - before) * 1024)
    """)
    run = lambda *args: int(subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, check=True).stdout)  # noqa: E731
    grew = {where: run(where, "160") - run(where, "32") for where in ("disk", "memory")}
    assert grew["memory"] > 5000 * 3 * (160 * 160 - 32 * 32), grew
    assert grew["disk"] < 40e6, grew  # at most a few chunks of 16 MB
