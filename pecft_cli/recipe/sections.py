"""The recipe's sections for the model, the LoRA, the strategy, training, evaluation and logging.

Typed pydantic sections that reject unknown keys, so a typo fails before any work starts instead
of being silently ignored; every key carries its help, which `pecft schema`, the recipe reference
and `pecft validate --explain` print. The tasks and the whole recipe are in `schema`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator
from pydantic.fields import FieldInfo

COUNT_LIMIT = 2**31 - 1  # sizes and counts torch and the samplers take
MAX_SEED = 2**32 - 1  # numpy's generator takes no larger seed
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def folder_name(value: str) -> str:
    """Recipe and task names become folder names: one short path component, no surprises."""
    if not NAME.match(value):
        raise ValueError(
            "use up to 100 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    return value


def shorthand(alternative: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    """The JSON Schema of a key whose `before` validator also takes a short form: the printed
    schema must accept every recipe the validator does, or an editor would flag a valid one."""

    def widen(schema: dict[str, Any]) -> None:
        branches = schema.pop("anyOf", None) or [{"$ref": schema.pop("$ref")}]
        schema["anyOf"] = [*branches, alternative]

    return widen


class Section(BaseModel):
    """Base for every recipe section: unknown keys are errors, values are checked on assignment,
    and no number is infinite or NaN."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class Quantization(Section):
    """bitsandbytes quantization of the frozen base model (QLoRA when 4bit)."""

    mode: Literal["none", "4bit", "8bit"] = Field(
        "none",
        description="none: the base in model.dtype; 4bit (QLoRA) or 8bit: its linear layers "
        "quantized by bitsandbytes, meant for a CUDA GPU (the CPU runs it slowly, saving nothing)",
    )
    quant_type: Literal["nf4", "fp4"] = Field(
        "nf4", description="4-bit number format: nf4 (normal float) or fp4"
    )
    double_quant: bool = Field(
        True, description="quantize the 4-bit scaling constants too, for a little less memory"
    )
    compute_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "bfloat16", description="dtype the quantized layers compute in"
    )


class ModelSection(Section):
    """Where the base model comes from and how it is loaded."""

    path: str = Field(
        description="local model folder, a .gguf file, a hub id, or package://<package>/<file>"
    )
    gguf_file: str | None = Field(None, description="GGUF file name inside `path`, if any")
    revision: str | None = Field(
        None, description="branch, tag or commit of a hub model; null: its default branch"
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: bfloat16 on a GPU that has it, float32 otherwise"
    )
    quantization: Quantization = Field(
        Quantization(),
        description="bitsandbytes quantization of the frozen base: none, 4bit or 8bit, or a "
        "mapping of mode, quant_type, double_quant and compute_dtype",
        json_schema_extra=shorthand({"type": "string", "enum": ["none", "4bit", "8bit"]}),
    )
    trust_remote_code: bool = Field(
        False, description="run the model's own code; needs --trust-remote-code as well"
    )

    @field_validator("quantization", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        """Accept `quantization: 4bit` as well as the full mapping."""
        return {"mode": value} if isinstance(value, str) else value


class LoraSection(Section):
    """The LoRA adapter that PEFT attaches to the base model."""

    r: int = Field(8, gt=0, le=COUNT_LIMIT, description="rank of each LoRA update B A")
    alpha: float = Field(16.0, gt=0, description="scale: the update B A is multiplied by alpha / r")
    dropout: float = Field(
        0.05, ge=0, lt=1, description="probability of dropping each LoRA input while training"
    )
    target_modules: Union[list[str], Literal["all-linear"]] = Field(  # noqa: UP007
        ["q_proj", "v_proj"],
        description="the linear layers that get a LoRA, by name (q_proj matches every layer's "
        "q_proj), or all-linear: every linear layer but the output head",
    )

    @field_validator("target_modules")
    @classmethod
    def _not_empty(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, list) and not value:
            raise ValueError("name at least one module, or use 'all-linear'")
        return value


class ArrowSection(Section):
    """PEFT's Arrow router (strategy.routing: arrow): how many task LoRAs each token mixes,
    and the temperature of the softmax over their similarities."""

    top_k: int = Field(
        3, gt=0, le=COUNT_LIMIT, description="task LoRAs each token mixes, the most aligned ones"
    )
    temperature: float = Field(
        1.0, gt=0, description="softmax temperature over their similarities: lower, sharper"
    )


class RouterSection(Section):
    """A router's features and rules (strategy.routing: prototype or gaussian)."""

    layer: int | None = Field(
        None,
        ge=-1000,
        le=1000,
        description="the base model's hidden state the router reads: 0 the token embeddings, "
        "k the output of block k, -1 the last layer (negative counts from the end); null: two "
        "thirds of the way up (20 of 30 layers), the best default on every measured stream",
    )
    pooling: Literal["last", "mean", "fields"] = Field(
        "last",
        description="last: the state at the prompt's last token; mean: the mean over the "
        "prompt's tokens; fields: the mean over its filled-in fields, the tokens between the "
        "template's fixed start and end (learnt from the first task's prompts)",
    )
    shrinkage: float = Field(
        0.1,
        ge=0,
        le=1,
        description="gaussian: share of the shared covariance replaced by its mean eigenvalue "
        "times the identity, (1 - s) C + s trace(C)/d I; keeps it invertible with few examples",
    )
    fallback: Literal["none", "latest"] = Field(
        "none",
        description="where an input goes when the router's confidence is below `confident`: "
        "none keeps the router's pick; latest sends it to the latest stage's task (for "
        "stacked strategies the whole stack, for chain the latest snapshot)",
    )
    confident: float = Field(
        0.0,
        ge=0,
        le=1,
        description="the confidence below which `fallback` applies: gaussian, the posterior of "
        "the chosen task; prototype, the margin between the two best cosines",
    )
    holdout: int = Field(
        32,
        ge=0,
        le=COUNT_LIMIT,
        description="training prompts per task left out of a copy of the router, to estimate "
        "its routing accuracy once two tasks have trained (0: no estimate)",
    )
    warn_below: float = Field(
        0.9,
        ge=0,
        le=1,
        description="a routing-accuracy estimate below this is reported as a warning and "
        "recorded in run.json",
    )


ROUTING: dict[str, str] = {
    "none": "no router: each stage's model answers every input",
    "prototype": "serve each input with the LoRA of the task whose prototype (the mean of its "
    "training prompts' normalised features, strategy.router) is nearest to the input's, by "
    "cosine; never from a task id",
    "gaussian": "serve each input with the LoRA of the task a Gaussian classifier with one "
    "shared covariance (per-task means and a pooled, shrunk covariance of the training "
    "prompts' features, strategy.router) finds most probable; never from a task id; the "
    "router to choose: on every measured stream it routes at least as well as prototype",
    "arrow": "PEFT's Arrow, training-free: at every layer each token mixes the strategy.arrow."
    "top_k task LoRAs whose prototypes (the top right singular vector of B A) it is most "
    "aligned with",
}
"""What each `strategy.routing` mode does, for the reference and `pecft validate --explain`."""

ROUTER_SECTIONS = {"prototype": "router", "gaussian": "router", "arrow": "arrow"}
"""The section of `strategy` whose settings each routing mode reads."""


class StrategySection(Section):
    """The continual-learning strategy and its own options (checked by the strategy itself)."""

    name: str = Field(
        "seq",
        description="the continual-learning strategy; each, with its options, is listed under "
        "Strategies in docs/recipe.md",
    )
    options: dict[str, Any] = Field(
        {}, description="the strategy's own options; an unknown one is refused"
    )
    replay: dict[str, Any] | None = Field(
        None,
        description="replay options (those of the replay strategy), to add a replay buffer to "
        "any strategy that takes one",
    )
    routing: Literal["none", "prototype", "gaussian", "arrow"] = Field(
        "none",
        description="how a stage chooses between the task LoRAs (strategies with a LoRA per "
        "task): "
        + "; ".join(f"{mode}: {help_}" for mode, help_ in ROUTING.items() if mode != "none"),
    )
    router: RouterSection = Field(
        RouterSection(), description="the router's features and rules (prototype, gaussian)"
    )
    arrow: ArrowSection = Field(ArrowSection(), description="Arrow's settings (routing: arrow)")

    @property
    def routed(self) -> bool:
        """Whether a router serves each input (the only test of the routing mode's name)."""
        return self.routing != "none"

    @property
    def routes_stages(self) -> bool:
        """Whether the mode chooses between the saved stages' adapters (a router, which reads
        strategy.router, does; Arrow mixes the task LoRAs)."""
        return ROUTER_SECTIONS.get(self.routing) == "router"


class TrainingSection(Section):
    """Optimisation settings; every task may override any of them."""

    epochs: int = Field(1, gt=0, le=COUNT_LIMIT, description="passes over each task's data")
    max_steps: int | None = Field(
        None,
        gt=0,
        le=COUNT_LIMIT,
        description="optimizer steps per stage (a task); overrides epochs",
    )
    batch_size: int = Field(
        8,
        gt=0,
        le=COUNT_LIMIT,
        description="examples per micro-batch, split between the processes of a multi-process run",
    )
    grad_accum: int = Field(
        1,
        gt=0,
        le=COUNT_LIMIT,
        description="micro-batches per optimizer step, each of batch_size examples",
    )
    lr: float = Field(2e-4, gt=0, description="AdamW's peak learning rate, reached after warmup")
    scheduler: Literal["linear", "cosine", "constant"] = Field(
        "linear",
        description="learning rate over each task's steps: linear or cosine decay to 0 after "
        "warmup; constant: lr throughout, warmup_steps ignored",
    )
    warmup_steps: int = Field(
        0, ge=0, le=COUNT_LIMIT, description="optimizer steps rising linearly from 0 to lr"
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW's decoupled weight decay")
    max_grad_norm: float = Field(
        1.0, gt=0, description="gradients are clipped to this L2 norm before each step"
    )
    max_length: int = Field(
        512,
        gt=1,
        le=COUNT_LIMIT,
        description="tokens of a training example, prompt and target; longer ones are skipped "
        "and counted",
    )
    log_every: int = Field(
        5,
        gt=0,
        le=COUNT_LIMIT,
        description="optimizer steps between lines of logs/train.jsonl (step 1 is always logged)",
    )
    checkpoint_every: int = Field(
        50,
        ge=0,
        le=COUNT_LIMIT,
        description="save resumable state every N optimizer steps (0: at task ends)",
    )
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass: less memory, more time"
    )


def partial_override(section: type[Section], name: str) -> type[Section]:
    """A schema with every key of `section`, each optional and checked as there: what a task
    may override. Built from the section, so the two never drift apart."""
    keys: dict[str, Any] = {
        key: (info.annotation | None, FieldInfo.merge_field_infos(info, default=None))
        for key, info in section.model_fields.items()
    }
    doc = f"A task's partial override of the {section.__name__}."
    return create_model(name, __base__=Section, __doc__=doc, **keys)


TrainingOverride = partial_override(TrainingSection, "TrainingOverride")


Metric = Literal["exact_match", "choice", "rouge_l"]


class EvaluationSection(Section):
    """How every task is scored after every stage."""

    metric: Literal["auto", "exact_match", "choice", "rouge_l"] = Field(
        "auto", description="auto: choice for tasks with choices, exact_match otherwise"
    )
    batch_size: int = Field(32, gt=0, le=COUNT_LIMIT, description="eval examples per batch")
    limit: int | None = Field(
        None, gt=0, le=COUNT_LIMIT, description="score at most this many eval examples per task"
    )
    max_new_tokens: int = Field(
        16, gt=0, le=COUNT_LIMIT, description="most tokens generated for an answer"
    )
    stop: list[str] = Field(["\n"], description="generation ends at the first of these strings")
    cells: Literal["all", "sparse"] = Field(
        "all",
        description="sparse: after each stage score only its own tasks and the next stage's, "
        "and every task after the last stage (and every `full_every`-th)",
    )
    harness: list[str] = Field(
        default_factory=list,
        description="lm-evaluation-harness tasks scored at every stage: names or task YAML files",
    )
    harness_limit: int | None = Field(
        None, gt=0, le=COUNT_LIMIT, description="score at most this many documents per harness task"
    )
    full_every: int = Field(
        0, ge=0, le=COUNT_LIMIT, description="with cells: sparse, every k-th stage's whole row"
    )
    fold_adapters: bool = Field(
        True,
        description="score with float LoRA layers folded into a copy of their weights: faster, "
        "and costs the adapted weights' memory once more while scoring",
    )

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: list[str]) -> list[str]:
        if any(not text for text in value):
            raise ValueError("a stop string cannot be empty")
        return value


class OutputSection(Section):
    """What the run folder keeps of each stage."""

    stage_adapters: Literal["all", "last"] = Field(
        "all",
        description="all: adapters/ keeps the model after every stage; last: only after the "
        "latest stage, each earlier one deleted once the next is written. Stacked strategies "
        "(inclora, olora, inflora) write a rank r*k adapter at stage k, so with all, adapters/ "
        "grows with the square of the task count; task_loras/ keeps every task's own LoRA "
        "either way. `pecft eval` scores the stages kept; routing: gaussian or prototype needs all",
    )


Tracker = Literal[
    "tensorboard", "wandb", "mlflow", "trackio", "comet_ml", "aim", "clearml", "dvclive", "swanlab"
]


class LoggingSection(Section):
    """Where a run's curves go besides logs/train.jsonl: Accelerate's experiment trackers."""

    report_to: list[Tracker] = Field(
        default_factory=list, description="trackers that log the steps, rows and metrics"
    )
