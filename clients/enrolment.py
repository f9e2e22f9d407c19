"""The ClientApp's enrolment reply: which client (partition) this SuperNode serves. Flower only, no torch.

Enrolment is the first message every SuperNode gets; in a deployment each
message starts a ClientApp process, so answering it must not import torch or
build the run (:mod:`scripts.apps` imports the training side only for a train
message).
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message, RecordDict


def partition_id(context: Context) -> int:
    """This SuperNode's client id, from its node config."""
    try:
        return int(context.node_config["partition-id"])
    except KeyError:
        raise RuntimeError(
            'this SuperNode has no partition-id: start it with --node-config "partition-id=<i> num-partitions=<N>"'
        ) from None


def enrol(msg: Message, context: Context) -> Message:
    """Tell the server which client (partition) this SuperNode serves, and its node config's role.

    ``role`` is ``"malicious"`` or ``"honest"`` as the SuperNode was started,
    ``""`` when it was given none (a simulation: the threat model decides).
    """
    reply = ConfigRecord(
        {
            "partition-id": partition_id(context),
            "num-partitions": int(context.node_config.get("num-partitions", -1)),
            "role": str(context.node_config.get("role", "")),
        }
    )
    return Message(RecordDict({"enrolment": reply}), reply_to=msg)
