"""fedpet as a Flower App: the ClientApp and ServerApp that ``flwr run`` starts.

``[tool.flwr.app.components]`` in ``pyproject.toml`` names them. The fedpet config travels
as YAML text under the run-config key ``fedpet``; the ServerApp writes the run directory
``out`` (docs/concepts/flower.md).
"""

from __future__ import annotations

import logging
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedpet.config import Config, read_yaml
from fedpet.configure import build_config, resolve
from fedpet.errors import FedpetError
from fedpet.experiment import Experiment
from fedpet.launch import resume_run, start_run
from fedpet.rundir import Checkpoint
from fedpet.runtime.flower import quiet_flower, run_strategy
from fedpet.runtime.flower_client import query_reply, train_reply
from fedpet.runtime.recorder import Recorder
from fedpet.runtime.roster import node_map
from fedpet.runtime.secagg import secure_mod

Values = dict[str, bool | float | int | str]


def config_from_run_config(run_config: Values, node_config: Values | None = None) -> Config:
    """The fedpet config a Flower run carries: YAML text under the run-config key ``fedpet``.

    Its runtime is ``flower`` whatever the text says: this run is a deployment. On a
    SuperNode, a ``device`` in its ``node_config`` takes the place of the config's, and the
    device resolves on that node (``auto``: the node's CUDA device if it has one).
    """
    text = str(run_config.get("fedpet", ""))
    data = read_yaml(text) if text.strip() else {}
    if not isinstance(data, dict):
        raise FedpetError("run config 'fedpet' must hold a fedpet config as YAML text")
    node = {"device": str(node_config["device"])} if node_config and "device" in node_config else {}
    return resolve(build_config({**data, **node, "runtime": "flower"}))


_NODE_CONFIGS: dict[tuple[int, str], Config] = {}  # per process: the run's config, resolved


def node_run_config(context: Context) -> Config:
    """The config of ``context``'s run on this node, resolved once per run and node config.

    Resolving can calibrate DP's noise, and every train message of the run carries the same
    run config: each message used to resolve it again.
    """
    key = (context.run_id, repr(sorted(context.node_config.items())))
    if key not in _NODE_CONFIGS:
        _NODE_CONFIGS.clear()
        _NODE_CONFIGS[key] = config_from_run_config(context.run_config, context.node_config)
    return _NODE_CONFIGS[key]


client_app = ClientApp(mods=[secure_mod])
"""The ClientApp of ``flwr run`` deployments."""


@client_app.train()
def _deployed_train(msg: Message, context: Context) -> Message:
    return train_reply(node_run_config(context), msg, context)


client_app.query()(query_reply)

server_app = ServerApp()
"""The ServerApp of ``flwr run`` deployments: it writes the run directory ``out``.

With the run-config value ``resume = true`` and a checkpoint in ``out``, it continues that
run (with the config saved there) after its last complete round. The run-config value
``nodes`` binds the SuperLink's registered node ids to clients
(:func:`~fedpet.runtime.roster.node_map`); without one, each node's ``partition-id`` is
its own claim, and a warning says so.
"""


@server_app.main()
def _deployed_server(grid: Grid, context: Context) -> None:
    out = Path(str(context.run_config.get("out", "runs/flower")))
    bound = node_map(str(context.run_config.get("nodes", "")))
    if bound is None:
        logging.getLogger("fedpet").warning(
            "fedpet: the run config binds no nodes: each node's partition-id is its own "
            "claim (docs/concepts/flower.md)"
        )

    def runner(exp: Experiment, recorder: Recorder, resume: Checkpoint | None) -> None:
        run_strategy(exp, recorder, grid, resume, bound)

    with quiet_flower():  # fedpet's round lines, not Flower's banners, reach the log
        if context.run_config.get("resume") and (out / "checkpoint" / "state.json").exists():
            resume_run(out, runner=runner)
        else:
            cfg = config_from_run_config(context.run_config)
            start_run(cfg, out, overwrite=True, runner=runner)
