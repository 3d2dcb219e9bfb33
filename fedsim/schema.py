"""The scenario schema: the pydantic model a scenario file validates into.

Every field has a default, so ``{}`` is a valid scenario. :class:`Scenario` holds one model per
section (:mod:`fedsim.schema_sections`: each refuses unknown keys and takes strict, finite types),
the ``probes:`` entries typed by their registered kind (:mod:`fedsim.schema_probes`) and the
checks across sections; :func:`fedsim.schema_errors._messages` turns pydantic's errors into one
``field: message`` line each. Reading files is :mod:`fedsim.yamlsafe`, the checks beyond the schema
:mod:`fedsim.validation`; :mod:`fedsim.scenario` ties them together.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any, Literal

from pydantic import Field, ModelWrapValidatorHandler, SerializeAsAny, field_validator, model_validator

from fedsim.schema_probes import ProbeConfig, to_config
from fedsim.schema_sections import (
    BackboneCfg,
    CheckpointCfg,
    DatasetCfg,
    EngineCfg,
    EvaluationCfg,
    ModelCfg,
    OutputCfg,
    PartitionCfg,
    PeersCfg,
    SamplingCfg,
    StrategyCfg,
    TopologyCfg,
    TrainingCfg,
    _Section,
)

# the plugins: entries of the scenario being validated (Scenario._probe_plugins_first), for its probes'
# unknown-kind hint (the field validator sees no other field)
_LISTED: ContextVar[tuple[str, ...]] = ContextVar("scenario_plugins", default=())


class Scenario(_Section):
    name: str = Field(
        "run",
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$",
        description="the run folder under output.dir: a plain identifier (letters, digits, _ . -, not starting "
        "with . or -), so it can never name '.', '..' or a folder elsewhere",
    )
    seed: int = Field(0, ge=0, le=2**62)
    mode: Literal["decentralized", "federated"] = "decentralized"
    rounds: int = Field(30, ge=1, le=1_000_000)
    dataset: DatasetCfg = Field(default_factory=DatasetCfg)
    backbone: BackboneCfg = Field(default_factory=BackboneCfg)
    partition: PartitionCfg = Field(default_factory=PartitionCfg)
    peers: PeersCfg = Field(default_factory=PeersCfg)
    topology: TopologyCfg = Field(default_factory=TopologyCfg)
    strategy: StrategyCfg = Field(default_factory=StrategyCfg)
    training: TrainingCfg = Field(default_factory=TrainingCfg)
    model: ModelCfg = Field(default_factory=ModelCfg)
    evaluation: EvaluationCfg = Field(default_factory=EvaluationCfg)
    engine: EngineCfg = Field(default_factory=EngineCfg)
    sampling: SamplingCfg = Field(
        default_factory=SamplingCfg,
        description="federated mode: clients sampled each round (fraction or count; see SamplingCfg)",
    )
    checkpoint: CheckpointCfg = Field(default_factory=CheckpointCfg)
    output: OutputCfg = Field(default_factory=OutputCfg)
    probes: list[SerializeAsAny[ProbeConfig]] = Field(
        default_factory=list,
        description="probes run after training: each its kind's config (a registered kind: fedsim.probe_registry)",
    )
    plugins: list[str] = Field(
        default_factory=list,
        description="your modules (my_pkg.rules) or .py files (my_rules.py, relative to the current directory) "
        "the run needs: recorded here, imported only when granted with --plugin (Python: plugins=), then "
        "in each process of the run that builds components; see docs/extending.md",
    )

    @model_validator(mode="wrap")
    @classmethod
    def _probe_plugins_first(cls, data: Any, handler: ModelWrapValidatorHandler[Scenario]) -> Scenario:
        """A plugin may register a probe kind: import the plugins before the probes are read (a
        plugin that fails is reported after the schema, by :func:`fedsim.scenario.load_plugins`);
        while they are read, the scenario's ``plugins:`` are the probes' (:data:`_LISTED`)."""
        listed = data.get("plugins") if isinstance(data, dict) else None
        listed = [e for e in listed if isinstance(e, str)] if isinstance(listed, list) else []
        if isinstance(data, dict) and data.get("probes") and listed:
            from fedsim import plugins

            try:
                plugins.load([plugins.normalize(e) for e in listed])
            except (plugins.PluginError, ValueError):
                pass
        token = _LISTED.set(tuple(listed))
        try:
            return handler(data)
        finally:
            _LISTED.reset(token)

    @field_validator("probes", mode="before")
    @classmethod
    def _probe_kinds(cls, v: Any) -> Any:
        """Each entry as its kind's config (the union's dispatch on ``kind``: the registry's kinds;
        an unknown kind's ``--plugin`` hint reads the scenario's own ``plugins:``)."""
        return [to_config(i, p, _LISTED.get()) for i, p in enumerate(v)] if isinstance(v, list) else v

    @field_validator("plugins")
    @classmethod
    def _plugin_entries(cls, v: list[str]) -> list[str]:
        from fedsim import plugins

        # .py paths made absolute (actors may run elsewhere), each file or module once however the
        # scenario spells it (the dedupe of granted entries, fedsim.plugins.merge)
        return [plugins.normalize(e) for e in plugins.merge(v, [])]

    @model_validator(mode="after")
    def _mode_topology(self) -> Scenario:
        if self.mode == "federated" and self.topology.kind != "star":
            if "kind" in self.topology.model_fields_set:  # a graph the run would never build
                raise ValueError("topology.kind: federated mode uses a star (server ↔ clients); remove topology "
                                 "or set mode: decentralized (with --set: topology={kind: star})")
            object.__setattr__(self.topology, "kind", "star")  # unset: the default graph becomes the star
        if self.mode == "decentralized" and self.topology.kind == "star":
            raise ValueError("topology.kind: 'star' is federated mode; set mode: federated or choose a graph")
        if self.engine.message_dtype != "float32" and (self.mode != "decentralized" or self.model.whole):
            raise ValueError(
                f"engine.message_dtype: {self.engine.message_dtype} messages are for mode: decentralized with "
                "linear heads (no model section); use float32 here"
            )
        if self.engine.head_dtype != "float32" and self.model.whole:
            raise ValueError(
                f"engine.head_dtype: {self.engine.head_dtype} heads are for linear heads (no model section); "
                "use float32 here"
            )
        if self.engine.head_dtype == "float16" and self.training.optimizer == "adam":
            raise ValueError(
                "engine.head_dtype: float16 cannot hold Adam's second moments (squared gradients below 6e-5 lose "
                "their bits or become 0, and the steps grow); use bfloat16 (float32's range) or float32"
            )
        if self.sampling.enabled and self.mode != "federated":
            raise ValueError(
                "sampling: client sampling is for mode: federated (a decentralized peer hears its neighbours)"
            )
        if self.sampling.count is not None and self.sampling.count > self.peers.count:
            raise ValueError(
                f"sampling.count: {self.sampling.count} clients per round but peers.count is {self.peers.count}"
            )
        return self
