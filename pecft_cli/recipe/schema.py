"""The recipe: one YAML file that says what to train, on what, in which order.

The task section and the recipe that holds every section (the others are in `sections`).
`pecft_cli.recipe.load` reads a YAML file (with `--set` overrides) into these sections and turns
their errors into one clear paragraph.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import Field, field_validator, model_validator

from pecft_cli.errors import did_you_mean
from pecft_cli.recipe.sections import (
    COUNT_LIMIT,
    MAX_SEED,
    EvaluationSection,
    LoggingSection,
    LoraSection,
    Metric,
    ModelSection,
    OutputSection,
    Section,
    StrategySection,
    TrainingOverride,
    TrainingSection,
    folder_name,
    shorthand,
)
from pecft_cli.recipe.template import template_fields


class PerClass(Section):
    """Seeded sampling by class: at most `train` rows of each class from the train split and
    `eval` from the eval split (None: all of them), classes being the values of the field the
    target names."""

    train: int | None = Field(
        None, gt=0, le=COUNT_LIMIT, description="rows of each class from the train split"
    )
    eval: int | None = Field(
        None, gt=0, le=COUNT_LIMIT, description="rows of each class from the eval split"
    )
    seed: int = Field(0, ge=0, lt=2**32, description="fixes which rows are drawn")


class TaskSection(Section):
    """One task of the stream: its data, how a row becomes a prompt and a target."""

    name: str = Field(description="the task's name: a column of the matrix and a folder name")
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
    metric: Metric | None = Field(
        None, description="how this task is scored; null: evaluation.metric decides"
    )
    per_class: PerClass | None = Field(
        None,
        description="rows per class to sample from each split; a number for both",
        json_schema_extra=shorthand({"type": "integer", "exclusiveMinimum": 0}),
    )
    labels: dict[str, str] | None = Field(
        None,
        description="the answer for each class: a value of the target's field (a ClassLabel's "
        "name) -> the words the target says instead",
    )
    training: TrainingOverride = Field(
        TrainingOverride(), description="any key of the training section, for this task only"
    )

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
        named = template_fields(self.target_template())
        for key in ("per_class", "labels"):
            if getattr(self, key) is not None and (len(named) != 1 or "." in named[0]):
                inside = " and picks inside it" if len(named) == 1 else ""
                raise ValueError(
                    f"task '{self.name}', {key}: it works on the classes of the one field the "
                    f"target names, and the target '{self.target}' names {len(named)}{inside}; "
                    "give a target of one field."
                )
        return self

    def row_fields(self) -> list[str]:
        """The fields of a row this task reads: those its templates name (a dotted placeholder
        reads its first), and the field that holds each row's choices."""
        named = template_fields(self.prompt) + template_fields(self.target_template())
        own = [self.choices] if isinstance(self.choices, str) else []
        return list(dict.fromkeys([name.split(".")[0] for name in named] + own))

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


class Recipe(Section):
    """A whole continual fine-tuning run."""

    name: str = Field(
        description="the run's name: a folder name; output_dir defaults to runs/<name>"
    )
    pecft_version: str | None = Field(
        None, description="the pecft that wrote this recipe (a run folder's recipe.yaml has it)"
    )
    seed: int = Field(0, ge=0, le=MAX_SEED, description="fixes every random generator of the run")
    output_dir: str | None = Field(None, description="run folder; default runs/<name>")
    model: ModelSection = Field(description="the base model")
    lora: LoraSection = Field(LoraSection(), description="the LoRA adapter")
    strategy: StrategySection = Field(StrategySection(), description="the continual strategy")
    training: TrainingSection = Field(
        TrainingSection(), description="optimisation, for every task unless it overrides a key"
    )
    evaluation: EvaluationSection = Field(
        EvaluationSection(), description="how every task is scored after every stage"
    )
    logging: LoggingSection = Field(LoggingSection(), description="experiment trackers")
    output: OutputSection = Field(
        OutputSection(), description="what the run folder keeps of each stage"
    )
    tasks: Annotated[
        list[TaskSection],
        Field(min_length=1, description="the stream, in this order unless `order` names another"),
    ]
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
    def _kept_for_routing(self) -> Recipe:
        if self.output.stage_adapters == "last" and self.strategy.routes_stages:
            raise ValueError(
                "output.stage_adapters: last keeps only the latest stage's adapter, and routing "
                f"{self.strategy.routing} serves each input with the adapter of the stage after "
                "its own task, which `pecft eval` and `pecft generate` read from adapters/; keep "
                "all, or use routing arrow, which reads task_loras/"
            )
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
