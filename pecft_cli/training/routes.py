"""What the routing mode learns as a run trains, and its warning when it cannot tell the
tasks apart (`strategy.router.warn_below`)."""

from __future__ import annotations

from pecft_cli.parallel.distributed import share_of
from pecft_cli.strategies.base import Stage
from pecft_cli.training.context import RunContext


def learn_routes(ctx: RunContext, stage: Stage) -> None:
    """What the routing mode learns of the stage's tasks from their training prompts; then
    its estimate of its own routing accuracy, recorded and, when low, warned about."""
    for i in stage.tasks:
        prompts = [example.prompt_ids for example in ctx.tasks[i].train]
        ctx.routing.learn(ctx.model, ctx.names[i], prompts, share_of(ctx.accelerator))
    estimate = ctx.routing.estimate()
    if estimate is None:
        return
    ctx.state.routing_estimate[stage.name] = round(estimate, 6)
    bar = ctx.recipe.strategy.router.warn_below
    if estimate < bar:
        ctx.on_event("warning", {"message": routing_warning(stage.name, estimate, bar)})


def routing_warning(stage: str, estimate: float, bar: float) -> str:
    return (
        f"after {stage} the router sends only {estimate:.0%} of held-out training prompts to "
        f"their own task (below strategy.router.warn_below {bar:.0%}): these tasks' inputs "
        "look alike to it, so routed answers will often come from another task's LoRA. Try "
        "routing: gaussian, another strategy.router.layer or pooling, or prompts that differ."
    )
