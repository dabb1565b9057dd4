"""Scorers: the normalisation and ROUGE-L by hand, and batched scoring against one-at-a-time."""

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from pecft_cli.data.tasks import Example
from pecft_cli.recipe.sections import EvaluationSection
from pecft_cli.scoring.scorer import (
    StopAtText,
    choice_logprobs,
    cut_at_stop,
    generate_answers,
    normalize_answer,
    rank_choices,
    rouge_l,
)


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model: Path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tokenizer.pad_token = tokenizer.eos_token
    return LlamaForCausalLM.from_pretrained(tiny_model).eval(), tokenizer


def example(tokenizer, prompt: str, choices: list[str] | None = None, label: int = 0) -> Example:
    ids = tokenizer(prompt)["input_ids"]
    return Example(
        row=0,
        prompt=prompt,
        target=(choices or [" x"])[label],
        prompt_ids=ids,
        target_ids=[],
        choices=choices,
        choice_ids=[tokenizer(c)["input_ids"] for c in choices] if choices else None,
        label=label,
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The  Euro!", "euro"),
        ("an apple, a pear", "apple pear"),
        ("  FRA\n", "fra"),
        ("theatre", "theatre"),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


def test_rouge_l_by_hand() -> None:
    # LCS of "cat sat on mat" and "cat lay on mat" is "cat on mat": P = R = 3/4
    assert rouge_l("the cat sat on the mat", "a cat lay on a mat") == pytest.approx(0.75)
    # LCS 2 ("b d"), P = 2/2, R = 2/4 -> F1 = 2/3
    assert rouge_l("b d", "e b c d") == pytest.approx(2 / 3)
    assert rouge_l("x y", "a b") == 0.0
    assert rouge_l("Paris.", "paris") == 1.0
    assert rouge_l("", "") == 1.0
    assert rouge_l("", "b") == 0.0


def test_cut_at_stop() -> None:
    assert cut_at_stop(" EUR\nCurrency: yen", ["\n"]) == "EUR"
    assert cut_at_stop("yes. No", [".", "\n"]) == "yes"


def naive_logprob(model, prompt_ids: list[int], choice_ids: list[int]) -> float:
    """One unpadded forward pass over prompt + choice, the plain way."""
    ids = torch.tensor([prompt_ids + choice_ids])
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0].float()
    scores = torch.log_softmax(logits[len(prompt_ids) - 1 : -1], dim=-1)
    return scores[torch.arange(len(choice_ids)), torch.tensor(choice_ids)].sum().item()


def test_cached_choice_scoring_equals_one_pass_per_choice(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    examples = [
        example(tokenizer, "What is the answer?", [" yes", " no", " maybe so", " FRA JPN EUR"]),
        example(tokenizer, "Country: Japan Code:", [" JPN", " France"]),
        example(tokenizer, "Currency: Japanese yen Code: JPY Language:", [" fr", " abc def"]),
    ]
    with torch.inference_mode():
        batched = choice_logprobs(model, examples)
    for ex, sums in zip(examples, batched, strict=True):
        expected = [naive_logprob(model, ex.prompt_ids, ids) for ids in ex.choice_ids]
        assert sums == pytest.approx(expected, abs=1e-4)


def test_rank_choices_does_not_depend_on_batch_size(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    prompts = ["Country: France Code:", "What is the answer?", "Language: French Code:", "a"]
    examples = [
        example(tokenizer, p, [" yes", " no way", " FRA"], i % 3) for i, p in enumerate(prompts)
    ]
    with torch.inference_mode():
        one = rank_choices(model, examples, batch_size=1)
        many = rank_choices(model, examples, batch_size=12)
    assert [r["prediction"] for r in one] == [r["prediction"] for r in many]
    flat = [[value for r in results for value in r["logprobs"]] for results in (one, many)]
    assert flat[0] == pytest.approx(flat[1], abs=1e-3)
    assert all(r["score"] == float(r["correct"]) for r in many)


def test_generation_does_not_depend_on_batch_size(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    prompts = ["Country: France Code:", "What is the answer?", "Language: French Code:", "a b"]
    examples = [example(tokenizer, p) for p in prompts]
    with torch.inference_mode():
        one = generate_answers(model, tokenizer, examples, EvaluationSection(batch_size=1))
        many = generate_answers(model, tokenizer, examples, EvaluationSection(batch_size=4))
    assert [r["prediction"] for r in one] == [r["prediction"] for r in many]
    assert [r["row"] for r in many] == [e.row for e in examples]


def test_each_sequence_stops_once_its_new_text_holds_a_stop_string(model_and_tokenizer) -> None:
    _, tokenizer = model_and_tokenizer
    prompt = tokenizer("Q:", add_special_tokens=False)["input_ids"]
    texts = ("ab\ncd", "abcd", "a.b")
    rows = [prompt + tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [tokenizer.eos_token_id] * (width - len(r)) for r in rows])
    done = StopAtText(tokenizer, ["\n", "."], len(prompt))(ids, torch.zeros(3, 1))
    assert done.tolist() == [True, False, True]


def test_a_stop_string_in_the_prompt_does_not_stop_generation(model_and_tokenizer) -> None:
    _, tokenizer = model_and_tokenizer
    ids = torch.tensor([tokenizer("line one\nline", add_special_tokens=False)["input_ids"]])
    assert StopAtText(tokenizer, ["\n"], ids.shape[1] - 1)(ids, torch.zeros(1, 1)).tolist() == [
        False
    ]
