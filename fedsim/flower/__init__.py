"""The Flower bridge (docs/architecture.md, "The Flower bridge"): run a fedsim scenario on real devices.

* :mod:`fedsim.flower.client` — a Flower ``ClientApp`` that is one fedsim peer: its partition of
  the scenario's dataset (or the device's own data), the frozen backbone, the trainable head,
  local steps and minibatches exactly as in simulation, and optionally the scenario's attack.
  Importing it pulls in torch, numpy, flwr and light fedsim modules only (never ray/matplotlib).
* :mod:`fedsim.flower.server` — a Flower ``ServerApp`` whose strategy
  (:mod:`fedsim.flower.strategy`) runs any fedsim aggregation rule (``strategies.aggregate``) as
  fedsim's federated server does, rejecting malformed client updates with a log line
  (:mod:`fedsim.flower.replies`), and records, files and summarises the rounds with ``fedsim
  run``'s code (:mod:`fedsim.flower.serverfiles`).
* :mod:`fedsim.flower.cli` — ``fedsim flower export|run|client|superlink|demo``.

The two apps are configured by the run config of the exported Flower app (``fedsim flower
export``): the resolved scenario travels as YAML text in the ``scenario`` key, so server and
every device derive the same partitions, Byzantine placement and minibatch streams.
"""

CLIENT_APP_REF = "fedsim.flower.client_app:app"
SERVER_APP_REF = "fedsim.flower.server_app:app"
