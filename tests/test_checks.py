"""Bad input is refused before Ray starts: exit 2 and one message naming the key, file or
folder, never a traceback. Ray must not start for any of these cases."""

import ipaddress
import json
import pickle
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import torch

import tune_search.cli
import tune_search.pipeline
from tune_search.cli import main
from tune_search.export import CONFIG_COLUMNS

MNIST = ["--data", "mnist", "--image-size", "16"]


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    def started(*args, **kwargs):
        raise AssertionError("Ray started on input that should have been refused")

    monkeypatch.setattr(tune_search.pipeline, "ray_session", started)


def refused(capsys, argv, *fragments):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("tune-search: error: ") and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err
    return err


def space(tmp_path, text, name="space.yaml"):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


def test_space_file_and_flag_values(tmp_path, capsys):
    refused(capsys, ["--seed", "-1"], "run.seed", "greater than or equal to 0")
    refused(capsys, [*MNIST, "--name", ".."], "run.name", "not only dots")
    refused(capsys, ["--num-samples", "2"], "budget.num_samples", "greater than or equal to 3")
    refused(capsys, ["--space", space(tmp_path, "space: {lr: [.nan, 0.01]}\n")], "space.lr", "finite")
    refused(capsys, ["--space", space(tmp_path, "space: {lr: [1.0e-4, .inf]}\n")], "space.lr", "finite")
    refused(capsys, ["--space", space(tmp_path, b"data: {source: \xff\xfe}\n")], "is not UTF-8")
    refused(capsys, ["--space", space(tmp_path, "data: {image_size: 32}\nbudget: {}\ndata: {source: mnist}\n")], "'data' is written twice")
    refused(capsys, ["--space", space(tmp_path, "data: [mnist]\n")], "section 'data' must be a mapping")


def test_an_empty_section_with_a_flag_is_the_defaults_plus_the_flag(tmp_path):
    _, cfg = tune_search.cli.parse(["--space", space(tmp_path, "data:\n  # source: mnist\n"), "--image-size", "48"])
    assert cfg.data.image_size == 48 and cfg.data.source == "fashion-mnist"


@pytest.mark.slow
def test_data_that_cannot_be_split_or_subset(tmp_path, capsys, image_folder):
    refused(capsys, ["--data", "mnist", "--space", space(tmp_path, "data: {train_size: 5}\n")], "data.train_size 5 is below the 10 classes")
    refused(capsys, ["--data", "planted", "--space", space(tmp_path, "data: {val_size: 3000}\n")], "data.val_size 3000 is above the 600 images there are")
    split = tmp_path / "split"
    shutil.copytree(image_folder, split / "train")
    for name in ("ant", "bee", "cat"):
        (split / "val" / name).mkdir(parents=True)
    shutil.copy(image_folder / "ant" / "0.png", split / "val" / "ant" / "0.png")
    refused(capsys, ["--data", str(split)], "split/val", "to validate on", "bee (0)", "cat (0)")


def test_weights_that_are_not_a_state_dict_of_the_model(tmp_path, capsys):
    torch.save([torch.zeros(3)], tmp_path / "list.pt")
    refused(capsys, [*MNIST, "--model", "resnet18", "--weights", str(tmp_path / "list.pt")], "list.pt is not a state_dict")
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pt")
    refused(capsys, [*MNIST, "--model", "resnet18", "--weights", str(tmp_path / "other.pt")], "other.pt does not fit resnet18")
    (tmp_path / "code.pt").write_bytes(pickle.dumps(print))  # a pickle that would call a function
    refused(
        capsys,
        [*MNIST, "--model", "resnet18", "--weights", str(tmp_path / "code.pt")],
        "code.pt as plain tensors (torch.load with weights_only=True): it holds Python objects",
    )


@pytest.mark.slow
def test_resources_and_storage_this_machine_cannot_give(tmp_path, capsys):
    refused(capsys, [*MNIST, "--gpus-per-trial", "1000"], "resources.gpus_per_trial 1000: this machine has")
    refused(capsys, [*MNIST, "--cpus-per-trial", "100000"], "resources.cpus_per_trial 100000: this machine has")
    (tmp_path / "file").write_text("")
    refused(capsys, [*MNIST, "--storage", str(tmp_path / "file" / "sub")], "cannot be written")


def test_config_from_a_table_without_the_config(tmp_path, capsys):
    pd.DataFrame({"lr": [1e-3], "top1": [0.5]}).to_parquet(tmp_path / "t.parquet")
    refused(capsys, [*MNIST, "--config-from", str(tmp_path / "t.parquet")], "lacks the config columns freeze_depth")
    row = {c: [False] if c.startswith("aug_") and not c.endswith("_strength") else [0.0] for c in CONFIG_COLUMNS}
    pd.DataFrame({**row, "lr": [float("nan")], "batch_size": [64]}).to_parquet(tmp_path / "nan.parquet")
    refused(capsys, [*MNIST, "--config-from", str(tmp_path / "nan.parquet")], "lr nan")
    (tmp_path / "junk.parquet").write_text("not parquet")
    refused(capsys, [*MNIST, "--config-from", str(tmp_path / "junk.parquet")], "cannot read --config-from")


def test_resume_needs_state_and_the_same_settings(tmp_path, capsys):
    args = [*MNIST, "--storage", str(tmp_path), "--name", "r"]
    refused(capsys, [*args, "--resume"], "nothing to resume")
    folder = tmp_path / "r"
    folder.mkdir()
    (folder / "experiment_state-2026-01-01_00-00-00.json").write_text("{}")
    (folder / "tuner.pkl").write_bytes(b"")
    refused(capsys, [*args, "--resume"], "has no config.yaml")
    (folder / "config.yaml").write_text("data: {source: mnist, image_size: 16}\nbudget: {max_epochs: 5}\n")
    refused(capsys, [*args, "--resume"], "other settings: budget.max_epochs (5 -> 3)")


def test_resume_takes_the_same_storage_given_relative_or_absolute(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "r"
    folder.mkdir()
    (folder / "experiment_state-2026-01-01_00-00-00.json").write_text("{}")
    (folder / "tuner.pkl").write_bytes(b"")
    (folder / "config.yaml").write_text("data: {source: mnist, image_size: 16}\nbudget: {max_epochs: 5}\nrun: {storage: ., name: r}\n")
    refused(capsys, [*MNIST, "--storage", str(tmp_path), "--name", "r", "--resume"], "other settings: budget.max_epochs (5 -> 3);")


def test_results_folders_with_missing_or_damaged_tables(tmp_path, capsys):
    folder = tmp_path / "r"
    folder.mkdir()
    (folder / "config.yaml").write_text("data: {source: mnist}\n")
    refused(capsys, ["report", str(folder)], "trials.parquet is missing")
    pd.DataFrame({"trial_id": ["a"]}).to_parquet(folder / "trials.parquet")
    refused(capsys, ["report", str(folder)], "trials.parquet lacks the columns status")
    (folder / "trials.parquet").write_bytes(b"PAR1 damaged")
    refused(capsys, ["report", str(folder)], "trials.parquet is not a readable Parquet file")
    refused(capsys, ["screen", str(folder)], "trials.parquet is not a readable Parquet file")
    refused(capsys, ["export", str(folder)], "no trial folders")


def test_any_other_failure_is_one_line_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr(tune_search.cli, "load_config", broken)
    assert main(["--seed", "1"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "tune-search: error: RuntimeError: disk on fire (run again with --debug for the traceback)"
    assert main(["--seed", "1", "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err


LOOPBACK = """
import json, os, psutil, ray
from tune_search.pipeline import ray_session
with ray_session(None):
    ray.get(ray.remote(lambda: 1).remote())  # a worker process is up and listening too
    ours = {p.pid for p in psutil.Process().children(recursive=True)} | {os.getpid()}
    print(json.dumps(sorted({c.laddr.ip for c in psutil.net_connections("inet") if c.status == psutil.CONN_LISTEN and c.pid in ours})))
"""


@pytest.mark.slow
def test_a_local_ray_listens_on_loopback_only(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)
    out = subprocess.run([sys.executable, "-c", LOOPBACK], capture_output=True, text=True, timeout=180, check=True).stdout
    addresses = json.loads(out.strip().splitlines()[-1])
    assert len(addresses) >= 1
    assert all(ipaddress.ip_address(ip.removeprefix("::ffff:")).is_loopback for ip in addresses), addresses


def test_flags_that_cannot_go_together_are_refused(capsys):
    refused(capsys, ["--config-from", "best.parquet", "--resume"], "--resume does not go with --config-from")
    refused(capsys, ["--config-from", "best.parquet", "--ablate"], "--ablate does not go with --config-from")
    refused(capsys, ["--row", "1"], "--row picks a row of --config-from")


def test_help_lists_every_command_and_a_bare_flag_list_searches(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and all(f"    {c} " in out for c in ("search", "screen", "ablate", "report", "export"))
    refused(capsys, ["--seed", "-1"], "run.seed")  # no command word: the search's flags
    refused(capsys, ["search", "--seed", "-1"], "run.seed")
