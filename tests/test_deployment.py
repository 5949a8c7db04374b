"""The deployment files use the CLI as it is: every command, option and environment variable in
the Dockerfile, the compose file, the Kubernetes example and the Slurm script exists and parses."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import typer
import yaml

from skipsearch.cli import app
from skipsearch.search.storage import ENV_VAR

ROOT = Path(__file__).resolve().parent.parent
COMMAND = typer.main.get_command(app)
KNOWN_ENV = {ENV_VAR, "TORCH_HOME", "PYTHONUNBUFFERED", "CUDA_VISIBLE_DEVICES"}


def check_command(args: list[str], where: str) -> None:
    """Parse `skipsearch ARGS` as the CLI would (types and choices included), without running it."""
    assert args and args[0] in COMMAND.commands, f"{where}: unknown command {args[:1]}"  # type: ignore[attr-defined]
    command = COMMAND.commands[args[0]]  # type: ignore[attr-defined]
    context = command.make_context(args[0], list(args[1:]))
    assert not context.args or args[0] == "launch", f"{where}: unexpected arguments {context.args}"


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())


def test_dockerfile_runs_a_worker_per_gpu() -> None:
    text = (ROOT / "docker" / "Dockerfile").read_text()
    entry = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M).group(1))
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))
    assert entry == ["skipsearch"]
    check_command(cmd, "Dockerfile CMD")
    assert cmd[:1] == ["worker"] and "--gpus" in cmd


def test_compose_services_use_real_commands_and_variables() -> None:
    services = _compose()["services"]
    ours = {name: s for name, s in services.items() if "build" in s}
    assert {"create", "worker", "dashboard"} <= set(ours)
    for name, service in ours.items():
        check_command(service["command"], f"compose service {name}")
        assert set(service["environment"]) <= KNOWN_ENV, name
        assert ENV_VAR in service["environment"]
    worker = ours["worker"]
    assert worker["command"][worker["command"].index("--gpus") + 1] == "all"  # one process per GPU, pinned
    [gpus] = worker["deploy"]["resources"]["reservations"]["devices"]
    assert gpus["count"] == "all" and "gpu" in gpus["capabilities"]
    assert "--no-workers" in ours["create"]["command"]
    dashboard = ours["dashboard"]  # read-only, and reachable from this host only (SSH tunnel or proxy)
    assert "--allow-writes" not in dashboard["command"]
    assert all(str(p).startswith("127.0.0.1:") for p in dashboard["ports"]), dashboard["ports"]


def test_kubernetes_jobs() -> None:
    docs = [d for d in yaml.safe_load_all((ROOT / "docs" / "kubernetes.yaml").read_text()) if d]
    jobs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Job"}
    assert set(jobs) == {"skipsearch-create", "skipsearch-workers"}
    for name, job in jobs.items():
        for container in job["spec"]["template"]["spec"]["containers"]:
            check_command(container["args"], f"{name}/{container['name']}")
            secret_refs = [e["secretRef"]["name"] for e in container.get("envFrom", [])]
            assert secret_refs == ["skipsearch-db"], name
            assert {e["name"] for e in container.get("env", [])} <= KNOWN_ENV
    workers = jobs["skipsearch-workers"]["spec"]
    assert workers["completionMode"] == "Indexed"
    [worker] = workers["template"]["spec"]["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker["args"][worker["args"].index("--device") + 1] == "cuda"
    assert "--no-workers" in jobs["skipsearch-create"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--from-literal={ENV_VAR}=" in (ROOT / "docs" / "kubernetes.yaml").read_text()


def test_slurm_array_script() -> None:
    text = (ROOT / "docs" / "slurm-workers.sbatch").read_text()
    assert re.search(r"^#SBATCH --array=\d+-\d+$", text, re.M) and "#SBATCH --gres=gpu:1" in text
    joined = text.replace("\\\n", " ")
    [line] = [ln for ln in joined.splitlines() if ln.strip().startswith("exec skipsearch ")]
    plain = re.sub(r'"?\$\{(\w+):-([^}]*)\}"?', r"\2", line)  # ${VAR:-default} → default
    args = shlex.split(plain)[2:]
    check_command(args, "slurm script")
    exported = set(re.findall(r"^export (\w+)=", text, re.M))
    assert ENV_VAR in exported and exported <= KNOWN_ENV


def test_dockerignore_keeps_the_context_small() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for pattern in (".venv", "*.db", "skipsearch-artifacts/", ".git"):
        assert pattern in ignored


@pytest.mark.parametrize("bad", [["worker", "--gpu", "all"], ["launch", "--trials", "many"], ["wroker"]])
def test_the_checker_catches_mistakes(bad: list[str]) -> None:
    with pytest.raises(Exception):
        check_command(bad, "test")
