"""Proxy FID: torch-fidelity registration, streaming moments, fidelity steps, references, classifier."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch_fidelity
from PIL import Image
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.metric_fid import fid_features_to_statistics
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

import skipsearch.metrics as sm
from skipsearch.demo.classifier import accuracy
from skipsearch.demo.data import digits_dataset, split_indices
from skipsearch.demo.reference import compute_builtin_reference, write_builtin_reference
from skipsearch.metrics import (
    FeatureExtractorDigits,
    FeatureMoments,
    MetricError,
    ReferenceStats,
    StreamingFID,
    builtin_reference,
    compute_reference,
    extract,
    fid_from_statistics,
    load_classifier,
    load_reference,
    make_extractor,
    save_reference,
    weights_sha256,
)
from skipsearch.metrics import reference as reference_module


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The nets here are tiny: one thread is faster than two fighting over a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    return digits_dataset()


@pytest.fixture(scope="module")
def extractor() -> FeatureExtractorDigits:
    return make_extractor("skipsearch-digits")


def _noised(images: torch.Tensor, std: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (images.to(torch.float32) + std * torch.randn(images.shape, generator=g)).clamp(0, 255).to(torch.uint8)


def _max_rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max() / np.abs(b).max())


class _Images(torch.utils.data.Dataset):
    """uint8 [C,H,W] per item, the input torch-fidelity's dataset path expects."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


# ---------------------------------------------------------------------------------------------


def test_registered_extractor_in_torch_fidelity_matches_streaming_fid(digits, extractor) -> None:
    images, _ = digits
    real, fake = images[:600], _noised(images[600:1100], std=40, seed=1)
    assert FEATURE_EXTRACTORS_REGISTRY["skipsearch-digits"] is FeatureExtractorDigits
    sm.FEATURE_EXTRACTORS.register("skipsearch-digits", FeatureExtractorDigits)  # again: a no-op, not an error

    metrics = torch_fidelity.calculate_metrics(
        input1=_Images(fake),
        input2=_Images(real.expand(-1, 3, -1, -1).contiguous()),  # RGB input: channels are averaged
        fid=True,
        feature_extractor="skipsearch-digits",
        cuda=False,
        batch_size=128,
        save_cpu_ram=True,
        verbose=False,
        cache=False,
    )
    theirs = metrics["frechet_inception_distance"]

    ref = compute_reference(real, features="skipsearch-digits", batch_size=100)
    stream = StreamingFID(extractor, ref, steps=[len(fake)])
    for start in range(0, len(fake), 170):
        stream.add(fake[start : start + 170])
    [(n, ours)] = stream.results
    assert n == len(fake)
    assert theirs > 10  # noised digits are clearly apart from real ones
    assert abs(ours - theirs) / theirs < 1e-5


def test_feature_moments_match_torch_fidelity_with_uneven_batches_and_merge() -> None:
    g = torch.Generator().manual_seed(0)
    feats = (torch.randn(1000, 48, generator=g) @ torch.randn(48, 48, generator=g) + 50.0).to(torch.float32)
    expected = fid_features_to_statistics(feats)

    bounds = [0, 1, 8, 308, 400, 411, 1000]
    a, b = FeatureMoments(), FeatureMoments()
    for lo, hi in zip(bounds, bounds[1:]):
        (a if hi <= 400 else b).update(feats[lo:hi])
    whole = FeatureMoments()
    for lo, hi in zip(bounds, bounds[1:]):
        whole.update(feats[lo:hi].numpy())
    merged = FeatureMoments().merge(a).merge(b)
    for moments in (whole, merged):
        stats = moments.statistics()
        assert moments.count == 1000
        assert stats["mu"].dtype == np.float64 and stats["sigma"].dtype == np.float64
        assert _max_rel(stats["mu"], expected["mu"]) < 1e-5
        assert _max_rel(stats["sigma"], expected["sigma"]) < 1e-5
    # Same data, float64 reference: the shifted sums are far tighter than the bound above.
    exact = np.cov(feats.numpy().astype(np.float64), rowvar=False)
    assert _max_rel(merged.statistics()["sigma"], exact) < 1e-10
    with pytest.raises(MetricError, match="dimension 3"):
        whole.update(np.zeros((2, 3)))
    with pytest.raises(MetricError, match="at least 2 samples"):
        FeatureMoments().statistics()


def test_streaming_fid_steps_use_exactly_the_first_n_samples(digits, extractor) -> None:
    images, _ = digits
    ref = builtin_reference()
    pool = _noised(images[:520], std=25, seed=3)
    steps = [50, 120, 301, 500]
    stream = StreamingFID(extractor, ref, steps=steps)
    reported = []
    for lo, hi in zip([0, 37, 237, 301, 365], [37, 237, 301, 365, 520]):
        reported += stream.add(pool[lo:hi])
    assert stream.results == reported
    assert [n for n, _ in stream.results] == steps
    assert stream.count == 520 and stream.done
    for n, value in stream.results:
        alone = FeatureMoments()
        alone.update(extract(extractor, pool[:n]))
        expected = fid_from_statistics(alone.statistics(), ref)
        assert abs(value - expected) / expected < 1e-5, n
    # Exact split with given features: an off-by-one would show at ~1e-3.
    feats = extract(extractor, pool)
    stream2 = StreamingFID(extractor, ref, steps=steps)
    stream2.add_features(feats[:49])
    stream2.add_features(feats[49:400])
    stream2.add_features(feats[400:])
    assert [n for n, _ in stream2.results] == steps
    for n, value in stream2.results:
        alone = FeatureMoments()
        alone.update(feats[:n])
        # An off-by-one shows at ~1e-3; scipy's sqrtm alone differs at ~1e-9 between equal inputs
        # accumulated in another order, so the FID is compared at 1e-7 and the moments exactly.
        assert abs(value - fid_from_statistics(alone.statistics(), ref)) <= 1e-7 * value
    chunked = FeatureMoments()
    for lo, hi in ((0, 49), (49, 400), (400, 520)):
        chunked.update(feats[lo:hi])
    whole = FeatureMoments()
    whole.update(feats)
    assert _max_rel(chunked.statistics()["sigma"], whole.statistics()["sigma"]) < 1e-12
    with pytest.raises(MetricError, match="increase strictly"):
        StreamingFID(extractor, ref, steps=[100, 100])


def test_dimension_mismatch_is_a_clear_error(extractor) -> None:
    big = {"mu": np.zeros(2048), "sigma": np.eye(2048, dtype=np.float32)}
    with pytest.raises(MetricError) as info:
        StreamingFID(extractor, big, steps=[10])
    assert str(info.value) == "reference has 2048-dim statistics but extractor 'skipsearch-digits' gives 128"
    small = {"mu": np.zeros(128), "sigma": np.eye(128)}
    with pytest.raises(MetricError, match="2048 vs 128"):
        fid_from_statistics(big, small)


def test_edm_style_npz_loads_in_float64_and_float32(tmp_path: Path) -> None:
    rng = np.random.RandomState(0)
    a = rng.randn(200, 16)
    mu = a.mean(0).astype(np.float32).astype(np.float64)  # float32-exact numbers
    sigma = np.cov(a, rowvar=False).astype(np.float32).astype(np.float64)
    np.savez(tmp_path / "ref64.npz", mu=mu, sigma=sigma)
    np.savez(tmp_path / "ref32.npz", mu=mu.astype(np.float32), sigma=sigma.astype(np.float32))
    r64, r32 = load_reference(tmp_path / "ref64.npz"), load_reference(tmp_path / "ref32.npz")
    assert r64.mu.dtype == np.float64 and r32.sigma.dtype == np.float32  # read as stored
    assert r64.features is None and r64.count is None and r64.dim == 16
    assert r64.sha256 == r32.sha256  # fingerprint of the numbers, not of the file's dtype
    assert abs(fid_from_statistics(r32, r64)) < 1e-8
    shifted = {"mu": mu + 1.0, "sigma": sigma}
    assert fid_from_statistics(shifted, r32) == pytest.approx(16.0, rel=1e-6)

    ours = ReferenceStats.from_arrays(mu, sigma, features="skipsearch-digits", count=200, meta={"k": "v"})
    back = load_reference(save_reference(ours, tmp_path / "sub" / "ours.npz"))
    assert (back.features, back.count, back.meta, back.sha256) == ("skipsearch-digits", 200, {"k": "v"}, ours.sha256)
    assert not list((tmp_path / "sub").glob(".*.tmp"))  # atomic write leaves no temp file


def test_reference_from_folder_zip_and_npz_agree(tmp_path: Path, digits) -> None:
    images = digits[0][:60]
    folder = tmp_path / "imgs"
    names = []
    for i, img in enumerate(images):
        name = f"{'a' if i < 30 else 'b/c'}/{i:03d}.png"
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[0].numpy(), mode="L").save(folder / name)
        names.append(name)
    with zipfile.ZipFile(tmp_path / "imgs.zip", "w") as z:
        for name in names:
            z.write(folder / name, arcname=name)
    np.savez(tmp_path / "nhwc.npz", arr_0=images.permute(0, 2, 3, 1).numpy())
    np.savez(tmp_path / "nchw.npz", images=images.numpy())

    sources = [folder, tmp_path / "imgs.zip", tmp_path / "nhwc.npz", tmp_path / "nchw.npz", images]
    refs = [compute_reference(s, features="skipsearch-digits", batch_size=16) for s in sources]
    for ref in refs:
        assert ref.count == 60 and ref.features == "skipsearch-digits" and ref.dim == 128
        assert _max_rel(ref.mu, refs[-1].mu) < 1e-6
        assert _max_rel(ref.sigma, refs[-1].sigma) < 1e-6


def test_reference_errors_are_clear(tmp_path: Path) -> None:
    np.savez(tmp_path / "nosigma.npz", mu=np.zeros(4))
    with pytest.raises(MetricError, match=r"missing key\(s\) 'sigma'"):
        load_reference(tmp_path / "nosigma.npz")
    np.savez(tmp_path / "shapes.npz", mu=np.zeros(4), sigma=np.eye(3))
    with pytest.raises(MetricError, match=r"mu must be \[D\] and sigma \[D, D\]"):
        load_reference(tmp_path / "shapes.npz")
    (tmp_path / "junk.npz").write_bytes(b"not an npz")
    with pytest.raises(MetricError, match="cannot read reference statistics"):
        load_reference(tmp_path / "junk.npz")
    with pytest.raises(MetricError, match="not found"):
        load_reference(tmp_path / "absent.npz")

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(MetricError, match="no images"):
        compute_reference(tmp_path / "empty", features="skipsearch-digits")
    with zipfile.ZipFile(tmp_path / "empty.zip", "w") as z:
        z.writestr("readme.txt", "nothing")
    with pytest.raises(MetricError, match="no images"):
        compute_reference(tmp_path / "empty.zip", features="skipsearch-digits")
    with pytest.raises(MetricError, match="unknown image data format"):
        compute_reference(tmp_path / "empty" / "notes.txt", features="skipsearch-digits")
    with pytest.raises(MetricError, match="no image array"):
        compute_reference(tmp_path / "nosigma.npz", features="skipsearch-digits")
    with pytest.raises(MetricError, match="unknown feature extractor"):
        compute_reference(tmp_path / "empty", features="nope")


def test_missing_inception_weights_is_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    with pytest.raises(MetricError) as info:
        make_extractor("inception-v3-compat", download=False)
    message = str(info.value)
    assert "\n" not in message and "--features-weights FILE" in message and "hub/checkpoints" in message
    with pytest.raises(MetricError, match="not found"):
        make_extractor("inception-v3-compat", weights_path=tmp_path / "absent.pth")


def test_extractor_input_handling(digits, extractor) -> None:
    images = digits[0][:40]
    grey = extract(extractor, images)
    assert grey.dtype == torch.float64 and grey.shape == (40, 128)
    assert torch.equal(extract(extractor, images.expand(-1, 3, -1, -1)), grey)  # RGB grey == one channel
    big = torch.nn.functional.interpolate(images.float(), scale_factor=2, mode="nearest").to(torch.uint8)
    assert extract(extractor, big).shape == (40, 128)  # other sizes are resized
    with pytest.raises(MetricError, match="uint8"):
        extract(extractor, images.float())

    class RGBOnly(FeatureExtractorBase):
        """Stands in for torch-fidelity's Inception: uint8 RGB in, per-channel means out."""

        def __init__(self) -> None:
            super().__init__("rgb-only", ["2048"])

        @staticmethod
        def get_provided_features_list() -> tuple[str, ...]:
            return ("2048",)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
            assert x.dtype == torch.uint8 and x.shape[1] == 3
            return (x.float().mean(dim=(2, 3)),)

    out = extract(RGBOnly(), images)  # one-channel images are repeated to three
    assert out.shape == (40, 3) and torch.equal(out[:, 0], out[:, 2])


def test_shipped_classifier_accuracy_and_sidecar(digits) -> None:
    images, labels = digits
    _, test_idx = split_indices(len(images))
    acc = accuracy(load_classifier(), images[test_idx], labels[test_idx])
    assert acc >= 0.98
    sidecar = json.loads((Path(sm.__file__).parent.parent / "data" / "digits-classifier.json").read_text())
    assert sidecar["sha256"] == weights_sha256()
    assert sidecar["test_accuracy"] == pytest.approx(acc, abs=1.5 / len(test_idx))


def test_builtin_reference_matches_classifier_and_refuses_a_mismatch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = builtin_reference()
    assert shipped.meta["classifier_sha256"] == weights_sha256()
    assert shipped.count == 1797 and shipped.features == "skipsearch-digits"
    fresh = compute_builtin_reference()  # the shipped file is what the recipe gives
    assert _max_rel(fresh.mu, shipped.mu) < 1e-6 and _max_rel(fresh.sigma, shipped.sigma) < 1e-6

    # A shipped file made with another classifier is refused, with the command that rebuilds it.
    stale = ReferenceStats.from_arrays(shipped.mu, shipped.sigma, features="skipsearch-digits", count=1797,
                                       meta={"classifier_sha256": "0" * 64})
    stale_path = save_reference(stale, tmp_path / "stale.npz")
    monkeypatch.setattr(reference_module, "builtin_reference_path", lambda name="edm-digits": stale_path)
    with pytest.raises(MetricError, match="another digits classifier.*skipsearch demo reference"):
        builtin_reference()
    rebuilt, ref = write_builtin_reference(tmp_path / "new.npz")
    assert load_reference(rebuilt).meta["classifier_sha256"] == weights_sha256()
    assert _max_rel(ref.sigma, shipped.sigma) < 1e-6
