"""The recipe: one YAML file that says what to train, on what, in which order.

Typed pydantic sections that reject unknown keys, so a typo fails before any work starts instead
of being silently ignored. `pecft_cli.recipe.load` reads a YAML file (with `--set` overrides)
into these sections and turns their errors into one clear paragraph.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator
from pydantic.fields import FieldInfo

from pecft_cli.errors import did_you_mean
from pecft_cli.recipe.template import template_fields

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


class Section(BaseModel):
    """Base for every recipe section: unknown keys are errors, values are checked on assignment,
    and no number is infinite or NaN."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class Quantization(Section):
    """bitsandbytes quantization of the frozen base model (QLoRA when 4bit)."""

    mode: Literal["none", "4bit", "8bit"] = "none"
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"


class ModelSection(Section):
    """Where the base model comes from and how it is loaded."""

    path: str = Field(
        description="local model folder, a .gguf file, a hub id, or package://<package>/<file>"
    )
    gguf_file: str | None = Field(None, description="GGUF file name inside `path`, if any")
    revision: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: bfloat16 on a GPU that has it, float32 otherwise"
    )
    quantization: Quantization = Quantization()
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

    r: int = Field(8, gt=0, le=COUNT_LIMIT)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: Union[list[str], Literal["all-linear"]] = ["q_proj", "v_proj"]  # noqa: UP007

    @field_validator("target_modules")
    @classmethod
    def _not_empty(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, list) and not value:
            raise ValueError("name at least one module, or use 'all-linear'")
        return value


class ArrowSection(Section):
    """PEFT's Arrow router (strategy.routing: arrow): how many task LoRAs each token mixes,
    and the temperature of the softmax over their similarities."""

    top_k: int = Field(3, gt=0, le=COUNT_LIMIT)
    temperature: float = Field(1.0, gt=0)


class StrategySection(Section):
    """The continual-learning strategy and its own options (checked by the strategy itself)."""

    name: str = "seq"
    options: dict[str, Any] = {}
    replay: dict[str, Any] | None = Field(
        None, description="replay options, to add a replay buffer to any strategy that takes one"
    )
    routing: Literal["none", "prototype", "arrow"] = Field(
        "none",
        description="prototype: serve each input with the LoRA of the task its prompt is nearest "
        "to; arrow: PEFT's Arrow mixes the task LoRAs token by token (strategies with a LoRA per "
        "task)",
    )
    arrow: ArrowSection = ArrowSection()

    @property
    def routed(self) -> bool:
        """Whether a router serves each input (the only test of the routing mode's name)."""
        return self.routing != "none"


class TrainingSection(Section):
    """Optimisation settings; every task may override any of them."""

    epochs: int = Field(1, gt=0, le=COUNT_LIMIT)
    max_steps: int | None = Field(
        None, gt=0, le=COUNT_LIMIT, description="optimizer steps; overrides epochs"
    )
    batch_size: int = Field(8, gt=0, le=COUNT_LIMIT)
    grad_accum: int = Field(1, gt=0, le=COUNT_LIMIT)
    lr: float = Field(2e-4, gt=0)
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    warmup_steps: int = Field(0, ge=0, le=COUNT_LIMIT)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    max_length: int = Field(512, gt=1, le=COUNT_LIMIT)
    log_every: int = Field(5, gt=0, le=COUNT_LIMIT)
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
    batch_size: int = Field(32, gt=0, le=COUNT_LIMIT)
    limit: int | None = Field(
        None, gt=0, le=COUNT_LIMIT, description="score at most this many eval examples"
    )
    max_new_tokens: int = Field(16, gt=0, le=COUNT_LIMIT)
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


class PerClass(Section):
    """Seeded sampling by class: at most `train` rows of each class from the train split and
    `eval` from the eval split (None: all of them), classes being the values of the field the
    target names."""

    train: int | None = Field(None, gt=0, le=COUNT_LIMIT)
    eval: int | None = Field(None, gt=0, le=COUNT_LIMIT)
    seed: int = Field(0, ge=0, lt=2**32)


class TaskSection(Section):
    """One task of the stream: its data, how a row becomes a prompt and a target."""

    name: str
    source: str | None = Field(
        None,
        description="hub dataset id, save_to_disk folder or data file; train/eval are then splits",
    )
    config: str | None = Field(None, description="dataset configuration of a hub source")
    train: str = Field(description="a data file or folder, or a split name of `source`")
    eval: str = Field(description="a data file or folder, or a split name of `source`")
    prompt: str = Field(description="template with {field} placeholders")
    target: str = Field(description="template with {field} placeholders, or a bare field name")
    chat: bool = Field(False, description="wrap the prompt in the tokenizer's chat template")
    system: str | None = Field(None, description="system message when chat is true")
    choices: Union[list[str], str, None] = Field(  # noqa: UP007
        None, description="answer options, or the name of a field holding each row's options"
    )
    metric: Metric | None = None
    per_class: PerClass | None = Field(
        None, description="rows per class to sample from each split; a number for both"
    )
    labels: dict[str, str] | None = Field(
        None,
        description="the answer for each class: a value of the target's field (a ClassLabel's "
        "name) -> the words the target says instead",
    )
    training: TrainingOverride = TrainingOverride()

    @field_validator("per_class", mode="before")
    @classmethod
    def _per_class_shorthand(cls, value: Any) -> Any:
        """Accept `per_class: 500` as well as the full mapping."""
        return {"train": value, "eval": value} if isinstance(value, int) else value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return folder_name(value)

    @model_validator(mode="after")
    def _templates(self) -> TaskSection:
        for key, template in (("prompt", self.prompt), ("target", self.target_template())):
            try:
                template_fields(template)
            except ValueError as exc:
                raise ValueError(f"task '{self.name}', {key} template: {exc}") from None
        named = len(template_fields(self.target_template()))
        for key in ("per_class", "labels"):
            if getattr(self, key) is not None and named != 1:
                raise ValueError(
                    f"task '{self.name}', {key}: it works on the classes of the one field the "
                    f"target names, and the target '{self.target}' names {named}; give a target "
                    "of one field."
                )
        return self

    def class_field(self) -> str:
        """The field whose values are the classes of `per_class`: the one the target names."""
        return template_fields(self.target_template())[0]

    @field_validator("choices")
    @classmethod
    def _choices(cls, value: list[str] | str | None) -> list[str] | str | None:
        if isinstance(value, list) and len(value) < 2:
            raise ValueError("give at least two choices")
        return value

    def target_template(self) -> str:
        """A bare field name means the field's value."""
        return self.target if "{" in self.target else "{" + self.target + "}"


Tracker = Literal[
    "tensorboard", "wandb", "mlflow", "trackio", "comet_ml", "aim", "clearml", "dvclive", "swanlab"
]


class LoggingSection(Section):
    """Where a run's curves go besides logs/train.jsonl: Accelerate's experiment trackers."""

    report_to: list[Tracker] = Field(
        default_factory=list, description="trackers that log the steps, rows and metrics"
    )


class Recipe(Section):
    """A whole continual fine-tuning run."""

    name: str
    pecft_version: str | None = Field(
        None, description="the pecft that wrote this recipe (a run folder's recipe.yaml has it)"
    )
    seed: int = Field(0, ge=0, le=MAX_SEED, description="fixes every random generator of the run")
    output_dir: str | None = Field(None, description="run folder; default runs/<name>")
    model: ModelSection
    lora: LoraSection = LoraSection()
    strategy: StrategySection = StrategySection()
    training: TrainingSection = TrainingSection()
    evaluation: EvaluationSection = EvaluationSection()
    logging: LoggingSection = LoggingSection()
    tasks: Annotated[list[TaskSection], Field(min_length=1)]
    orders: dict[str, list[str]] = Field(
        default_factory=dict, description="named task orders, each every task name once"
    )
    order: str | None = Field(None, description="train the tasks in this named order")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return folder_name(value)

    @model_validator(mode="after")
    def _unique_tasks(self) -> Recipe:
        seen: set[str] = set()
        for task in self.tasks:
            if task.name in seen:
                raise ValueError(f"task name '{task.name}' appears twice; task names must differ")
            seen.add(task.name)
        return self

    @model_validator(mode="after")
    def _ordered(self) -> Recipe:
        """With `order`, the tasks in that order: every stage, row and column follows it."""
        names = [task.name for task in self.tasks]
        for key, listed in self.orders.items():
            unknown = [name for name in listed if name not in names]
            if unknown or sorted(listed) != sorted(names):
                wrong = f"'{unknown[0]}' is not a task" if unknown else "it does not list"
                raise ValueError(
                    f"orders.{key}: {wrong} every task exactly once; give each of "
                    f"{', '.join(names)} once"
                )
        if self.order is None:
            return self
        if self.order not in self.orders:
            hint = did_you_mean(self.order, list(self.orders)) or ";"
            known = ", ".join(self.orders) or "none (add an `orders` mapping)"
            raise ValueError(f"order: '{self.order}' is not a named order{hint} orders: {known}")
        by_name = {task.name: task for task in self.tasks}
        # set without validate_assignment, which would run this validator again
        self.__dict__["tasks"] = [by_name[name] for name in self.orders[self.order]]
        return self

    def task_training(self, task: TaskSection) -> TrainingSection:
        """The training section with the task's overrides applied."""
        changes = task.training.model_dump(exclude_none=True)
        return self.training.model_copy(update=changes)

    def stage_training(self, tasks: list[TaskSection]) -> TrainingSection:
        """A stage of one task follows that task's overrides; a joint stage the shared section."""
        return self.task_training(tasks[0]) if len(tasks) == 1 else self.training

    def task_metric(self, task: TaskSection) -> Metric:
        if task.metric:
            return task.metric
        if self.evaluation.metric != "auto":
            return self.evaluation.metric
        return "choice" if task.choices is not None else "exact_match"


def output_dir(recipe: Recipe) -> Path:
    """The run folder: `output_dir` relative to the working directory, or runs/<name>."""
    return Path(recipe.output_dir or Path("runs") / recipe.name).expanduser().resolve()
