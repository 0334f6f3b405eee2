import math
import pickle
from types import SimpleNamespace

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from tune_search.board import TensorBoard, hparams, run_name
from tune_search.runs import STUDY_RUN
from tune_search.trainable.augment import NAMES, strength_key, switch_key


def trial(trial_id, config):
    return SimpleNamespace(trial_id=trial_id, config=config)


def test_runs_are_named_as_the_console_names_them():
    assert run_name("ab12", {"baseline": "all + aug", "lr": 0.001}) == "all-aug-ab12"
    assert run_name("ab12", {STUDY_RUN: {"study": "screen", "design_row": 3, "seed": 1}}) == "screen-row-03-seed-1-ab12"
    assert run_name("ab12", {STUDY_RUN: {"study": "confirm", "label": "recipe", "seed": 2}}) == "confirm-recipe-seed-2-ab12"
    assert run_name("ab12", {"lr": 0.001}) == "trial-ab12"
    dose = {"study": "dose", "label": "rotate", "seed": 0, "aug_rotate": True, "aug_rotate_strength": 0.25}
    assert run_name("ab12", {STUDY_RUN: dose}) == "dose-rotate-0.25-seed-0-ab12"  # a dose run names its strength
    assert run_name("ab12", {STUDY_RUN: {**dose, "aug_rotate": False}}) == "dose-rotate-off-seed-0-ab12"


def test_hparams_hold_every_switch_and_strength():
    got = hparams({"lr": 0.01, "freeze_depth": 3, "aug_hflip": True, "aug_hflip_strength": 0.4, "aug_blur": False, "baseline": ""})
    assert got["lr"] == 0.01 and got["freeze_depth"] == 3 and got["baseline"] == "none" and got["study"] == "search"
    assert all(switch_key(n) in got and strength_key(n) in got for n in NAMES)
    assert got["aug_hflip"] is True and got["aug_hflip_strength"] == 0.4 and got["aug_blur"] is False and got["aug_blur_strength"] == 0.0


def test_a_phase_writes_each_run_with_its_metrics_and_hparams(tmp_path):
    board = pickle.loads(pickle.dumps(TensorBoard(tmp_path / "tensorboard", "screen replicate 2")))  # Ray keeps it for restore
    runs = [trial("r0", {STUDY_RUN: {"study": "screen", "design_row": 0, "seed": 1, "lr": 0.002, "aug_crop": True, "aug_crop_strength": 0.5}}),
            trial("r1", {STUDY_RUN: {"study": "screen", "design_row": 1, "seed": 1, "lr": 0.002}})]  # fmt: skip
    for t, top1 in zip(runs, (0.6, 0.7)):
        for epoch in (1, 2):
            board.on_trial_result(0, runs, t, {"epoch": epoch, "top1": top1 + epoch / 100, "top5": 0.9, "val_loss": 1.0 / epoch, "train_loss": math.nan})
        board.on_trial_complete(0, runs, t)
    board.on_experiment_end(runs)
    folders = sorted(p.name for p in (tmp_path / "tensorboard" / "screen-replicate-2").iterdir())
    assert folders == ["screen-row-00-seed-1-r0", "screen-row-01-seed-1-r1"]
    events = EventAccumulator(str(tmp_path / "tensorboard" / "screen-replicate-2" / folders[0])).Reload()
    tags = events.Tags()["scalars"]
    assert tags[:3] == ["accuracy/top-1", "accuracy/top-5", "loss/validation"] and "loss/train" not in tags  # NaN is not drawn
    assert [(e.step, round(e.value, 4)) for e in events.Scalars("accuracy/top-1")] == [(1, 0.61), (2, 0.62)]
    assert len(tags) == 3  # no tag but the metrics: the HParams metric is the last accuracy/top-1
    session = plugin_data_pb2.HParamsPluginData.FromString(events.PluginTagToContent("hparams")["_hparams_/session_start_info"])
    params = session.session_start_info.hparams
    experiment = plugin_data_pb2.HParamsPluginData.FromString(events.PluginTagToContent("hparams")["_hparams_/experiment"])
    assert [m.name.tag for m in experiment.experiment.metric_infos] == ["accuracy/top-1"]
    assert params["aug_crop"].bool_value and params["aug_crop_strength"].number_value == 0.5
    assert not params["aug_hflip"].bool_value and params["lr"].number_value == 0.002 and params["study"].string_value == "screen"


def test_a_run_stopped_early_or_failed_does_not_end_as_a_success(tmp_path):
    board = TensorBoard(tmp_path / "tb", "search", max_epochs=3)
    runs = [trial(t, {"lr": 0.001, "baseline": ""}) for t in ("full", "stopped", "failed")]
    for t, epochs in zip(runs, (3, 1, 1)):
        for epoch in range(1, epochs + 1):
            board.on_trial_result(0, runs, t, {"epoch": epoch, "top1": 0.5})
    board.on_trial_complete(0, runs, runs[0])
    board.on_trial_complete(0, runs, runs[1])  # ASHA stopped it after one epoch of three
    board.on_trial_error(0, runs, runs[2])
    statuses = {}
    for t in runs:
        events = EventAccumulator(str(tmp_path / "tb" / "search" / f"trial-{t.trial_id}")).Reload()
        content = events.PluginTagToContent("hparams")["_hparams_/session_end_info"]
        statuses[t.trial_id] = plugin_data_pb2.HParamsPluginData.FromString(content).session_end_info.status
    from tensorboard.plugins.hparams import api_pb2

    # TensorBoard's HParams has no "stopped" status: UNKNOWN, and the `ended` column says why
    assert statuses == {"full": api_pb2.STATUS_SUCCESS, "stopped": api_pb2.STATUS_UNKNOWN, "failed": api_pb2.STATUS_FAILURE}
