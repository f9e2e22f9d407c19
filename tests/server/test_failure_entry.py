"""A failed client's entry in ``metrics.jsonl``: its exception type and message, the full reason in the log."""

import logging

from fake_grid import FakeGrid, lines_of, make_run, summary_of
from flwr.app import ArrayRecord, ConfigRecord, Error, Message
from flwr.common.constant import ErrorCode
from torch import nn

from common.params import ModelCodec
from server.app import run_federation
from strategies.client_errors import FAILURE_ENTRY_CHARS, failure_entry
from strategies.robust import RobustStrategy
from strategies.rules.mean import Mean

#: ``Error.reason`` of a ClientApp whose train handler raised ``ValueError("the batch is empty")`` on Flower's
#: Ray simulation engine (flwr 1.41, ray 2.55), as the ServerApp receives it: Ray's colourised traceback of
#: ``RayTaskError(ClientAppException)`` inside Flower's ``<class 'T'>:<'message'>`` (file paths shortened).
RAY_REASON = (
    "<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'\x1b[36mray::ClientAppActor.run()\x1b[39m "
    "(pid=13939, ip=192.0.2.2, actor_id=644c9d78487d8d4a8e44fac101000000, "
    "repr=<flwr.simulation.ray_transport.ray_actor.ClientAppActor object at 0x7f816a2b0150>)\n"
    "                  ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/home/user/poisonlab/.venv/lib/python3.11/site-packages/flwr/clientapp/client_app.py", '
    "line 161, in __call__\n"
    "    return self._registered_funcs[full_name](message, context)\n"
    "           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/home/user/poisonlab/clients/app.py", line 180, in train\n'
    '    raise ValueError("the batch is empty")\n'
    "ValueError: the batch is empty\n"
    "\n"
    "The above exception was the direct cause of the following exception:\n"
    "\n"
    "\x1b[36mray::ClientAppActor.run()\x1b[39m (pid=13939, ip=192.0.2.2, actor_id=644c9d78487d8d4a8e44fac101000000, "
    "repr=<flwr.simulation.ray_transport.ray_actor.ClientAppActor object at 0x7f816a2b0150>)\n"
    "           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    "           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/home/user/poisonlab/.venv/lib/python3.11/site-packages/flwr/simulation/ray_transport/ray_actor.py", '
    "line 65, in run\n"
    "    raise ClientAppException(str(ex)) from ex\n"
    "flwr.clientapp.client_app.ClientAppException: \n"
    "Exception ClientAppException occurred. Message: the batch is empty'>"
)


def test_a_ray_traceback_becomes_the_clients_own_exception():
    assert failure_entry(RAY_REASON) == "ValueError: the batch is empty"


def test_a_chained_exception_keeps_the_one_that_reached_the_client_app():
    # raise RuntimeError(...) from FileNotFoundError(...) inside the handler: the last own exception line wins
    reason = RAY_REASON.replace(
        "The above exception was the direct cause",
        '  File "/home/user/poisonlab/clients/app.py", line 12, in train\n'
        "    raise RuntimeError('client 3 cannot read its shard') from err\n"
        "mypkg.errors.ShardError: client 3 cannot read its shard\n\nThe above exception was the direct cause",
    )
    assert failure_entry(reason) == "ShardError: client 3 cannot read its shard"


def test_a_supernodes_reason_without_traceback():
    # what flwr.supernode.runtime.run_clientapp sends: str(type(ex)) + ":<'" + str(ex) + "'>"
    assert failure_entry("<class 'ValueError'>:<'the batch is empty'>") == "ValueError: the batch is empty"
    died = "<class 'ray.exceptions.ActorDiedError'>:<'The actor died unexpectedly.\n\tclass_name: ClientAppActor'>"
    assert failure_entry(died) == "ActorDiedError: The actor died unexpectedly."
    wrapped = "<class 'flwr.clientapp.client_app.ClientAppException'>:<'\nException ClientAppException occurred. "
    assert failure_entry(wrapped + "Message: CUDA out of memory'>") == "ClientAppException: CUDA out of memory"


def test_any_other_reason_is_its_first_line_trimmed():
    assert failure_entry("CUDA out of memory") == "CUDA out of memory"
    assert failure_entry("\x1b[31m\n  gone  \nmore\x1b[0m") == "gone"
    assert failure_entry("") == "no reason given"
    long = failure_entry("x" * 2000)
    assert len(long) == FAILURE_ENTRY_CHARS and long.endswith("...")


def test_the_adapter_records_the_entry_and_logs_the_full_reason(caplog):
    net = nn.Linear(3, 2)
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    strategy = RobustStrategy(rule=Mean(), codec=ModelCodec.of_model(net), node_of={0: 100, 1: 101},
                              sample=lambda r: [0, 1], partition_sizes=[10, 10], train_config={},
                              on_failure="skip")  # fmt: skip
    sent = list(strategy.configure_train(1, ArrayRecord(state), ConfigRecord(), grid=None))
    replies = [
        Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, RAY_REASON), reply_to=sent[0]),
        Message(Error(ErrorCode.CLIENT_APP_CRASHED, "gone"), reply_to=sent[1]),
    ]
    with caplog.at_level(logging.WARNING, logger="poisonlab"):
        strategy.aggregate_train(1, replies)
    assert strategy.records[1].failed == {0: "ValueError: the batch is empty", 1: "gone"}
    assert strategy.records[1].skipped is not None  # no valid reply left: the round is skipped
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "failed" in r.getMessage()]
    assert len(warned) == 2
    assert warned[0].startswith("round 1: client 0 failed: ValueError: the batch is empty (Flower error code 2)")
    assert 'File "/home/user/poisonlab/clients/app.py", line 180, in train' in warned[0]
    assert "ray::ClientAppActor.run() (pid=13939" in warned[0] and "\x1b[" not in warned[0]


def test_a_client_app_that_raises_is_recorded_by_its_exception(tmp_path, fmnist_root, caplog):
    # a SuperNode started with a role the ClientApp does not know raises in every round it is sampled
    run = make_run(tmp_path, "attack=label_flip", "attack.num_malicious=1")
    grid = FakeGrid(run.federation.num_clients)
    node = next(n for n, c in grid.contexts.items() if c.node_config["partition-id"] == 2)
    grid.contexts[node].node_config["role"] = "attacker"
    with caplog.at_level(logging.WARNING, logger="poisonlab"):
        run_federation(grid, run)
    lines = lines_of(tmp_path)
    expected = "RuntimeError: node config role='attacker': use role=malicious or role=honest"
    for line in lines[1:]:
        assert line["failed"] == {"2": expected}
        assert 2 not in line["selected"] and len(line["selected"]) == 3
    assert summary_of(tmp_path)["status"] == "complete"
    logged = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert f"round 2: client 2 failed: {expected}" in logged
    assert "<class 'RuntimeError'>:<'node config role='attacker'" in logged  # the full reason Flower sent
