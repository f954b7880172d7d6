"""The experiment config: pydantic models, loading from YAML or TOML, ``--set`` overrides.

Every section forbids unknown keys. A component section (dataset, model, partitioner, sampler,
aggregator) is ``{name: ..., <parameter>: ...}`` or just the name; its parameters are validated by the
component's own model when the experiment is built (:func:`flcore.experiment.resolve_components`).
"""

from __future__ import annotations

import copy
import functools
import importlib.resources
import importlib.util
import re
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from flcore.errors import ConfigError
from flcore.params import format_validation_error


def _takes_numbers_only(annotation: Any) -> bool:
    """Whether a field's type has ints or floats in it, and no bool (``int | str``, ``list[int]``)."""
    def parts(a: Any) -> set[Any]:
        return {a}.union(*(parts(arg) for arg in typing.get_args(a)))

    found = parts(annotation)
    return bool(found & {int, float}) and bool not in found


class _Section(BaseModel):
    """A config section: unknown keys, infinities and NaNs are errors, and so is a boolean where a
    number is expected (pydantic would otherwise read ``agents: true`` as 1)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        items = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(v, bool) for v in items) and _takes_numbers_only(cls.model_fields[info.field_name].annotation):
            raise ValueError("expected a number, not true or false")
        return value


class ComponentSpec(BaseModel):
    """A component by name, with its parameters beside the name."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(description="Registered name, or '<distribution>:<name>'.")

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @property
    def params(self) -> dict[str, Any]:
        """The parameters given beside the name."""
        return dict(self.model_extra or {})


class OptimizerConfig(_Section):
    """The local optimizer, rebuilt from these settings for every agent in every round."""

    name: Literal["sgd", "adam", "adamw", "rmsprop", "adagrad"] = Field("sgd", description="torch.optim class.")
    lr: float = Field(0.05, gt=0, description="Learning rate (before the scheduler's factor).")
    momentum: float = Field(0.0, ge=0, lt=1, description="sgd and rmsprop.")
    weight_decay: float = Field(0.0, ge=0, description="L2 penalty.")
    nesterov: bool = Field(False, description="sgd with momentum > 0.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="adam and adamw; each in [0, 1).")

    @field_validator("betas")
    @classmethod
    def _betas_below_one(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in value):
            raise ValueError("each beta must be at least 0 and less than 1, as torch.optim requires")
        return value


class SchedulerConfig(_Section):
    """Learning-rate decay across rounds (federated) or epochs (centralized)."""

    name: Literal["constant", "step", "multistep", "exponential", "cosine"] = Field(
        "constant", description="The lr factor at round (or epoch) t: step gamma^(t // step_size), multistep "
        "gamma^(milestones passed), exponential gamma^t, cosine from 1 down to min_factor.")
    gamma: float = Field(0.1, gt=0, le=1, description="Decay factor of step, multistep and exponential.")
    step_size: int = Field(10, gt=0, description="step: rounds between decays.")
    milestones: list[int] = Field(default_factory=list, description="multistep: the rounds at which lr decays (>= 0).")
    min_factor: float = Field(0.0, ge=0, le=1, description="cosine: the final lr as a fraction of lr")

    @field_validator("milestones")
    @classmethod
    def _milestones_are_rounds(cls, value: list[int]) -> list[int]:
        if any(m < 0 for m in value):
            raise ValueError("milestones are round (or epoch) numbers, at least 0")
        return value


class AugmentConfig(_Section):
    """Image augmentation of training batches (the CIFAR recipe), drawn from each agent's seeded stream."""

    crop_padding: int = Field(0, ge=0, description="Zero-pad each image by this many pixels and crop it back at a "
                              "random offset (torchvision's RandomCrop(size, padding)); 0 for none.")
    horizontal_flip: bool = Field(False, description="Mirror each image left-right with probability 1/2.")


class TrainingConfig(_Section):
    """How a model is trained: locally by each agent, or centrally by ``flcore train``."""

    epochs: int = Field(1, gt=0, description="Local epochs per round (central: epochs in all).")
    max_steps: int | None = Field(None, gt=0, description="Stop local training after this many steps.")
    batch_size: int | None = Field(32, gt=0, description="None trains on the full shard in one batch.")
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    loss: Literal["cross_entropy", "nll"] = Field("cross_entropy", description="nll expects log-probabilities.")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="cross_entropy's label smoothing.")
    grad_clip_norm: float | None = Field(None, gt=0, description="Clip local gradients to this total norm.")
    augment: AugmentConfig = Field(default_factory=AugmentConfig,
                                   description="Augmentation of training batches (never of evaluation batches).")


class FederationConfig(_Section):
    """Agents, rounds, and the federated components."""

    agents: int = Field(10, gt=0, description="Number of registered agents.")
    rounds: int = Field(10, gt=0, description="Rounds of sample, train, aggregate.")
    partitioner: ComponentSpec = Field(default_factory=lambda: ComponentSpec(name="iid"),
                                       description="How the training split is shared among agents.")
    sampler: ComponentSpec = Field(default_factory=lambda: ComponentSpec(name="uniform"),
                                   description="Which agents train each round.")
    aggregator: ComponentSpec = Field(default_factory=lambda: ComponentSpec(name="fedavg"),
                                      description="How updates become the next global model.")
    agent_plugins: list[ComponentSpec] = Field(
        default_factory=list, description="Agent-side plugins, in the order they act on local training; the "
        "aggregator's required ones (fedprox: proximal) come first unless listed here.")
    server_plugins: list[ComponentSpec] = Field(
        default_factory=list, description="Server-side plugins around the aggregator: updates pass through them in "
        "this order before it, the aggregate in reverse order after it.")
    agent_metadata: list[ComponentSpec] = Field(
        default_factory=list, description="Agent metadata components to enable, beyond those the run's components "
        "require (power_of_choice requires participation).")
    backend: ComponentSpec = Field(
        default_factory=lambda: ComponentSpec(name="sequential"),
        description="How a round's agents are trained: sequential (one reused model), vectorized (the round's "
        "agents at once with torch.func), distributed (agents spread over processes: runtime.devices, "
        "runtime.num_nodes), or a plugin's.",
    )
    on_agent_failure: Literal["fail", "skip"] = Field(
        "fail", description="An agent that raises or returns non-finite weights: fail the run, or skip its update."
    )
    stall_rounds: int = Field(
        3, gt=0, description="The run fails (exit code 1) after this many consecutive rounds in which no update was "
        "accepted (every selected agent skipped or dropped).")
    agent_state_memory_mb: float = Field(
        1024.0, gt=0, description="Memory for sparse per-agent state (personal models, control variates); the least "
        "recently used values beyond it wait in files under the run folder (.agent-state-rank-<k>/) until an agent needs them.")
    buffers: Literal["weighted_mean", "global"] = Field(
        "weighted_mean",
        description="Floating buffers (BatchNorm statistics): sample-weighted mean of the agents', "
        "or kept at the global model's values.",
    )
    availability: ComponentSpec = Field(
        default_factory=lambda: ComponentSpec(name="always"),
        description="Which agents are online in a round: always, bernoulli, diurnal, trace (online intervals from "
        "a file), or a plugin's. Samplers choose among the online agents.")
    device_profile: ComponentSpec = Field(
        default_factory=lambda: ComponentSpec(name="instant"),
        description="Per-agent compute speed and bandwidths, which make an agent's round take virtual seconds: "
        "instant (no time passes), fixed, lognormal, trace (speeds from a file), or a plugin's.")
    round_policy: ComponentSpec = Field(
        default_factory=lambda: ComponentSpec(name="synchronous"),
        description="When a round ends on the virtual clock: synchronous (waits for every agent), deadline, "
        "over_selection, stragglers (FedProx's), fedasync, fedbuff, or a plugin's.")


class EvaluationConfig(_Section):
    """When and how the global model is evaluated."""

    every: int = Field(1, gt=0, description="Evaluate on the test split every k rounds and at the end.")
    batch_size: int = Field(1024, gt=0, description="Evaluation batch size.")
    local: bool = Field(False, description="Also evaluate the global model on each sampled agent's shard.")
    holdout: float = Field(0.0, ge=0, lt=1, description="Share of each agent's shard held out for per-agent "
                           "evaluation: stratified by label and seeded; agents train on the rest (0: none).")
    per_agent_every: int | None = Field(None, gt=0, description="Score each agent on its held-out split every k "
                                        "rounds and after the last, with the model it would use (agent-side "
                                        "plugins' personalize); needs holdout > 0. None: never.")
    per_agent_agents: int | None = Field(None, gt=0, description="Score a seeded sample of this many agents per "
                                         "per-agent evaluation (for large populations); None: every agent.")


class RuntimeConfig(_Section):
    """Lightning's accelerator, devices and precision."""

    accelerator: Literal["cpu", "gpu", "cuda", "mps", "auto"] = Field("cpu", description="Lightning accelerator.")
    devices: int | str = Field(1, description="Devices (processes) per machine: a positive number, 'auto', or on GPUs "
                               "-1 (all) or indices such as '0,1'; above 1 needs the distributed backend.")
    num_nodes: int = Field(1, gt=0, description="Machines, for the distributed backend.")
    precision: str = Field("32-true", description="Any Lightning precision: 32-true, 16-mixed, bf16-mixed, ...")
    matmul_precision: Literal["highest", "high", "medium"] | None = Field(
        None, description="torch.set_float32_matmul_precision (TF32 on Ampere and newer GPUs).")

    @field_validator("devices")
    @classmethod
    def _devices_lightning_accepts(cls, value: int | str, info: ValidationInfo) -> int | str:
        on_cpu = info.data.get("accelerator") == "cpu"
        count = device_count(value)
        gpu_only = count == -1 or "," in str(value)  # every GPU, or GPU indices
        if count is None or (on_cpu and gpu_only):
            raise ValueError(
                "expected a positive number of devices or 'auto'" + ("" if on_cpu else ", -1 for every GPU, or GPU "
                "indices such as '0,1'") + (" (accelerator 'cpu' counts processes)" if on_cpu else "")
            )
        return value

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_lightning_accepts(cls, value: Any) -> Any:
        value = str(value) if isinstance(value, int) and not isinstance(value, bool) else value  # 16, 32, 64
        accepted = _lightning_precisions()
        if isinstance(value, str) and accepted and value not in accepted:
            raise ValueError(f"Lightning accepts the precisions {', '.join(accepted)}")
        if isinstance(value, str) and value.startswith("transformer-engine") and not _installed("transformer_engine"):
            raise ValueError("needs the 'transformer_engine' package, which is not installed")
        return value


def device_count(devices: int | str) -> int | None:
    """How many devices ``runtime.devices`` asks for (-1: every GPU, 0: 'auto'), or None if Lightning
    would not accept it."""
    text = str(devices).strip()
    if text == "auto":
        return 0
    if re.fullmatch(r"-?\d+", text):
        return int(text) if int(text) > 0 or int(text) == -1 else None
    if re.fullmatch(r"\d+(\s*,\s*\d+)*\s*,?", text):
        return len([i for i in text.split(",") if i.strip()])
    return None


@functools.cache
def _lightning_precisions() -> tuple[str, ...]:
    """The precision values in Lightning Fabric's signature (empty if it cannot be read)."""
    try:
        from lightning.fabric import Fabric

        hint = typing.get_type_hints(Fabric.__init__)["precision"]
    except Exception:  # another Lightning version: let Lightning itself judge
        return ()

    def flatten(annotation: Any) -> list[str]:
        if typing.get_origin(annotation) is Literal:
            return [str(a) for a in typing.get_args(annotation)]
        return [v for a in typing.get_args(annotation) for v in flatten(a)]

    return tuple(dict.fromkeys(flatten(hint)))


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


class LoggerSpec(ComponentSpec):
    """A Lightning logger by name (csv, tensorboard, mlflow, wandb) with its keyword arguments."""


class LoggingConfig(_Section):
    """Lightning loggers and profiler, the progress bar, and per-agent metrics."""

    loggers: list[LoggerSpec] = Field(default_factory=lambda: [LoggerSpec(name="csv")],
                                      description="Lightning loggers: csv, tensorboard, mlflow, wandb, each with its "
                                      "keyword arguments beside the name.")
    profiler: Literal["simple", "advanced", "pytorch"] | None = Field(
        "simple", description="Lightning profiler timing each phase of a round; null for none.")
    progress: Literal["auto", "bar", "lines", "on", "off"] = Field(
        "auto", description="Progress over rounds: a bar, or a line on stderr at most every 10 s (for batch jobs); "
        "auto: a bar on a terminal, lines elsewhere; on means bar; off: silent.")
    agent_metrics: bool = Field(True, description="Log each agent's local metrics every round.")

    @field_validator("progress", mode="before")
    @classmethod
    def _yaml_on_off(cls, value: Any) -> Any:
        """YAML 1.1 reads a bare ``off``/``on`` as a boolean: take it as meant."""
        return ("on" if value else "off") if isinstance(value, bool) else value

    @field_validator("loggers")
    @classmethod
    def _known_loggers_and_arguments(cls, value: list[LoggerSpec]) -> list[LoggerSpec]:
        from flcore.engine.observers import check_logger

        for index, spec in enumerate(value):
            check_logger(spec.name, spec.params, f"logging.loggers[{index}]")
        return value


class CheckpointConfig(_Section):
    """Checkpoints written atomically after rounds, for ``flcore run --resume``."""

    every: int = Field(1, gt=0, description="Checkpoint every k rounds and after the last.")


class ExperimentConfig(_Section):
    """A whole experiment; without ``federation`` it is centralized training."""

    name: str = Field("experiment", max_length=200, description="Run folder prefix and logger name: one folder "
                      "name of letters, digits, '.', '_' and '-'.")
    seed: int = Field(0, ge=0, description="Every random stream derives from it.")
    dataset: ComponentSpec = Field(description="The dataset component.")
    model: ComponentSpec = Field(description="The model component.")
    federation: FederationConfig | None = Field(default_factory=FederationConfig,
                                                description="null trains centrally (as flcore train does).")
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)

    @field_validator("name")
    @classmethod
    def _one_folder_name(cls, value: str) -> str:
        if not _FOLDER_NAME.fullmatch(value) or value in (".", ".."):
            raise ValueError("the run folder is <out>/<name>-<timestamp>, so name must be one folder name made of "
                             "letters, digits, '.', '_' and '-' (not '.' or '..')")
        return value


_FOLDER_NAME = re.compile(r"[A-Za-z0-9._-]+")

DEFAULT_CONFIG_NAME = "default.yaml"

#: the fields `flcore run --resume DIR --set ...` may change: more rounds, and how the run is watched
RESUMABLE_FIELDS = ("federation.rounds", "logging.progress", "evaluation.every", "checkpoint.every")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Parse a YAML (safe loader) or TOML file into a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        byte = exc.object[exc.start:exc.start + 1]
        raise ConfigError(f"config file '{path}' is not UTF-8 text (byte {exc.start} is {byte!r}); a config is a "
                          "YAML or TOML file.") from None
    except OSError as exc:
        raise ConfigError(f"config file '{path}' could not be read: {exc.strerror}.") from None
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = yaml.safe_load(text)
    except Exception as exc:
        raise ConfigError(f"config file '{path}' could not be parsed: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping at the top, not {type(data).__name__}.")
    return data


def default_config_data() -> dict[str, Any]:
    """The embedded default experiment, which needs no download."""
    text = importlib.resources.files("flcore.configs").joinpath(DEFAULT_CONFIG_NAME).read_text()
    return yaml.safe_load(text)


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides; values are parsed as YAML scalars or lists."""
    result = copy.deepcopy(dict(data))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{item}' must look like 'dotted.key=value'.")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = result
        parts = key.strip().split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if isinstance(child, str):  # a component given by name gains parameters
                child = {"name": child}
            elif not isinstance(child, dict):
                if child is not None:
                    raise ConfigError(
                        f"override '{item}': '{'.'.join(parts[: depth + 1])}' is {child!r}, not a section."
                    )
                child = {}
            node[part] = child
            node = child
        node[parts[-1]] = value
    return result


def validate_config(data: Mapping[str, Any], source: str = "config") -> ExperimentConfig:
    """Validate a mapping as an :class:`ExperimentConfig`; errors name field, value and expectation."""
    try:
        return ExperimentConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "", source)) from None


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Load a config file (or the embedded default when ``path`` is None) and apply overrides."""
    data = default_config_data() if path is None else read_config_file(path)
    source = "default config" if path is None else f"config '{path}'"
    return validate_config(apply_overrides(with_defaults(data), overrides), source)


def with_defaults(data: Mapping[str, Any]) -> dict[str, Any]:
    """The mapping with every default filled in, so that overrides can reach into default sections
    (``--set federation.aggregator.server_lr=0.5`` when the file names no aggregator). A mapping that
    does not validate is returned unchanged: the final validation reports its errors."""
    try:
        return config_to_dict(ExperimentConfig.model_validate(dict(data)))
    except ValidationError:
        return dict(data)


def config_to_dict(config: ExperimentConfig) -> dict[str, Any]:
    """A plain mapping that validates back to the same config (what run directories record)."""
    return config.model_dump(mode="json")
