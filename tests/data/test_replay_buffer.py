"""The replay buffer: what it keeps of each task, how much it mixes in, that a seed fixes both;
and the strategy section checks that decide whether a run gets one."""

from pathlib import Path

import pytest

from pecft_cli.data.replay import ReplayBuffer
from pecft_cli.data.tasks import Example
from pecft_cli.errors import PecftError
from pecft_cli.recipe.sections import LoraSection, StrategySection
from pecft_cli.recipe.strategies import check_strategy
from pecft_cli.strategies import build_strategy

TASKS = ["a", "b", "c"]


def examples(task: str, count: int) -> list[Example]:
    return [
        Example(row=i, prompt=f"{task}{i}", target="x", prompt_ids=[1], target_ids=[2])
        for i in range(1, count + 1)
    ]


def replay(seed: int = 0, **options) -> ReplayBuffer:
    section = StrategySection(name="replay", options=options)
    _, buffer = build_strategy(section, LoraSection(), TASKS, seed)
    assert isinstance(buffer, ReplayBuffer)
    return buffer


def stream(buffer: ReplayBuffer, sizes=(20, 10, 30)) -> list[list[Example]]:
    """Mix and remember over three tasks, as the task loop does; return what each trained on."""
    mixes = []
    for index, (task, size) in enumerate(zip(TASKS, sizes, strict=True)):
        own = examples(task, size)
        mixes.append(buffer.mix(own))
        buffer.remember(index, own)
    return mixes


def kept(buffer: ReplayBuffer) -> list[str]:
    return [example.prompt for _, example in buffer.kept]


def test_balanced_per_task_keeps_the_same_count_of_every_task() -> None:
    strategy = replay(per_task=4)
    mixes = stream(strategy)
    tasks = [TASKS[task] for task, _ in strategy.kept]
    assert tasks == ["a"] * 4 + ["b"] * 4 + ["c"] * 4
    assert len(mixes[0]) == 20 and len(mixes[1]) == 10 + 4 and len(mixes[2]) == 30 + 8
    assert all(example.prompt.startswith("a") for example in mixes[1][10:])


def test_fraction_keeps_a_share_of_each_task() -> None:
    strategy = replay(fraction=0.5)
    stream(strategy)
    counts = {t: sum(p.startswith(t) for p in kept(strategy)) for t in TASKS}
    assert counts == {"a": 10, "b": 5, "c": 15}


def test_reservoir_holds_its_size_across_the_stream() -> None:
    strategy = replay(selection="reservoir", size=12)
    stream(strategy)
    assert len(strategy.kept) == 12
    assert len({t for t, _ in strategy.kept}) >= 2


def test_ratio_sets_the_replayed_share_of_the_mix() -> None:
    strategy = replay(per_task=2, ratio=0.5)
    mixes = stream(strategy)
    # 10 own examples and a buffer of 2: ratio 0.5 wants 10 replayed, drawn with replacement
    assert len(mixes[1]) == 20
    assert sum(example.prompt.startswith("a") for example in mixes[1]) == 10


def test_the_seed_fixes_the_buffer() -> None:
    first, second, other = (
        replay(seed=1, per_task=3),
        replay(seed=1, per_task=3),
        replay(seed=2, per_task=3),
    )
    for strategy in (first, second, other):
        stream(strategy)
    assert kept(first) == kept(second)
    assert kept(first) != kept(other)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"name": "replay", "options": {"fraction": 1.5}}, "strategy.options.fraction"),
        ({"name": "replay", "options": {"fraction": 0}}, "strategy.options.fraction"),
        ({"name": "replay", "options": {"per_task": 2, "fraction": 0.1}}, "exactly one of"),
        ({"name": "replay", "options": {"per_tsk": 2}}, "did you mean 'per_task'?"),
        ({"name": "olora", "replay": {"size": 5}}, "reservoir"),
        ({"name": "olora", "options": {"lambda1": {"d": 1.0}}}, "'d' is not a task"),
        ({"name": "olra"}, "did you mean 'olora'?"),
    ],
)
def test_bad_strategy_sections_are_refused(section: dict, message: str) -> None:
    with pytest.raises(PecftError, match=message.replace("?", r"\?").replace("(", r"\(")):
        check_strategy(StrategySection(**section), TASKS, "none")


def test_replay_combines_with_olora(tiny_model: Path) -> None:
    from transformers import AutoModelForCausalLM

    section = StrategySection(name="olora", replay={"per_task": 2})
    strategy, buffer = build_strategy(section, LoraSection(r=2, alpha=4), TASKS, 0)
    assert buffer is not None
    stages = strategy.stages()
    model = strategy.attach(AutoModelForCausalLM.from_pretrained(tiny_model))
    strategy.before_stage(model, stages[0], [])
    own = examples("a", 5)
    mix = buffer.mix(own)
    strategy.after_stage(model, stages[0], mix)
    buffer.remember(0, own)
    strategy.before_stage(model, stages[1], [])
    assert len(buffer.mix(examples("b", 5))) == 7
    assert list(model.base_model.active_adapters) == ["task02"]  # task01 folded into the base
    assert len(strategy.folded) == 1
