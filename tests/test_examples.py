"""The deployment examples under examples/: the Kubernetes Job against the Kubernetes schema (no cluster runs
here), the Slurm script by bash (tests/integration/test_slurm.py submits it to a real cluster)."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
JOB = EXAMPLES / "kubernetes" / "tuner-job.yaml"
# the oldest and the newest Kubernetes whose schemas the validator bundles
VERSIONS = [kubernetes_validate.utils.all_versions()[0], kubernetes_validate.latest_version()]


def _job() -> dict[str, Any]:
    return yaml.safe_load(JOB.read_text())


@pytest.mark.parametrize("version", VERSIONS)
def test_the_kubernetes_job_is_valid(version: str) -> None:
    # strict: an unknown or misspelt field is an error, as `kubectl apply --validate=strict` makes it
    kubernetes_validate.validate(_job(), version, strict=True)
    container = _job()["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:2] == ["tuner", "run"]
    storage = {"name": "TUNER_STORAGE", "valueFrom": {"secretKeyRef": {"name": "tuner-db", "key": "url"}}}
    assert storage in container["env"]


@pytest.mark.parametrize("change", ["misspelt", "wrong type"])
def test_the_schema_check_finds_a_broken_job(change: str) -> None:
    job = copy.deepcopy(_job())
    spec = job["spec"]["template"]["spec"]
    if change == "misspelt":
        spec["terminationGracePeriod"] = spec.pop("terminationGracePeriodSeconds")
    else:
        job["spec"]["completions"] = "eight"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, VERSIONS[-1], strict=True)


def test_the_slurm_script_parses_and_asks_for_its_settings(tmp_path: Path) -> None:
    script = EXAMPLES / "slurm" / "tuner-array.sbatch"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True, cwd=tmp_path,
                         env={"PATH": "/usr/bin:/bin"})
    assert out.returncode != 0 and "set TUNER_STUDY" in out.stderr
