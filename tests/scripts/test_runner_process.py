"""The ``poisonlab`` runner prepares each run in a child process and keeps only its config and engine.

The runner process only starts the federation and follows it for the whole
run; building the run (torch, the dataset, the partitions, the model) happens
in a child that exits before anything starts, with the same result as
building it in the runner.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from hydra import compose, initialize_config_module

from scripts.config import ConfigError
from scripts.run import PreparedRun, RunRefused, prepare, prepare_apart

SMALL = ["model=mlp", "federation.num_clients=6", "federation.clients_per_round=3", "attack=label_flip",
         "attack.num_malicious=2", "partition.samples_per_client=20"]  # fmt: skip


def composed(*overrides: str):
    with initialize_config_module(config_module="conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def test_the_runner_keeps_the_config_and_engine_prepare_builds_without_importing_torch(tmp_path, fmnist_root):
    script = textwrap.dedent(f"""
        import json, sys
        from hydra import compose, initialize_config_module
        from scripts.run import prepare, prepare_apart
        with initialize_config_module(config_module="conf", version_base="1.3"):
            cfg = compose(config_name="config", overrides={SMALL!r})
        apart = prepare_apart(lambda: prepare(cfg, {str(tmp_path)!r}))
        torch_free = not {{"torch", "torchvision", "numpy"}} & set(sys.modules)
        here = prepare(cfg, {str(tmp_path)!r})
        print(json.dumps({{"torch_free": torch_free, "same_cfg": apart.cfg == here.cfg,
                          "engine": type(apart.engine).__name__, "same_engine": vars(apart.engine) == vars(here.engine),
                          "malicious": apart.cfg["attack"]["malicious_clients"]}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["torch_free"], "preparing the run loaded torch into the runner process"
    assert found["same_cfg"] and found["same_engine"] and found["engine"] == "Simulation"
    assert len(found["malicious"]) == 2


def test_the_runner_module_and_what_it_follows_a_run_with_import_no_torch():
    code = (
        "import sys, scripts.run, scripts.engines, scripts.console\n"
        "print(sorted({'torch', 'numpy'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_a_config_error_in_the_child_is_refused_with_its_message(tmp_path, fmnist_root):
    cfg = composed("federation.clients_per_round=60")
    with pytest.raises(ConfigError) as here:
        prepare(cfg, tmp_path)
    with pytest.raises(RunRefused) as apart:
        prepare_apart(lambda: prepare(cfg, tmp_path))
    assert str(apart.value) == str(here.value) and "clients_per_round=60" in str(apart.value)


def test_another_failure_in_the_child_carries_its_traceback():
    def broken():
        raise KeyError("no such thing")

    with pytest.raises(RuntimeError, match="preparing the run failed:(.|\n)*KeyError: 'no such thing'"):
        prepare_apart(broken)


def test_a_child_that_dies_is_an_error_not_a_hang():
    with pytest.raises(RuntimeError, match="exited with code 3"):
        prepare_apart(lambda: os._exit(3))


def test_the_prepared_run_is_what_execute_and_the_engines_read(tmp_path, fmnist_root):
    run = prepare_apart(lambda: prepare(composed(*SMALL), tmp_path))
    assert isinstance(run, PreparedRun) and run.cfg["output_dir"] == str(tmp_path.resolve())
    assert run.engine.federation_config(6, 3)["num-supernodes"] == 6
