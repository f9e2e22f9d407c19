"""Flower's app objects: the ServerApp and the ClientApp that Flower loads and runs.

They wire the layers together, so they live with the runner: each builds the
run's objects from the resolved config it receives (:func:`scripts.build.run_from_json`,
once per process) and hands them to the ServerApp's work
(:func:`server.app.run_federation`) or the ClientApp's (:func:`clients.app.train`).
Deployments load ``scripts.apps:server_app`` and ``scripts.apps:client_app``
(the ``pyproject.toml`` that :mod:`scripts.flower_run` submits); both engines
submit them the same way. torch and the run are imported on the first train
message (or the ServerApp's start), never for enrolment: in a deployment every
message runs in a ClientApp process of its own, and where that process starts
cold (``engine.warm_clientapps=false``; by default it is forked from a server
that imported all of it once, :mod:`scripts.warm_clientapps`) an enrolment
query costs one that imports Flower only.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from clients.enrolment import enrol
from common.runtime import CONFIG_KEY
from server.prompt_grid import PromptGrid

server_app = ServerApp()
client_app = ClientApp()


@server_app.main()
def _serve(grid: Grid, context: Context) -> None:
    """Deployment entry point: the resolved config comes as Flower run config."""
    if CONFIG_KEY not in context.run_config:
        raise RuntimeError(
            f"run config has no {CONFIG_KEY!r}: submit runs with `poisonlab engine=deployment` "
            "(or flwr run --run-config with the resolved poisonlab config)"
        )
    from scripts.build import run_from_json
    from server.app import run_federation

    # Flower's grid pulls replies every 3 s; PromptGrid every 0.1 s (server.prompt_grid)
    run_federation(PromptGrid(grid), run_from_json(str(context.run_config[CONFIG_KEY])))


@client_app.query()
def _enrol(msg: Message, context: Context) -> Message:
    return enrol(msg, context)


@client_app.train()
def _train(msg: Message, context: Context) -> Message:
    from clients.app import train
    from scripts.build import run_from_json

    return train(msg, context, run_from_json(str(msg.content["config"][CONFIG_KEY])))
