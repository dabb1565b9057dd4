"""Batched prompts and greedy decoding against plain one-prompt-at-a-time passes."""

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from pecft_cli.scoring.decoding import greedy_decode, prefill, shared_prefix


@pytest.fixture(scope="module")
def model_and_prompts(tiny_model: Path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = LlamaForCausalLM.from_pretrained(tiny_model).eval()
    texts = ["Country: France Code:", "Country: Japan", "Country: Peru Capital:", "Country: ab"]
    return model, [tokenizer(t)["input_ids"] for t in texts]


def alone(model, prompt: list[int], steps: int) -> list[int]:
    """Greedy continuation of one unpadded prompt by transformers' generate."""
    output = model.generate(
        input_ids=torch.tensor([prompt]), max_new_tokens=steps, do_sample=False, eos_token_id=None
    )
    return output[0, len(prompt) :].tolist()


def test_shared_prefix_leaves_every_prompt_a_token_of_its_own() -> None:
    assert shared_prefix([[1, 2, 3, 4], [1, 2, 5]]) == 2
    assert shared_prefix([[1, 2, 3], [1, 2, 3, 4]]) == 2
    assert shared_prefix([[7, 2], [1, 2]]) == 0
    assert shared_prefix([[5], [5]]) == 0


def test_prefill_scores_each_prompt_as_it_would_alone(model_and_prompts) -> None:
    model, prompts = model_and_prompts
    assert shared_prefix(prompts) >= 2  # the test means something: a start is shared
    with torch.inference_mode():
        shared = prefill(model, prompts, use_cache=False).logits
        unshared = prefill(model, prompts, use_cache=False, share=False).logits
        plain = torch.cat([model(input_ids=torch.tensor([p])).logits[:, -1] for p in prompts])
    assert torch.allclose(shared, plain, atol=1e-5)
    assert torch.allclose(unshared, plain, atol=1e-5)


def test_greedy_decode_equals_generate_one_prompt_at_a_time(model_and_prompts) -> None:
    model, prompts = model_and_prompts
    with torch.inference_mode():
        batched = greedy_decode(model, prompts, 8, lambda new: False)
        expected = [alone(model, p, 8) for p in prompts]
    assert batched == expected


def test_rows_that_end_leave_the_batch_without_changing_the_others(model_and_prompts) -> None:
    model, prompts = model_and_prompts
    with torch.inference_mode():
        full = greedy_decode(model, prompts, 8, lambda new: False)
        stop = full[0][1]  # the second token of the first row ends any row that writes it
        cut = greedy_decode(model, prompts, 8, lambda new: new[-1] == stop)
    expected = [row[: row.index(stop) + 1] if stop in row else row for row in full]
    assert cut == expected
    assert len({len(row) for row in cut}) > 1  # rows did end at different steps
