"""Every attribute skipsearch keeps on a study or a trial in the storage, named once.

These strings are the storage format: studies written by earlier versions use them, the dashboard
shows them, and tools that read a study with Optuna alone find them under these names. Change a
value and old studies become unreadable; add a name here, never a literal elsewhere.
"""

from __future__ import annotations

__all__ = [
    "CONFIG_ATTR", "FINGERPRINT_ATTR", "VERSION_ATTR", "SITES_ATTR", "SITE_INFO_ATTR", "SIGMAS_ATTR", "BUDGET_ATTR",
    "NOISE_ATTR", "CONFIRMS_ATTR", "PASSED_OVER_ATTR",
    "KIND_ATTR", "COUNTED_ATTR", "REASON_ATTR", "RETRIES_ATTR", "RETRY_OF_ATTR", "WARM_FROM_ATTR", "SOURCE_ATTR",
    "SEARCH_VALUE_ATTR", "PROGRESS_ATTR", "RHO_ATTR", "SIGMA_RANGE_ATTR", "TRIAL_SIGMAS_ATTR", "WORKER_ATTR", "DEVICE_ATTR",
    "PRECISION_ATTR", "FID_STEPS_ATTR", "SAMPLES_ATTR", "SECONDS_ATTR", "IMAGES_PER_S_ATTR", "REPORTED_ATTR",
    "BOOTSTRAP_ATTR", "FID_INFINITY_ATTR", "FIXED_PARAMS", "SEAL_ATTR", "KINDS",
]

# -- on a search study ------------------------------------------------------------------------
CONFIG_ATTR = "skipsearch_config"  # the StudyConfig as JSON: the truth a joining worker adopts
FINGERPRINT_ATTR = "skipsearch_fingerprint"  # sha256 of what changes a score
VERSION_ATTR = "skipsearch_version"  # the skipsearch release that created the study
SITES_ATTR = "skipsearch_num_skips"  # skip sites of the network
SITE_INFO_ATTR = "skipsearch_sites"  # per site: index, resolution, channels, block and encoder paths
SIGMAS_ATTR = "skipsearch_sigmas"  # the σ steps of the study's solver and NFE on its network
BUDGET_ATTR = "skipsearch_budget"  # trials to finish (raised by a later launch with more --trials)
NOISE_ATTR = "skipsearch_baseline_noise"  # half-width of the baseline FID's 95% bootstrap interval

# -- on a confirmation study (NAME/confirm) ------------------------------------------------------
CONFIRMS_ATTR = "skipsearch_confirms"  # the search study it confirms
PASSED_OVER_ATTR = "skipsearch_passed_over"  # of the top k, how many were worse than the baseline beyond its noise

# -- on a trial ------------------------------------------------------------------------------
KIND_ATTR = "skipsearch_trial_kind"  # one of KINDS; a retry keeps its kind
COUNTED_ATTR = "skipsearch_counted"  # a FAIL that used up its slot (its schedule failed, not its worker)
REASON_ATTR = "fail_reason"
RETRIES_ATTR = "retries"  # how often this slot's trial was lost with its worker
RETRY_OF_ATTR = "retry_of"  # the failed trial this one re-runs
WARM_FROM_ATTR = "warm_from"  # a warm start: the neighbouring study whose confirmed best it is
SOURCE_ATTR = "source_trial"  # a confirmation job: the search trial whose schedule it re-scores
SEARCH_VALUE_ATTR = "search_value"  # a confirmation job: that trial's search score
PROGRESS_ATTR = "progress"  # samples done so far (live progress)
RHO_ATTR = "rho"  # the per-site coefficients the parameters gave
SIGMA_RANGE_ATTR = "sigma_range"
TRIAL_SIGMAS_ATTR = "sigmas"  # the σ steps the trial sampled on (its own, in a steps space)
WORKER_ATTR = "worker"  # host:pid:device of the process that ran it
DEVICE_ATTR = "device"
PRECISION_ATTR = "precision"
FID_STEPS_ATTR = "fid_steps"  # proxy FID at each fidelity step
SAMPLES_ATTR = "samples"
SECONDS_ATTR = "seconds"
IMAGES_PER_S_ATTR = "images_per_s"
REPORTED_ATTR = "reported"  # distances reported next to the objective (e.g. FD_DINOv2)
BOOTSTRAP_ATTR = "bootstrap"  # a confirmation job: FID per bootstrap resample
FID_INFINITY_ATTR = "fid_infinity"

# System attributes (Optuna's own API writes them; optuna-dashboard cannot): the parameters of an
# enqueued trial, and the seal a worker puts on a trial it finished.
FIXED_PARAMS = "fixed_params"
SEAL_ATTR = "skipsearch_seal"  # {"worker": host:pid:device, "digest": sha256 of the schedule it scored}

KINDS = ("baseline", "warm", "paper", "probe", "search")
