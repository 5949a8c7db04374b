"""Hostile files, as an attacker (or a damaged disk) makes them: small on disk, huge if believed."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import torch
from conftest import TINY_NET
from edm_pickle_writer import write_edm_snapshot, write_expanded_snapshot

from skipsearch.models.edm import EDMPrecond


class _Code:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (print, ("this .bin ran code",))


def write_hostile_files(root: Path, tiny_checkpoint: Path) -> Path:
    big = dict(img_resolution=64, img_channels=3, model_type="SongUNet", model_channels=768,
               channel_mult=[1, 2, 2, 2], num_blocks=4, attn_resolutions=[16])  # ~1.9 billion values
    write_expanded_snapshot(EDMPrecond, big, root / "stride0.pkl")
    (root / "bytearray8.pkl").write_bytes(b"\x80\x05\x96" + (3 << 30).to_bytes(8, "little") + b".")
    torch.manual_seed(0)
    write_edm_snapshot(EDMPrecond(**TINY_NET), {**TINY_NET, "num_blocks": 100_000}, root / "blocks.pkl", root / "m")
    shutil.copy(tiny_checkpoint, root / "sd.pt")
    (root / "sd.json").write_text(json.dumps({"img_resolution": 64, "img_channels": 3, "model_type": "SongUNet",
                                              "model_channels": 1024, "channel_mult": [1, 2, 2, 2]}))
    entry = {"model": {"family": "edm", "name": "edm-digits"}, "solver": {"name": "euler", "nfe": 10**9},
             "skips": {"count": 6, "order": "outermost-first"}, "rho": [1.0] * 6, "sigma_range": None, "params": {},
             "score": None, "baseline": None, "study": None}
    doc = {"format": "skipsearch.schedules/v1", "created": "2026-12-01T00:00:00Z", "schedules": [entry]}
    (root / "nfe-huge.json").write_text(json.dumps(doc))
    entry["solver"]["nfe"] = 10**30
    (root / "nfe-bigint.json").write_text(json.dumps(doc))
    entry["solver"]["nfe"], entry["rho"] = 10, [1e30] * 6
    (root / "rho-huge.json").write_text(json.dumps(doc))
    unet = root / "evil-diffusers" / "unet"  # a diffusers folder whose weights are a pickle with code in it
    unet.mkdir(parents=True)
    (unet / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel", "sample_size": 8, "in_channels": 1,
                                                  "out_channels": 1, "block_out_channels": [8, 16],
                                                  "layers_per_block": 1, "norm_num_groups": 4,
                                                  "down_block_types": ["DownBlock2D", "DownBlock2D"],
                                                  "up_block_types": ["UpBlock2D", "UpBlock2D"]}))
    (unet / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps({"w": _Code()}))
    (root / "evil-diffusers" / "scheduler").mkdir()
    (root / "evil-diffusers" / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({"_class_name": "DDPMScheduler", "num_train_timesteps": 100, "beta_schedule": "linear"}))
    return root
