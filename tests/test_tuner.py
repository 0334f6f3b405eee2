"""The searcher's bookkeeping, driven the way Tune drives it, without training."""

import optuna
import pytest
from optuna.trial import TrialState
from ray import tune
from ray.tune import Experiment
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from tune_search.config import SearchConfig
from tune_search.constants import BASELINES
from tune_search.sections import ResourcesConfig
from tune_search.space import Space
from tune_search.tuner import AgreeWithTrials, PruneAwareOptunaSearch, ResumableSearch, make_searcher, trial_resources

optuna.logging.set_verbosity(optuna.logging.WARNING)


def searcher(max_t=4) -> PruneAwareOptunaSearch:
    space = Space.resolve(SearchConfig().space, max_depth=9)
    return PruneAwareOptunaSearch(space, max_t=max_t, seed=0, baselines=[])


def report(s, trial_id, values):
    """As Ray Tune drives a searcher: every result but the last to on_trial_result, the last
    only to on_trial_complete (the result returned here)."""
    for step, v in enumerate(values[:-1], start=1):
        s.on_trial_result(trial_id, {"top1": v, "training_iteration": step})
    return {"top1": values[-1], "training_iteration": len(values)} if values else None


def test_early_stopped_trial_reaches_optuna_as_pruned_with_its_curve():
    s = searcher()
    s.suggest("a")
    s.on_trial_complete("a", report(s, "a", [0.30, 0.35]))
    t = s.study.trials[0]
    assert t.state == TrialState.PRUNED
    assert t.intermediate_values == {1: 0.30, 2: 0.35} and t.value == 0.35  # the last epoch reached Optuna


def test_a_trial_stopped_after_one_epoch_is_told_that_epoch():
    s = searcher()
    s.suggest("a")
    s.on_trial_complete("a", report(s, "a", [0.42]))
    t = s.study.trials[0]
    assert t.state == TrialState.PRUNED and t.intermediate_values == {1: 0.42} and t.value == 0.42


def test_full_budget_trial_is_complete_and_errored_one_failed():
    s = searcher()
    s.suggest("full")
    s.suggest("broken")
    s.on_trial_complete("full", report(s, "full", [0.5, 0.6, 0.7, 0.8]))
    s.on_trial_complete("broken", report(s, "broken", [0.4]), error=True)
    full, broken = s.study.trials
    assert full.state == TrialState.COMPLETE and full.value == 0.8 and full.intermediate_values == {1: 0.5, 2: 0.6, 3: 0.7, 4: 0.8}
    assert broken.state == TrialState.FAIL


def test_plain_ray_optuna_search_would_have_called_it_complete():
    """Why the subclass exists: Ray's own searcher turns a stopped trial into a result."""
    plain = OptunaSearch(Space.resolve(SearchConfig().space, 9), metric="top1", mode="max", seed=0)
    plain.suggest("a")
    plain.on_trial_complete("a", report(plain, "a", [0.30, 0.35]))
    assert plain._ot_study.trials[0].state == TrialState.COMPLETE


def test_baselines_come_first_and_are_tagged():
    cfg = SearchConfig()
    s = make_searcher(cfg, Space.resolve(cfg.space, 9))
    configs = [s.suggest(str(i)) for i in range(4)]
    assert [c["baseline"] for c in configs] == [*BASELINES, ""]
    assert configs[0]["freeze_depth"] == 9 and configs[1]["freeze_depth"] == 0


def test_auto_resources_one_core_per_trial_without_gpus():
    assert trial_resources(ResourcesConfig(), {"CPU": 16}) == (1.0, 0.0)


def test_auto_resources_share_each_gpu_and_split_its_cores():
    assert trial_resources(ResourcesConfig(), {"CPU": 16, "GPU": 1}) == (4.0, 0.25)
    assert trial_resources(ResourcesConfig(), {"CPU": 4, "GPU": 2}) == (1.0, 0.25)  # 8 trials, 4 cores
    assert trial_resources(ResourcesConfig(), {"CPU": 64, "GPU": 1}) == (4.0, 0.25)  # capped


def test_explicit_resources_are_kept():
    chosen = ResourcesConfig(cpus_per_trial=2, gpus_per_trial=0.5)
    assert trial_resources(chosen, {"CPU": 16, "GPU": 1}) == (2.0, 0.5)
    assert trial_resources(ResourcesConfig(gpus_per_trial=0), {"CPU": 16, "GPU": 1}) == (1.0, 0.0)


def generator(max_concurrent: int, tmp_path, samples=4) -> ResumableSearch:
    """A search as run_search builds it, with an experiment added as Tune adds it."""
    cfg = SearchConfig()
    base = make_searcher(cfg, Space.resolve(cfg.space, 9))
    search = ResumableSearch(ConcurrencyLimiter(base, max_concurrent=max_concurrent) if max_concurrent else base)
    search.add_configurations(Experiment("t", run=lambda config: None, num_samples=samples, storage_path=str(tmp_path)))
    return search


def finished(trial):
    """The trial as a restored experiment lists it once it ended."""
    trial.set_status(trial.TERMINATED)
    return trial


def run_out(search, base, values=(0.5, 0.6)) -> list:
    """The resumed search, one trial at a time, each ended as Tune ends it."""
    rest = []
    while (trial := search.next_trial()) is not None:
        rest.append(trial)
        search.on_trial_complete(trial.trial_id, report(base, trial.trial_id, list(values)))
    return rest


def test_a_restored_search_forgets_a_trial_the_experiment_never_listed_and_tries_its_point_again(tmp_path):
    """The searcher's state was saved after it suggested `orphan`, the trial list before: with
    one trial at a time the limiter would hold the orphan's slot for ever, and Tune would wait."""
    search = generator(1, tmp_path)
    base = search.searcher.searcher
    listed = search.next_trial()
    search.on_trial_complete(listed.trial_id, report(base, listed.trial_id, [0.5, 0.6, 0.7, 0.8]))
    orphan = search.next_trial()
    assert search.next_trial() is None  # the orphan holds the only slot

    assert search.agree_with([finished(listed)]) == ([], [orphan.trial_id])
    assert search.agree_with([listed]) == ([], [])  # forgotten once
    rest = run_out(search, base)
    assert len(rest) == 3 and search.is_finished()  # the orphan's sample was given back
    assert orphan.config in [t.config for t in rest]  # its point (a baseline here, by its name) runs after all
    states = [t.state for t in base.study.trials]
    assert states.count(TrialState.FAIL) == 1 and TrialState.RUNNING not in states


def test_a_search_without_a_limit_gives_the_orphans_sample_back_too(tmp_path):
    search = generator(0, tmp_path, samples=2)
    first, orphan = search.next_trial(), search.next_trial()
    assert search.is_finished()
    assert search.agree_with([first]) == ([], [orphan.trial_id])
    assert not search.is_finished() and search.next_trial() is not None
    assert search.is_finished()


def journaled(tmp_path, samples=4) -> tuple[ResumableSearch, PruneAwareOptunaSearch]:
    cfg = SearchConfig()
    base = make_searcher(cfg, Space.resolve(cfg.space, 9), journal=tmp_path / "optuna.journal")
    search = ResumableSearch(ConcurrencyLimiter(base, max_concurrent=1))
    search.add_configurations(Experiment("t", run=lambda config: None, num_samples=samples, storage_path=str(tmp_path)))
    return search, base


def test_a_restored_search_takes_back_a_trial_the_experiment_listed_after_its_state_was_saved(tmp_path):
    """The trial list was saved after the searcher suggested `ahead`, the searcher's state
    before: the journal names `ahead`, and the search runs exactly its samples."""
    search, base = journaled(tmp_path)
    first = search.next_trial()
    search.on_trial_complete(first.trial_id, report(base, first.trial_id, [0.5, 0.6, 0.7, 0.8]))
    base.save(str(tmp_path / "searcher.pkl"))  # the state saved before the next suggestion
    states = search.get_state(), search.searcher.get_state()
    ahead = search.next_trial()  # the experiment saved after it: the killed driver's last act

    base.restore(str(tmp_path / "searcher.pkl"))  # restored as Tune restores it
    search.set_state(states[0])
    search.searcher.set_state(states[1])
    assert search.agree_with([finished(first), ahead]) == ([ahead.trial_id], [])
    assert search.next_trial() is None  # `ahead` holds the only slot again
    search.on_trial_complete(ahead.trial_id, report(base, ahead.trial_id, [0.5, 0.6]))
    rest = run_out(search, base, [0.5])
    assert len(rest) == 2 and search.is_finished()  # 4 in all, not 5
    assert [t.state for t in base.study.trials].count(TrialState.RUNNING) == 0 and len(base.study.trials) == 4


@pytest.mark.parametrize("newer", ["optuna", "generator"])
def test_a_search_whose_saved_states_come_from_different_moments_runs_exactly_its_samples(tmp_path, newer):
    """Ray saves the generator (its sample count, the limiter's live trials) and the Optuna
    searcher in separate files, uploaded one after the other: a kill between them restores one
    from after `orphan` was suggested and the other from before, while the trial list never
    listed it. A search restored so ran 5 trials of 4 (or 3: the count says 4, 3 are listed)."""
    search, base = journaled(tmp_path)
    done = []
    for _ in range(3):
        trial = search.next_trial()
        search.on_trial_complete(trial.trial_id, report(base, trial.trial_id, [0.5, 0.6, 0.7, 0.8]))
        done.append(finished(trial))
    before = search.get_state(), search.searcher.get_state()
    base.save(str(tmp_path / "before.pkl"))
    orphan = search.next_trial()
    after = search.get_state(), search.searcher.get_state()
    base.save(str(tmp_path / "after.pkl"))

    generator_state, optuna_state = (before, "after.pkl") if newer == "optuna" else (after, "before.pkl")
    base.restore(str(tmp_path / optuna_state))
    search.set_state(generator_state[0])
    search.searcher.set_state(generator_state[1])
    assert search.agree_with(done) == ([], [orphan.trial_id])  # the journal names it either way
    rest = run_out(search, base)
    assert len(rest) == 1 and search.is_finished()  # 4 in all
    assert rest[0].config == orphan.config  # the orphan's point, tried after all
    states = [t.state for t in base.study.trials]
    assert TrialState.RUNNING not in states and states.count(TrialState.FAIL) == 1 and len(states) == 5


def test_a_trial_that_ended_before_the_kill_but_was_never_told_reaches_optuna(tmp_path):
    """The experiment lists a trial as ended while the journal holds it RUNNING (the searcher
    was told after the last save): Optuna hears its last result, so TPE learns from it."""
    search, base = journaled(tmp_path, samples=2)
    first = search.next_trial()
    report(base, first.trial_id, [0.5, 0.6, 0.7])
    first.update_last_result({"top1": 0.8, "training_iteration": 4})
    assert search.agree_with([finished(first)]) == ([], [])
    assert base.study.trials[0].state == TrialState.COMPLETE and base.study.trials[0].value == 0.8
    assert len(run_out(search, base)) == 1 and search.is_finished()


def _report_once(config):
    tune.report({"top1": 0.5, "training_iteration": 1})


@pytest.mark.slow
def test_the_repair_reaches_the_search_tune_restores(tmp_path):
    """The callback repairs the very object Tune restores and asks (tuner.pkl pickles both at once)."""
    import ray

    cfg = SearchConfig()
    search = ResumableSearch(ConcurrencyLimiter(make_searcher(cfg, Space.resolve(cfg.space, 9)), max_concurrent=1))
    try:
        tune.Tuner(
            _report_once,
            tune_config=tune.TuneConfig(search_alg=search, num_samples=2, metric="top1", mode="max"),
            run_config=tune.RunConfig(name="x", storage_path=str(tmp_path), callbacks=[AgreeWithTrials(search)], verbose=0),
        ).fit()
        restored = tune.Tuner.restore(str(tmp_path / "x"), trainable=_report_once)._local_tuner
        callback = next(c for c in restored._run_config.callbacks if isinstance(c, AgreeWithTrials))
        assert callback._search is restored._tune_config.search_alg
    finally:
        ray.shutdown()


def test_each_trial_asks_ray_for_its_measured_memory(monkeypatch):
    import dataclasses

    import ray

    from tune_search.trainable.models import ModelSpec
    from tune_search.trainable.trial import TrialSpec
    from tune_search.tuner import _trainable

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    spec = TrialSpec(model=ModelSpec(), max_epochs=1)
    cfg = SearchConfig()
    asked = _trainable(cfg, None, dataclasses.replace(spec, memory_bytes=1_500_000_000))._resources  # what tune.with_resources attached
    assert asked.bundles == [{"CPU": 1.0, "memory": 1_500_000_000}]
    assert _trainable(cfg, None, spec)._resources.bundles == [{"CPU": 1.0}]  # nothing measured: no request
