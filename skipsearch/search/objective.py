"""The Optuna objective: trial parameters → schedule → samples → proxy FID, with pruning.

Every trial samples the same seeds (common random numbers), so trials differ only by schedule.
FID is reported at each fidelity step; a trial the pruner stops never pays for the full sample set.
"""

from __future__ import annotations

import socket
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from torch import nn

from ..images import save_grid
from ..schedule import SkipSite
from ..scoring import ProxyFID
from .config import StudyConfig
from .space import schedule_from_params, suggest_params
from .study import KIND_ATTR, NOISE_ATTR

__all__ = ["Objective", "NOISE_SEED_OFFSET", "GRID_IMAGES"]

NOISE_SEED_OFFSET = 1_000_000  # the baseline's second seed set, for the proxy's noise estimate
GRID_IMAGES = 64


class Objective:
    def __init__(
        self,
        config: StudyConfig,
        net: nn.Module,
        sites: Sequence[SkipSite],
        scorer: ProxyFID,
        artifact_store: FileSystemArtifactStore | None,
        device: str,
    ) -> None:
        self.config = config
        self.net = net
        self.sites = list(sites)
        self.scorer = scorer
        self.artifact_store = artifact_store
        self.device = device

    def _fid_steps(self, schedule, seeds, steps, on_images=None):
        c = self.config
        return self.scorer.iter_fid(
            self.net, seeds, solver=c.solver, nfe=c.nfe, schedule=schedule, steps=steps,
            batch_size=c.batch_size, precision=c.precision, time_exponent=c.time_exponent, on_images=on_images,
        )

    def __call__(self, trial: optuna.Trial) -> float:
        c = self.config
        params = suggest_params(trial, c, self.sites)
        schedule = schedule_from_params(params, c, self.sites)
        trial.set_user_attr("rho", list(schedule.rho))
        trial.set_user_attr("sigma_range", list(schedule.sigma_range) if schedule.sigma_range else None)
        trial.set_user_attr("device", f"{socket.gethostname()}:{self.device}")

        grid: list[torch.Tensor] = []

        def keep(images: torch.Tensor) -> None:
            have = sum(len(g) for g in grid)
            if have < GRID_IMAGES:
                grid.append(images[: GRID_IMAGES - have].cpu())

        fids: dict[str, float] = {}
        t0 = time.perf_counter()
        final = c.steps[-1]
        value = float("nan")
        for n, fid in self._fid_steps(schedule, c.seeds, c.steps, keep):
            fids[str(n)] = fid
            value = fid
            trial.report(fid, n)
            if n < final and trial.should_prune():
                self._record(trial, fids, n, t0)
                raise optuna.TrialPruned(f"FID {fid:.3f} at {n} samples")
        self._record(trial, fids, final, t0)
        if trial.user_attrs.get(KIND_ATTR) == "baseline":
            self._estimate_noise(trial, schedule, value)
        self._upload_grid(trial, grid)
        return value

    def _record(self, trial: optuna.Trial, fids: dict[str, float], samples: int, t0: float) -> None:
        seconds = time.perf_counter() - t0
        trial.set_user_attr("fid_steps", fids)
        trial.set_user_attr("samples", samples)
        trial.set_user_attr("seconds", round(seconds, 3))
        trial.set_user_attr("images_per_s", round(samples / seconds, 2) if seconds > 0 else None)

    def _estimate_noise(self, trial: optuna.Trial, schedule, value: float) -> None:
        """Score the baseline again on disjoint seeds: |ΔFID| bounds what seed noise alone can do."""
        c = self.config
        seeds = range(c.seed_start + NOISE_SEED_OFFSET, c.seed_start + NOISE_SEED_OFFSET + c.samples)
        other = list(self._fid_steps(schedule, seeds, [c.samples]))[-1][1]
        noise = abs(other - value)
        trial.set_user_attr("fid_second_seed_set", other)
        trial.study.set_user_attr(NOISE_ATTR, noise)

    def _upload_grid(self, trial: optuna.Trial, grid: list[torch.Tensor]) -> None:
        if self.artifact_store is None or not grid:
            return
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"samples-trial-{trial.number}.png"
            save_grid(torch.cat(grid), path, nrow=8, scale=max(1, 64 // int(self.net.img_resolution)))
            upload_artifact(artifact_store=self.artifact_store, file_path=str(path), study_or_trial=trial,
                            mimetype="image/png")
