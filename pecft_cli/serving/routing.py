"""How a stage answers: the one place that turns a recipe's `strategy.routing` into a mode.

Four modes, one interface (`pecft_cli.serving.answering.Routing`): `none` (the stage's model
as it stands: every strategy, and every base row), `prototype` and `gaussian` (each input goes
to the adapter of the task a router picks from its features, `pecft_cli.serving.routed`) and
`arrow` (PEFT's Arrow mixes the task LoRAs token by token, `pecft_cli.serving.arrow`).
`routing_for` reads the recipe's mode and is the only code that does.
"""

from __future__ import annotations

from collections.abc import Callable

from pecft_cli.recipe.sections import StrategySection
from pecft_cli.runfolder.saved import SavedRun
from pecft_cli.scoring.scorer import TaskScore
from pecft_cli.serving.answering import OwnAdapter, Routing
from pecft_cli.serving.arrow import ArrowRouting
from pecft_cli.serving.features import Features
from pecft_cli.serving.routed import RouterRouting
from pecft_cli.serving.router import GaussianRouter, PrototypeRouter, saved_router


def routing_for(section: StrategySection, seed: int, pad_id: int) -> Routing:
    """A new run's routing mode, from its recipe; a router starts empty."""
    spec = Features(section.router.layer, section.router.pooling)

    def routed(router: PrototypeRouter | GaussianRouter) -> Callable[[], Routing]:
        return lambda: RouterRouting(router, pad_id, section.router, seed)

    modes: dict[str, Callable[[], Routing]] = {
        "none": OwnAdapter,
        "prototype": routed(PrototypeRouter(spec)),
        "gaussian": routed(GaussianRouter(spec, section.router.shrinkage)),
        "arrow": lambda: ArrowRouting(section.arrow, seed),
    }
    return modes[section.routing]()


def saved_routing(saved: SavedRun, pad_id: int) -> Routing:
    """A saved run's routing mode, with the router it saved (checked against its adapters)."""
    recipe = saved.recipe
    routing = routing_for(recipe.strategy, recipe.seed, pad_id)
    if isinstance(routing, RouterRouting):
        routing.router = saved_router(saved)
    return routing


def routed_counts(task: str, result: TaskScore, known: list[str]) -> dict[str, int]:
    """Where a task's routed predictions went: routed-to task -> count; empty while the router
    does not know the task yet (it cannot route it right) or the mode routes nothing."""
    if task not in known:
        return {}
    counts: dict[str, int] = {}
    for prediction in result.predictions:
        if "routed_to" in prediction:
            counts[prediction["routed_to"]] = counts.get(prediction["routed_to"], 0) + 1
    return counts
