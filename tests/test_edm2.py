"""Our EDM2 networks against NVlabs EDM2: layout of every released configuration, reference outputs
of the original code, the float16 gain arithmetic, and safe loading of EDM2 snapshots."""

from __future__ import annotations

import copy
import json
import math
import pickle
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from edm_pickle_writer import VAE_RAW_MEAN, VAE_RAW_STD, Persistent, write_edm2_snapshot, write_pickle
from safetensors.torch import save_file

from skipsearch import SkipSchedule, skip_sites, skip_tuned
from skipsearch.errors import CheckpointError
from skipsearch.models.edm import EDMPrecond
from skipsearch.models.edm2 import EDM2Block, EDM2Precond, EDM2UNet, EncoderInfo, MPConv
from skipsearch.models.edm_pickle import network_from_record, read_edm_pickle
from skipsearch.models.loading import load_network

DATA = Path(__file__).parent / "data"
ARCHS = json.loads((DATA / "edm2-architectures.json").read_text())
TOL = 1e-4


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """These nets are tiny: intra-op threads only add overhead, which on busy cores is 100-fold."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ref() -> dict:
    return torch.load(DATA / "edm2-ref-small.pt", weights_only=True)


@pytest.fixture(scope="module")
def ref_net(ref: dict) -> EDM2Precond:
    net = EDM2Precond(**ref["constructor_kwargs"]).eval().requires_grad_(False)
    net.load_state_dict(ref["state_dict"], strict=True)
    return net


@pytest.fixture(scope="module")
def fp16_net(ref: dict) -> EDM2Precond:
    """The reference weights as a released file stores them (float16), loaded as any loader does."""
    net = EDM2Precond(**ref["constructor_kwargs"]).eval().requires_grad_(False)
    net.load_state_dict({k: v.half() for k, v in ref["state_dict"].items()}, strict=True)
    return net


def _run(net: torch.nn.Module, ref: dict, **kwargs: object) -> torch.Tensor:
    inputs = ref["inputs"]
    with torch.inference_mode():
        return net(inputs["x"], inputs["sigma"], inputs["class_labels"], **kwargs)


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# ---------------------------------------------------------------------------------------------
# Architecture


@pytest.mark.parametrize("name", list(ARCHS))
def test_released_configuration_layout(name: str) -> None:
    arch = ARCHS[name]
    with torch.device("meta"):
        net = EDM2Precond(**arch["constructor_kwargs"])
    shapes = {k: list(v.shape) for k, v in net.state_dict().items()}
    assert list(shapes) == list(arch["state_dict"]), "key order differs"
    assert shapes == arch["state_dict"]
    assert sum(p.numel() for p in net.parameters()) == arch["num_parameters"]
    assert sum(b.numel() for b in net.buffers()) == arch["num_buffer_elements"]
    unet = net.unet
    assert list(unet.enc) == arch["encoder_entries"] and list(unet.dec) == arch["decoder_entries"]
    assert unet.emb_fourier.freqs.shape[0] == arch["noise_channels"]
    assert unet.emb_noise.out_channels == arch["emb_channels"]
    blocks = {
        name: dict(out_channels=m.out_channels, num_heads=m.num_heads, resample_mode=m.resample_mode,
                   flavor=m.flavor, has_conv_skip=m.conv_skip is not None)
        for name, m in unet.named_modules() if isinstance(m, EDM2Block)
    }
    assert blocks == arch["blocks"]

    sites = skip_sites(net)
    assert len(sites) == arch["num_skips"]
    expected = sorted(arch["skip_sites"], key=lambda s: s["skip_index"])
    assert [s.index for s in sites] == [e["skip_index"] for e in expected] == list(range(len(sites)))
    for site, e in zip(sites, expected):
        assert (site.producer, site.consumer, site.channels, site.resolution) == (
            e["skip_from"], e["decoder_entry"], e["skip_channels"], e["resolution"])
        assert unet.dec[site.consumer].in_channels - site.channels == e["main_channels"]
        assert e["concat_balance"] == unet.concat_balance


# ---------------------------------------------------------------------------------------------
# Reference outputs of the original code (float32 weights)


def test_reference_outputs(ref: dict, ref_net: EDM2Precond) -> None:
    assert list(ref_net.state_dict()) == list(ref["state_dict"])
    assert len(skip_sites(ref_net)) == ref["num_skips"]
    inputs = ref["inputs"]
    out = _run(ref_net, ref)
    assert _err(out, ref["outputs"]) < TOL
    with torch.inference_mode():
        assert _err(ref_net(inputs["x"], inputs["sigma"]), ref["outputs_no_labels"]) < TOL
        out2, logvar = ref_net(inputs["x"], inputs["sigma"], inputs["class_labels"], return_logvar=True)
        one = ref_net(inputs["x"][1:2], float(inputs["sigma"][1]), inputs["class_labels"][1:2])
    assert torch.equal(out2, out) and logvar.shape == (4, 1, 1, 1)
    assert _err(logvar, ref["logvar"]) < TOL
    assert _err(one, out[1:2]) < TOL  # a Python float σ works too


def test_concat_balance_weights_the_skip(ref: dict) -> None:
    net = EDM2Precond(**ref["constructor_kwargs"], concat_balance=0.3).eval()
    net.load_state_dict(ref["state_dict"])
    assert _err(_run(net, ref), ref["outputs_concat_balance_0p3"]) < TOL


@pytest.mark.parametrize("case", ["rho_linear", "rho_random"])
def test_skip_tuned_reference_outputs(ref: dict, ref_net: EDM2Precond, case: str) -> None:
    out = _run(ref_net, ref)
    with skip_tuned(ref_net, SkipSchedule(ref[case])):
        tuned = _run(ref_net, ref)
    assert _err(tuned, ref[f"outputs_{case}"]) < TOL
    assert _err(tuned, ref["outputs"]) > 1e-2  # the schedule really acts
    assert torch.equal(_run(ref_net, ref), out), "skip_tuned must restore the network on exit"


# ---------------------------------------------------------------------------------------------
# float16 gains (released weights): gain/√fan_in is evaluated in float16


def test_mpconv_gain_is_divided_in_float16() -> None:
    torch.manual_seed(0)
    conv = MPConv(3, 5, kernel=[])  # fan_in 3: 1/√3 is far from a float16 value
    x = torch.randn(4, 3) * 10
    gain = torch.tensor(1.0, dtype=torch.float16)

    w = conv.weight.detach().double()
    w = w / (1e-4 + w.norm(dim=1, keepdim=True) / math.sqrt(3))
    exact = 1.0 / math.sqrt(3)
    rounded = float(torch.tensor(exact, dtype=torch.float64).half())
    with torch.inference_mode():
        got = conv(x, gain=gain).double()
        got32 = conv(x, gain=gain.float()).double()
    want_fp16 = x.double() @ (w * rounded).t()
    want_fp32 = x.double() @ (w * exact).t()
    assert _err(got, want_fp16) < 1e-5
    assert _err(got32, want_fp32) < 1e-5
    assert _err(want_fp16, want_fp32) > 1e-3  # the case discriminates


def test_float16_weights_agree_with_half_precision_parameters(ref: dict, fp16_net: EDM2Precond) -> None:
    gains = [m for m in fp16_net.modules() if isinstance(m, (EDM2Block, EDM2UNet))]
    assert gains and all(m.gain_dtype == torch.float16 for m in gains)
    assert all(p.dtype == torch.float32 for p in fp16_net.state_dict().values())
    out = _run(fp16_net, ref)
    # The original keeps released parameters in float16 and upcasts at use: emulate that exactly.
    half = copy.deepcopy(fp16_net).half()
    for m in half.modules():
        if isinstance(m, (EDM2Block, EDM2UNet)):
            m.gain_dtype = None  # the parameters' own dtype: float16
    assert torch.equal(_run(half, ref), out)
    # Doing the gain division in float32 instead is measurably different.
    plain = copy.deepcopy(fp16_net)
    for m in plain.modules():
        if isinstance(m, (EDM2Block, EDM2UNet)):
            m.gain_dtype = torch.float32
    assert _err(_run(plain, ref), out) > 1e-4
    # Reloading float32 weights switches back.
    plain.load_state_dict(ref["state_dict"])
    assert plain.unet.gain_dtype == torch.float32 and _err(_run(plain, ref), ref["outputs"]) < TOL


# ---------------------------------------------------------------------------------------------
# EDM2 snapshot pickles


def test_edm2_snapshot_loads_without_running_module_src(
    tmp_path: Path, ref: dict, ref_net: EDM2Precond, fp16_net: EDM2Precond
) -> None:
    marker = tmp_path / "executed.txt"
    path = write_edm2_snapshot(ref_net, ref["constructor_kwargs"], tmp_path / "edm2-small-0000100-0.100.pkl", marker)
    with pytest.raises(RuntimeError):  # the file really is hostile to the stock unpickler
        with open(path, "rb") as f:
            pickle.load(f)
    data = read_edm_pickle(path)
    assert list(data) == ["encoder", "dataset_kwargs", "loss_fn", "ema"]
    assert data["loss_fn"].class_name == "EDM2Loss" and data["ema"].class_name == "Precond"
    assert data["dataset_kwargs"]["use_labels"] is True
    assert data["ema"].state["_modules"]["unet"].class_name == "UNet"

    net = load_network(path)
    assert not marker.exists()
    assert isinstance(net, EDM2Precond) and not net.training and not any(p.requires_grad for p in net.parameters())
    assert net.skipsearch_encoder == EncoderInfo(kind="rgb")
    assert net.unet.gain_dtype == torch.float16
    out = _run(net, ref)
    assert torch.equal(out, _run(fp16_net, ref))
    assert _err(out, ref["outputs"]) < 1e-2  # float16 weights: close to, not equal to, the float32 reference


def test_edm2_snapshot_float32_reproduces_reference(tmp_path: Path, ref: dict, ref_net: EDM2Precond) -> None:
    path = write_edm2_snapshot(ref_net, ref["constructor_kwargs"], tmp_path / "a.pkl", tmp_path / "m", dtype=torch.float32)
    net = load_network(path)
    assert _err(_run(net, ref), ref["outputs"]) < TOL
    _, logvar = _run(net, ref, return_logvar=True)
    assert _err(logvar, ref["logvar"]) < TOL
    with skip_tuned(net, SkipSchedule(ref["rho_random"])):
        assert _err(_run(net, ref), ref["outputs_rho_random"]) < TOL

    # An attribute changed after construction is pickled with the object; the original uses it.
    changed = copy.deepcopy(ref_net)
    changed.unet.concat_balance = 0.3
    path = write_edm2_snapshot(changed, ref["constructor_kwargs"], tmp_path / "b.pkl", tmp_path / "m", dtype=torch.float32)
    net = load_network(path)
    assert net.unet.concat_balance == 0.3
    assert _err(_run(net, ref), ref["outputs_concat_balance_0p3"]) < TOL
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("numpy1_names", [False, True], ids=["numpy2", "numpy1"])
def test_edm2_vae_snapshot_keeps_its_encoder(
    tmp_path: Path, ref: dict, ref_net: EDM2Precond, fp16_net: EDM2Precond, numpy1_names: bool
) -> None:
    marker = tmp_path / "executed.txt"
    path = write_edm2_snapshot(ref_net, ref["constructor_kwargs"], tmp_path / "edm2-img512.pkl", marker,
                               encoder="vae", numpy1_names=numpy1_names)
    assert (b"numpy.core.multiarray" in path.read_bytes()) == numpy1_names
    net = load_network(path)
    assert not marker.exists()
    scale = (0.5 / VAE_RAW_STD).astype(np.float32)
    info = net.skipsearch_encoder
    assert info.kind == "vae" and info.vae_name == "stabilityai/sd-vae-ft-mse"
    assert info.scale == tuple(float(v) for v in scale)
    assert info.bias == tuple(float(v) for v in (-VAE_RAW_MEAN * scale).astype(np.float32))
    with pytest.raises(AttributeError):
        info.kind = "rgb"  # type: ignore[misc]
    assert torch.equal(_run(net, ref), _run(fp16_net, ref))
    arrays = read_edm_pickle(path)["encoder"].state
    assert isinstance(arrays["scale"], np.ndarray) and arrays["scale"].dtype == np.float32


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize(
    "encoder_state, needle",
    [
        ({"_vae": _Evil()}, r"builtins\.print"),
        ({"_vae": torch.nn.Linear(2, 2)}, r"torch\.nn\.modules\.linear\.Linear"),
        ({"scale": np.ma.masked_array(np.ones(4, np.float32))}, r"numpy\.ma\.core\._mareconstruct"),
        ({"scale": np.array([1.0, "x"], dtype=object)}, r"refusing numpy dtype 'O8'"),
        ({"scale": np.zeros(2, dtype=[("a", "f4"), ("b", "i4")])}, r"refusing numpy dtype 'V8'"),
    ],
    ids=["print", "torch-module", "masked-array", "object-array", "structured-array"],
)
def test_edm2_snapshot_refuses_what_is_not_allowed(
    tmp_path: Path, ref: dict, ref_net: EDM2Precond, encoder_state: dict, needle: str
) -> None:
    marker = tmp_path / "executed.txt"
    path = write_edm2_snapshot(ref_net, ref["constructor_kwargs"], tmp_path / "bad.pkl", marker, encoder="vae",
                               encoder_state=encoder_state)
    with pytest.raises(CheckpointError, match=needle) as info:
        load_network(path)
    assert "\n" not in str(info.value)
    assert not marker.exists()


def test_edm2_records_that_cannot_be_used(tmp_path: Path, ref: dict, ref_net: EDM2Precond) -> None:
    path = write_edm2_snapshot(ref_net, ref["constructor_kwargs"], tmp_path / "enc.pkl", tmp_path / "m",
                               encoder="vae", encoder_state={"scale": "not numbers"})
    with pytest.raises(CheckpointError, match="VAE encoder's scale"):
        load_network(path)
    odd = Persistent("Precond", {"_init_kwargs": {"img_resolution": 16, "img_channels": 3}, "_modules": {}}, "raise SystemExit")
    with pytest.raises(CheckpointError, match="no EDM2 'unet'"):
        load_network(write_pickle({"ema": odd}, tmp_path / "odd.pkl"))
    record = read_edm_pickle(path)["ema"]
    record.state["_modules"]["unet"].state["_modules"]["enc"].state["_modules"]["8x8_block0"].state["num_heads"] = 1
    with pytest.raises(CheckpointError, match=r"unet\.enc\.8x8_block0\.num_heads is recorded as 1 .* inconsistent"):
        network_from_record(record)
    path = write_edm2_snapshot(ref_net, ref["constructor_kwargs"], tmp_path / "x.pkl", tmp_path / "m",
                               encoder="MysteryEncoder")
    with pytest.raises(CheckpointError, match="unsupported encoder 'MysteryEncoder'"):
        load_network(path)
    assert not (tmp_path / "m").exists()


# ---------------------------------------------------------------------------------------------
# State-dict files


def test_state_dict_files_name_their_class(tmp_path: Path, ref: dict, fp16_net: EDM2Precond) -> None:
    # The reference file embeds its arguments; its keys can only be EDM2's.
    net = load_network(DATA / "edm2-ref-small.pt")
    assert isinstance(net, EDM2Precond) and _err(_run(net, ref), ref["outputs"]) < TOL
    assert not hasattr(net, "skipsearch_encoder")

    st = tmp_path / "edm2.safetensors"
    save_file({k: v.half().contiguous() for k, v in ref["state_dict"].items()}, str(st))
    encoder = {"kind": "vae", "vae_name": "stabilityai/sd-vae-ft-mse", "scale": [0.1, 0.2, 0.3, 0.4],
               "bias": [0.0, 0.1, 0.2, 0.3]}
    config = {"class": "EDM2Precond", "constructor_kwargs": ref["constructor_kwargs"], "encoder": encoder}
    st.with_suffix(".json").write_text(json.dumps(config))
    net = load_network(st)
    assert isinstance(net, EDM2Precond) and net.unet.gain_dtype == torch.float16
    assert net.skipsearch_encoder == EncoderInfo.from_dict(encoder)
    assert torch.equal(_run(net, ref), _run(fp16_net, ref))

    # A flat TOML config with the class at top level.
    toml = tmp_path / "flat.toml"
    toml.write_text('class = "EDM2Precond"\n' + "".join(f"{k} = {json.dumps(v)}\n" for k, v in ref["constructor_kwargs"].items()))
    assert isinstance(load_network(st, config=toml), EDM2Precond)

    with pytest.raises(CheckpointError, match="unknown network class 'UNet'"):
        load_network(st, config=dict(config, **{"class": "UNet"}))
    with pytest.raises(CheckpointError, match="EDM2 networks only"):
        load_network(st, config=dict(config, **{"class": "EDMPrecond"}))
    with pytest.raises(CheckpointError, match="cannot build EDMPrecond"):
        load_network(st, config={"class": "EDMPrecond", "constructor_kwargs": ref["constructor_kwargs"]})
    # Without "class" a config means EDMPrecond, unless every tensor name is EDM2's (unet., logvar_*).
    assert isinstance(load_network(st, config={"constructor_kwargs": ref["constructor_kwargs"]}), EDM2Precond)
    assert isinstance(load_network(DATA / "edm-ref-adm-small-cond.pt"), EDMPrecond)
