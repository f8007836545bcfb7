"""The GPU block commented in profiles/slurm/config.yaml gives the sbatch flags it says,
with the installed snakemake-executor-plugin-slurm (no cluster needed)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import yaml

from tests.conftest import REPO


def _gpu_block() -> dict:
    """The commented `set-resources:` GPU example, uncommented and parsed."""
    lines = (REPO / "profiles/slurm/config.yaml").read_text().splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("# set-resources:"))
    block = []
    for line in lines[start:]:
        if not line.startswith("#"):
            break
        block.append(line[2:].split("  #")[0])
    return yaml.safe_load("\n".join(block))["set-resources"]


class Resources(dict):
    __getattr__ = dict.__getitem__


def test_profile_gpu_example_asks_for_one_gpu_and_cpus_per_gpu() -> None:
    pytest.importorskip("snakemake_executor_plugin_slurm")
    from snakemake_executor_plugin_slurm.utils import set_gres_string
    from snakemake_executor_plugin_slurm_jobstep import get_cpu_setting

    block = _gpu_block()
    for rule in ("relax", "static"):
        job = SimpleNamespace(resources=Resources(block[rule]), threads=1)
        assert set_gres_string(job).strip() == "--gpus=a100:1"
        assert get_cpu_setting(job, True) == "--cpus-per-gpu=8"
        plain = SimpleNamespace(resources=Resources({"gpu": 1}), threads=1)
        assert set_gres_string(plain).strip() == "--gpus=1"
