"""What every process of a run shares: the message keys, the device, the memory format.

torch is imported where a function needs it: the message keys are read by
processes that never train (a ClientApp process answering enrolment).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn

#: the Flower run-config key (and train-message config key) that carries the resolved run config as JSON
CONFIG_KEY = "poisonlab-config"
#: train-message config key: how many local steps a client the leakage attack targets copies into its reply
CAPTURE_STEPS_KEY = "leakage-capture-steps"
#: reply record in which a colluder of a deployment says what it did (read by the server's harness only)
COLLUSION_REPORT_KEY = "collusion"
#: train-message config key: the clients (of this node's group) to train this round, in order
CLIENTS_KEY = "clients"
#: reply record of a client of a group that failed (its ``reason``), the others' records unaffected
ERROR_RECORD = "error"


def clients_of_node(node: int, num_nodes: int, num_clients: int) -> range:
    """The client ids node ``node`` of ``num_nodes`` serves: a contiguous block, the blocks as even as can be.

    A node started with ``partition-id=k num-partitions=M`` serves clients
    ``floor(k N / M) .. floor((k + 1) N / M) - 1`` of the run's ``N``; with
    ``M = N`` (every deployment) node ``k`` is client ``k``. Every node serves
    at least one client when ``M <= N``.
    """
    if not 1 <= num_nodes <= num_clients:
        raise ValueError(f"{num_nodes} nodes cannot serve {num_clients} clients (need 1 <= nodes <= clients)")
    if not 0 <= node < num_nodes:
        raise ValueError(f"node {node} is not one of the {num_nodes} nodes")
    return range(node * num_clients // num_nodes, (node + 1) * num_clients // num_nodes)


def client_key(record: str, cid: int) -> str:
    """The key of client ``cid``'s ``record`` (``arrays``, ``metrics``, ...) in a group's reply: ``<record>/<cid>``."""
    return f"{record}/{cid}"


def split_client_key(key: str) -> tuple[str, int] | None:
    """``("arrays", 7)`` for ``"arrays/7"``; ``None`` for a key of no client."""
    record, sep, cid = key.rpartition("/")
    return (record, int(cid)) if sep and record and cid.isdigit() else None


def resolve_device(requested: str) -> torch.device:
    """``auto`` -> CUDA when this process can see a GPU, else CPU."""
    import torch

    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={requested} but no CUDA device is visible to this process; use device=auto")
    return device


def uses_channels_last(model: nn.Module, enabled: bool) -> bool:
    """Channels-last (``client.channels_last``) only pays off for convolutional models without GroupNorm.

    GroupNorm (what BatchNorm becomes under DP-SGD) is slower in NHWC on the
    CPU: a DP-SGD round of paper A's CNN took 1.74 s channels-last against
    1.10 s contiguous here (1,200 samples, batch 32, one thread).
    """
    from torch import nn

    modules = list(model.modules())
    return (
        enabled
        and any(isinstance(m, nn.Conv2d) for m in modules)
        and not any(isinstance(m, nn.GroupNorm) for m in modules)
    )
