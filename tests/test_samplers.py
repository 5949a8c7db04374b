"""The search's sampler guards, on real Optuna studies: no repeats, pruned trials seen by the model."""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from skipsearch.search._samplers import DistinctSampler, _PrunedAsComplete, trial_seed

SPACE = {"x": FloatDistribution(0.0, 1.0), "y": FloatDistribution(0.0, 1.0)}


class Stubborn(optuna.samplers.BaseSampler):
    """Always proposes the same point: what a converged model does when asked again."""

    def infer_relative_search_space(self, study: Any, trial: Any) -> dict:
        return dict(SPACE)

    def sample_relative(self, study: Any, trial: Any, space: dict) -> dict:
        return {"x": 0.5, "y": 0.5}

    def sample_independent(self, study: Any, trial: Any, name: str, dist: Any) -> Any:
        return 0.5


def test_a_proposal_near_a_running_or_finished_trial_is_redrawn() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    study.add_trial(create_trial(params={"x": 0.5, "y": 0.505}, distributions=SPACE, value=1.0))
    running = study.ask()  # a trial another worker is running, at the same point
    running.suggest_float("x", 0, 1)
    study.sampler = DistinctSampler(Stubborn(), lambda p: [p["x"], p["y"]], seed=1)
    trial = study.ask()
    params = {k: trial.suggest_float(k, 0, 1) for k in SPACE}
    assert max(abs(params["x"] - 0.5), abs(params["y"] - 0.505)) >= 0.02
    assert study.sampler.redraws >= 1
    study.sampler = Stubborn()  # without the guard: the same experiment again
    again = study.ask()
    assert {k: again.suggest_float(k, 0, 1) for k in SPACE} == {"x": 0.5, "y": 0.5}


def test_trial_seeds_differ_per_trial_and_repeat_per_study_seed() -> None:
    seeds = {trial_seed(0, n) for n in range(1000)}
    assert len(seeds) == 1000
    assert trial_seed(3, 7) == trial_seed(3, 7) != trial_seed(4, 7)


def test_pruned_trials_reach_the_model_scaled_to_full_fidelity() -> None:
    study = optuna.create_study()
    for value, at_250 in ((20.0, 40.0), (30.0, 60.0), (25.0, 50.0)):  # full / 250-sample ratio: 0.5
        study.add_trial(create_trial(params={"x": value / 100, "y": 0.1}, distributions=SPACE, value=value,
                                     intermediate_values={250: at_250, 1000: value}))
    study.add_trial(create_trial(params={"x": 0.9, "y": 0.9}, distributions=SPACE, state=TrialState.PRUNED,
                                 intermediate_values={250: 120.0}))
    view = _PrunedAsComplete(study)
    seen = view._get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
    assert [t.state for t in seen] == [TrialState.COMPLETE] * 4
    assert math.isclose(seen[-1].value, math.log(60.0))  # 120 at 250 samples, ≈ 60 at full fidelity
    assert math.isclose(seen[0].value, math.log(20.0))  # complete ones are shown in log FID too
    assert [t.state for t in study.get_trials()][-1] == TrialState.PRUNED  # the study itself is untouched
    gp = optuna.samplers.GPSampler(seed=0, n_startup_trials=2, deterministic_objective=True)
    study.sampler = DistinctSampler(gp, lambda p: [p["x"], p["y"]], seed=0, pruned_as_complete=True)
    trial = study.ask()
    params = {k: trial.suggest_float(k, 0, 1) for k in SPACE}
    assert params and all(0 <= v <= 1 for v in params.values())
