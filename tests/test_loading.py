"""Safe checkpoint loading: EDM pickles are never executed; state-dict files need a config."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from edm_pickle_writer import Persistent, hostile_source, write_edm_snapshot, write_pickle
from safetensors.torch import save_file

from skipsearch.models.edm import EDMPrecond
from skipsearch.models.edm_pickle import ALLOWED_GLOBALS, read_edm_pickle
from skipsearch.models.loading import CheckpointError, load_network

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(DATA / "edm-ref-adm-small-cond.pt", weights_only=True)


@pytest.fixture(scope="module")
def ref_net(reference: dict) -> EDMPrecond:
    net = EDMPrecond(**reference["constructor_kwargs"]).eval()
    net.load_state_dict(reference["state_dict"])
    return net


def _assert_same_outputs(net: torch.nn.Module, reference: dict) -> None:
    inputs = reference["inputs"]
    with torch.inference_mode():
        out = net(inputs["x"], inputs["sigma"], inputs["class_labels"])
    assert (out - reference["outputs"]).abs().max().item() < 1e-4


def test_snapshot_loads_without_running_module_src(tmp_path: Path, ref_net: EDMPrecond, reference: dict) -> None:
    marker = tmp_path / "executed.txt"
    path = write_edm_snapshot(ref_net, reference["constructor_kwargs"], tmp_path / "network-snapshot-000100.pkl", marker)
    # The file really is hostile: the stock unpickler calls the embedded reconstruct function.
    with pytest.raises(RuntimeError):
        with open(path, "rb") as f:
            pickle.load(f)
    net = load_network(path)
    assert not marker.exists()
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    _assert_same_outputs(net, reference)
    data = read_edm_pickle(path)
    assert data["augment_pipe"] is None and data["dataset_kwargs"]["resolution"] == 16
    assert data["loss_fn"].class_name == "EDMLoss"


def test_hostile_source_would_execute(tmp_path: Path) -> None:
    """Guards the guard: the embedded source really writes the marker when executed."""
    marker = tmp_path / "m.txt"
    with pytest.raises(RuntimeError):
        exec(hostile_source(marker), {})
    assert marker.exists()


def test_positional_init_args_are_bound(tmp_path: Path, ref_net: EDMPrecond, reference: dict) -> None:
    from skipsearch.models.edm_pickle import network_from_record

    kwargs = dict(reference["constructor_kwargs"])
    rest = {k: v for k, v in kwargs.items() if k not in ("img_resolution", "img_channels")}
    raw = read_edm_pickle(write_edm_snapshot(ref_net, rest, tmp_path / "edm-y.pkl", tmp_path / "m"))
    with pytest.raises(CheckpointError, match="cannot build EDMPrecond"):
        network_from_record(raw["ema"])
    raw["ema"].state["_init_args"] = (kwargs["img_resolution"], kwargs["img_channels"])
    _assert_same_outputs(network_from_record(raw["ema"]).eval(), reference)


def test_arguments_for_a_larger_network_than_the_file_holds_are_refused(tmp_path: Path, ref_net: EDMPrecond,
                                                                       reference: dict) -> None:
    """A few bytes of constructor arguments must not allocate a huge network before any tensor is
    checked: the network is sized on the meta device first."""
    kwargs = dict(reference["constructor_kwargs"], model_channels=4096)
    with pytest.raises(CheckpointError, match=r"describe a network of [0-9,]+ values \(EDMPrecond\), but the file holds"):
        load_network(write_edm_snapshot(ref_net, kwargs, tmp_path / "edm-huge.pkl", tmp_path / "m"))


class _Evil:
    def __reduce__(self):  # noqa: D105
        return (print, ("pwned",))


@pytest.mark.parametrize(
    "payload, needle",
    [
        ({"ema": _Evil()}, "builtins.print"),
        ({"ema": torch.nn.Linear(2, 2)}, "torch.nn.modules.linear.Linear"),
    ],
)
def test_disallowed_globals_are_named(tmp_path: Path, payload: object, needle: str) -> None:
    path = write_pickle(payload, tmp_path / "bad.pkl")
    with pytest.raises(CheckpointError, match=needle.replace(".", r"\.")):
        load_network(path)


def _text(value: str) -> bytes:
    """A pickle BINUNICODE opcode."""
    data = value.encode()
    return b"X" + len(data).to_bytes(4, "little") + data


def test_no_pickle_sets_state_on_an_allowed_global_or_a_checked_record(tmp_path: Path) -> None:
    """BUILD on an allowed function would change it for the whole process (here: every later
    torch.load would negate its tensors); BUILD on a checked record would undo its checks."""
    before = torch._utils._rebuild_tensor_v2.__defaults__
    poison = (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n"  # the global itself, then BUILD on it with
              b"N}" + _text("__defaults__") + b"}" + _text("neg") + b"\x88s\x85s\x86b"  # (None, {"__defaults__": ...})
              b"0}.")
    (tmp_path / "poison.pkl").write_bytes(poison)
    with pytest.raises(CheckpointError, match="sets the state of a function"):
        read_edm_pickle(tmp_path / "poison.pkl")
    assert torch._utils._rebuild_tensor_v2.__defaults__ == before
    record = (b"\x80\x02ctorch_utils.persistence\n_reconstruct_persistent_obj\n}(" + _text("type") + _text("class")
              + _text("class_name") + _text("EDMPrecond") + _text("state") + b"}u\x85R"  # a checked record...
              + b"}" + _text("state") + b"]sb.")  # ...whose state BUILD would turn into a list
    (tmp_path / "record.pkl").write_bytes(record)
    with pytest.raises(CheckpointError, match="sets the state of a PersistentRecord"):
        load_network(tmp_path / "record.pkl")


def test_unsupported_precond(tmp_path: Path) -> None:
    record = Persistent("VPPrecond", {"_init_kwargs": {"img_resolution": 32}, "_modules": {}}, "raise SystemExit")
    path = write_pickle({"ema": record}, tmp_path / "edm-vp.pkl")
    with pytest.raises(CheckpointError, match="unsupported preconditioning 'VPPrecond'"):
        load_network(path)


def test_not_a_checkpoint_and_truncated(tmp_path: Path, ref_net: EDMPrecond, reference: dict) -> None:
    text = tmp_path / "notes.pkl"
    text.write_text("hello, this is not a pickle\n")
    with pytest.raises(CheckpointError, match="not a readable EDM checkpoint"):
        load_network(text)
    good = write_edm_snapshot(ref_net, reference["constructor_kwargs"], tmp_path / "full.pkl", tmp_path / "m")
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError):
        load_network(cut)
    with pytest.raises(CheckpointError, match="no such file"):
        load_network(tmp_path / "missing.pkl")
    with pytest.raises(CheckpointError, match="unknown checkpoint type"):
        load_network(text.rename(tmp_path / "notes.txt"))


def test_a_snapshot_without_ema_names_its_keys_whatever_their_types(tmp_path: Path) -> None:
    """Found by the fuzz test on CI: a top-level dict with int and str keys made the error message
    itself fail (sorting mixed keys) and end in a TypeError traceback."""
    path = write_pickle({3: "x", "b": 1, None: 2}, tmp_path / "no-ema.pkl")
    with pytest.raises(CheckpointError, match=r"no 'ema' network in this checkpoint \(keys: 'b', 3, None\)"):
        load_network(path)


def test_state_dict_with_config_beside(tmp_path: Path, reference: dict) -> None:
    pt = tmp_path / "net.pt"
    torch.save({k.removeprefix("model."): v for k, v in reference["state_dict"].items()}, pt)
    with pytest.raises(CheckpointError, match="no network config found"):
        load_network(pt)
    (tmp_path / "net.json").write_text(json.dumps({"constructor_kwargs": reference["constructor_kwargs"]}))
    _assert_same_outputs(load_network(pt), reference)

    st = tmp_path / "st" / "weights.safetensors"
    st.parent.mkdir()
    save_file({k: v.contiguous() for k, v in reference["state_dict"].items()}, str(st))
    lines = []
    for key, value in reference["constructor_kwargs"].items():
        lines.append(f"{key} = {json.dumps(value)}")
    (st.parent / "config.toml").write_text("\n".join(lines) + "\n")
    _assert_same_outputs(load_network(st), reference)

    # The reference files embed their constructor arguments.
    _assert_same_outputs(load_network(DATA / "edm-ref-adm-small-cond.pt"), reference)


def test_state_dict_shape_mismatch_is_one_clear_error(tmp_path: Path, reference: dict) -> None:
    pt = tmp_path / "net.pt"
    torch.save(reference["state_dict"], pt)
    kwargs = dict(reference["constructor_kwargs"], model_channels=16)
    (tmp_path / "net.json").write_text(json.dumps(kwargs))
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_network(pt)


def test_allow_list_is_small() -> None:
    """Exactly what EDM and EDM2 snapshots need (EDM2's VAE encoder adds numpy's array rebuild)."""
    assert set(ALLOWED_GLOBALS) == {
        ("torch_utils.persistence", "_reconstruct_persistent_obj"),
        ("collections", "OrderedDict"),
        ("torch._utils", "_rebuild_parameter"),
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch.storage", "_load_from_bytes"),
        ("torch.nn.modules.container", "ModuleDict"),
        ("dnnlib.util", "EasyDict"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "_reconstruct"),
    }
    assert ("builtins", "eval") not in ALLOWED_GLOBALS
