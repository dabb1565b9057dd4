"""A merge request: its inputs and options, checked before any model loads (the method and its
numbers, the adapters: one rank where the method needs it, LoRA only, one base model; the output
folder)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from peft import PeftConfig

from pecft_cli.errors import PecftError, did_you_mean, short
from pecft_cli.model.artifacts import MERGE_FILE
from pecft_cli.recipe.sections import MAX_SEED
from pecft_cli.runfolder.saved import SavedRun


@dataclass
class MergeInput:
    """One adapter to merge: a display name, its folder and its PEFT config."""

    name: str
    path: Path
    config: PeftConfig

    @property
    def rank(self) -> int:
        return max([self.config.r, *self.config.rank_pattern.values()])


@dataclass
class MergeOptions:
    """How to merge: the method and its weights, density, rank and seed; which of a run's
    tasks; into an adapter or (`into_base`) a whole model; and whether to score the result."""

    method: str = "cat"
    tasks: list[str] | None = None
    weights: list[float] | None = None
    density: float | None = None
    rank: int | None = None
    seed: int = 0
    into_base: bool = False
    base: str | None = None
    force: bool = False
    evaluate: bool = False


METHODS = (
    "cat",
    "svd",
    "linear",
    "ties",
    "ties_svd",
    "dare_linear",
    "dare_ties",
    "dare_linear_svd",
    "dare_ties_svd",
    "magnitude_prune",
    "magnitude_prune_svd",
)


ONE_RANK = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")


def uses_density(method: str) -> bool:
    return method.startswith(("ties", "dare", "magnitude_prune"))


def uses_rank(method: str) -> bool:
    return method.endswith("svd")


def check_options(
    method: str, count: int, weights: list[float] | None, density: float | None, rank: int | None
) -> None:
    """Method, weights, density and rank, checked before anything is loaded."""
    if method not in METHODS:
        raise PecftError(
            f"--method {method}: not a merge method{did_you_mean(method, list(METHODS)) or '.'} "
            f"Valid: {', '.join(METHODS)}."
        )
    if weights is not None and not all(math.isfinite(w) for w in weights):
        raise PecftError(f"--weights {short(weights)}: every weight must be a finite number.")
    if weights is not None and len(weights) != count:
        raise PecftError(
            f"--weights: {len(weights)} weights given for {count} adapters; give one weight per "
            "adapter, in order, comma-separated."
        )
    if density is not None and not uses_density(method):
        raise PecftError(
            f"--density: the method {method} does not prune; density applies to ties, dare_* and "
            "magnitude_prune* methods."
        )
    if uses_density(method) and density is None:
        raise PecftError(
            f"--density: the method {method} keeps only a fraction of each adapter's weights; "
            "give that fraction with --density (a number in (0, 1], e.g. 0.5)."
        )
    if density is not None and not 0 < density <= 1:
        raise PecftError(f"--density {density}: give the fraction of weights kept, in (0, 1].")
    if rank is not None and not uses_rank(method):
        raise PecftError(
            f"--rank: the method {method} sets the rank itself (cat: the sum of the ranks; "
            "linear, ties, dare_*, magnitude_prune: the adapters' common rank); --rank applies "
            "to svd methods."
        )
    if rank is not None and rank < 1:
        raise PecftError(f"--rank {rank}: give a positive rank.")


def check_adapters(inputs: list[MergeInput], method: str, combining: bool) -> None:
    """Refuse adapters that PEFT would merge silently wrong or not at all."""
    for item in inputs:
        config = item.config
        if config.peft_type != "LORA":
            raise PecftError(
                f"{item.path}: a {config.peft_type} adapter; merge-adapters merges LoRA "
                "adapters only."
            )
        if combining and getattr(config, "use_dora", False):
            raise PecftError(
                f"{item.path}: a DoRA adapter; PEFT's combinations ignore DoRA's magnitude "
                "vectors, so the merge would be wrong. Fold it into the base alone with "
                "--into-base."
            )
        if combining and getattr(config, "target_parameters", None):
            raise PecftError(
                f"{item.path}: the adapter targets parameters (target_parameters); PEFT cannot "
                "combine such adapters."
            )
    bases = {item.config.base_model_name_or_path for item in inputs}
    if len(bases) > 1:
        listed = "; ".join(f"{i.name}: {i.config.base_model_name_or_path}" for i in inputs)
        raise PecftError(
            f"the adapters were trained on different base models ({listed}); merge only "
            "adapters of one base model."
        )
    ranks = {item.rank for item in inputs}
    if combining and method in ONE_RANK and len(ranks) > 1:
        listed = ", ".join(f"{i.name} r={i.rank}" for i in inputs)
        raise PecftError(
            f"--method {method} combines A and B matrices of one common rank, but the adapters "
            f"have different ranks ({listed}); use cat (exact) or svd (with --rank)."
        )


def check_out(out: Path, force: bool) -> None:
    """Refuse to replace anything but an earlier merge, and that only with --force."""
    if not out.exists():
        return
    earlier = out.is_dir() and (out / MERGE_FILE).is_file()
    if not force or not earlier:
        hint = (
            "pass --force to replace it"
            if earlier
            else "it is not an earlier merge, so pecft will not replace it"
        )
        raise PecftError(f"--out {out}: already exists; {hint}, or choose another --out.")


def check_request(
    inputs: list[MergeInput], run: SavedRun | None, out: Path, options: MergeOptions
) -> None:
    """Everything about the request that can be refused before a model is loaded."""
    combining = len(inputs) > 1
    if not combining and not options.into_base:
        raise PecftError(
            f"only one adapter ({inputs[0].path}); combining needs two or more. To fold one "
            "adapter into the base weights, add --into-base."
        )
    check_options(options.method, len(inputs), options.weights, options.density, options.rank)
    if not 0 <= options.seed <= MAX_SEED:
        raise PecftError(f"--seed {options.seed}: give a seed from 0 to {MAX_SEED}.")
    check_adapters(inputs, options.method, combining)
    if options.rank is not None and options.rank > sum(item.rank for item in inputs):
        raise PecftError(
            f"--rank {options.rank}: these adapters add up to an update of rank at most "
            f"{sum(item.rank for item in inputs)}; a higher rank adds only zeros."
        )
    check_out(out, options.force)
    if options.evaluate and run is None:
        raise PecftError(
            "--eval scores the result on a run's tasks, but these adapters do not come from a "
            "pecft run folder; leave out --eval, or merge from the run folder."
        )
