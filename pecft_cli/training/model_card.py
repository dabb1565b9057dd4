"""Model cards: every adapter folder's README.md, with the metadata block the Hugging Face Hub
reads, so that `huggingface-cli upload` publishes an adapter folder as it is and its page says
what the adapter is, how it was trained and what it scores."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from pecft_cli.recipe.schema import Recipe
from pecft_cli.runfolder.atomic import write_text
from pecft_cli.strategies.base import Stage
from pecft_cli.training.context import RunContext

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class CardFacts:
    """What a card says: the run's recipe and state, the stage, and the matrix row after it."""

    recipe: Recipe
    strategy: str
    stage: int
    stages: list[str]
    trained: list[str]
    scores: list[float | None]
    metrics: list[str]
    routed: bool
    versions: dict[str, str]


def hub_model(path: str) -> str | None:
    """The base model as a Hub id, when the recipe names one (not a local path or a file)."""
    return path if HUB_ID.match(path) and not Path(path).expanduser().exists() else None


def card_text(facts: CardFacts) -> str:
    """The README.md of the adapter after stage `facts.stage`."""
    recipe, lora = facts.recipe, facts.recipe.lora
    metadata: dict[str, object] = {}
    base = hub_model(recipe.model.path)
    if base is not None:
        metadata["base_model"] = base
    metadata.update(
        library_name="peft",
        pipeline_tag="text-generation",
        tags=["pecft", "lora", "continual-learning", facts.strategy],
    )
    stage = facts.stages[facts.stage]
    lines = [
        "---",
        yaml.safe_dump(metadata, sort_keys=False).strip(),
        "---",
        "",
        f"# {recipe.name}: the adapter after stage {facts.stage + 1} of {len(facts.stages)} "
        f"({stage})",
        "",
        f"A LoRA adapter for `{recipe.model.path}`, trained with pecft's `{facts.strategy}` "
        f"strategy on the tasks {', '.join(facts.trained)} in that order (seed {recipe.seed}; "
        f"LoRA r {lora.r}, alpha {lora.alpha:g}, on {targets(lora.target_modules)}).",
        "",
        *score_lines(facts),
        "",
        "## Use",
        "",
        "```python",
        "from peft import AutoPeftModelForCausalLM",
        "",
        'model = AutoPeftModelForCausalLM.from_pretrained("path/to/this/folder")',
        "```",
        "",
        'or `pecft generate path/to/this/folder "a prompt"`; the base model is the one '
        "`adapter_config.json` names.",
        "",
        "## Versions",
        "",
        ", ".join(f"{name} {version}" for name, version in facts.versions.items()),
        "",
    ]
    return "\n".join(lines)


def score_lines(facts: CardFacts) -> list[str]:
    """The matrix row after this stage as a table: every task of the stream, trained or not."""
    served = (
        "each input served by its own task's LoRA through pecft's router (in the run folder); "
        "this folder alone holds the stage's adapter, unrouted"
        if facts.routed
        else "this adapter as it is"
    )
    lines = [
        "## Scores after this stage",
        "",
        f"Each task's evaluation set, {served}:",
        "",
        "| task | trained | metric | score |",
        "| --- | --- | --- | --- |",
    ]
    for task, score, metric in zip(facts.recipe.tasks, facts.scores, facts.metrics, strict=True):
        shown = "not scored" if score is None else f"{score * 100:.1f}%"
        trained = "yes" if task.name in facts.trained else "not yet"
        lines.append(f"| {task.name} | {trained} | {metric} | {shown} |")
    return lines


def targets(modules: list[str] | str) -> str:
    return modules if isinstance(modules, str) else ", ".join(modules)


def write_card(
    ctx: RunContext, stages: list[Stage], stage: Stage, scores: list[float | None]
) -> None:
    """The stage's adapter folder gets its model card, with the row just scored."""
    if not ctx.main:
        return
    facts = CardFacts(
        recipe=ctx.recipe,
        strategy=ctx.state.strategy,
        stage=stage.index,
        stages=[s.name for s in stages],
        trained=list(ctx.state.tasks_done),
        scores=scores,
        metrics=[ctx.recipe.task_metric(task) for task in ctx.recipe.tasks],
        routed=ctx.recipe.strategy.routed,
        versions=ctx.state.versions,
    )
    write_text(ctx.folder.card(stage.index, stage.name), card_text(facts))
