"""Running a batch of prompts once, and greedy decoding from there, with less work than
`generate` does on the same batch.

- The tokens every prompt of the batch starts with (an instruction, a task's fixed opening)
  run once, as one row; their keys and values are copied to every row of the cache.
- Each prompt's own tokens follow, left-padded: the cache reads [shared][padding][own], the
  attention mask hides the padding and position ids count real tokens only, so every row
  computes what it would alone (to float rounding).
- The vocabulary-wide head runs at each row's last position only, gathered into one matrix
  (a strided slice makes torch run the head as a batched product over a copied weight).
- Greedy decoding drops a row from the batch and its cache as soon as it has ended.

A sharded model does not come here: its processes must run the same forward passes in step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers.modeling_outputs import CausalLMOutputWithPast

# transformers 5 renames the key/value cache argument and output from `past_key_values` to
# `cache` (the old name warns, and goes in 5.40).
CACHE = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


@dataclass
class Prefill:
    """A batch after its prompts: the next-token logits and what decoding continues from."""

    logits: torch.Tensor  # (rows, vocabulary), float32, at each prompt's last position
    cache: Any  # the model's key/value cache, one row per prompt
    mask: torch.Tensor  # (rows, cached positions): 1 for real tokens
    positions: torch.Tensor  # (rows,): the position id of each row's next token (its length)


def shared_prefix(prompts: list[list[int]]) -> int:
    """How many leading tokens every prompt has in common, keeping one own token per prompt."""
    limit = min(len(p) for p in prompts) - 1
    first = prompts[0]
    for k in range(max(limit, 0)):
        if any(p[k] != first[k] for p in prompts):
            return k
    return max(limit, 0)


def last_logits(model: torch.nn.Module, **inputs: Any) -> tuple[torch.Tensor, Any]:
    """The logits at the last position of every row (float32) and the returned cache."""
    width = inputs["input_ids"].shape[1]
    keep = torch.tensor([width - 1], device=inputs["input_ids"].device)
    output = model(**inputs, logits_to_keep=keep)
    return output.logits[:, -1].float(), getattr(output, CACHE)


def prefill(
    model: torch.nn.Module, prompts: list[list[int]], use_cache: bool, share: bool = True
) -> Prefill:
    """Run the prompts once: the shared start as one row, then each prompt's own tokens."""
    device = next(model.parameters()).device
    shared = shared_prefix(prompts) if share and len(prompts) > 1 else 0
    cache = None
    if shared:
        _, cache = last_logits(
            model, input_ids=torch.tensor([prompts[0][:shared]], device=device), use_cache=True
        )
        cache.batch_repeat_interleave(len(prompts))
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    own = lengths - shared
    width = int(own.max())
    ids = torch.zeros(len(prompts), width, dtype=torch.long, device=device)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) + shared :] = torch.tensor(prompt[shared:])
    offsets = torch.arange(width, device=device) - (width - own)[:, None]
    mask = torch.cat(
        [torch.ones(len(prompts), shared, dtype=torch.long, device=device), (offsets >= 0).long()],
        dim=1,
    )
    logits, cache = last_logits(
        model,
        input_ids=ids,
        attention_mask=mask,
        position_ids=shared + offsets.clamp(min=0),
        use_cache=use_cache or bool(shared),
        **{CACHE: cache},
    )
    return Prefill(logits, cache, mask, lengths)


def greedy_decode(
    model: torch.nn.Module,
    prompts: list[list[int]],
    max_new_tokens: int,
    ended: Callable[[list[int]], bool],
) -> list[list[int]]:
    """Each prompt's greedy continuation: argmax at every step, up to max_new_tokens, a row
    stopping once `ended(its new tokens)` holds."""
    state = prefill(model, prompts, use_cache=max_new_tokens > 1)
    new: list[list[int]] = [[] for _ in prompts]
    alive = list(range(len(prompts)))
    logits = state.logits
    for step in range(max_new_tokens):
        chosen = logits.argmax(-1).tolist()
        for row, token in zip(alive, chosen, strict=True):
            new[row].append(token)
        going = [k for k, row in enumerate(alive) if not ended(new[row])]
        if not going or step == max_new_tokens - 1:
            break
        if len(going) < len(alive):
            keep = torch.tensor(going, device=state.mask.device)
            state.cache.batch_select_indices(keep)
            state.mask, state.positions = state.mask[keep], state.positions[keep]
            alive, chosen = [alive[k] for k in going], [chosen[k] for k in going]
        state.mask = torch.cat([state.mask, state.mask.new_ones(len(alive), 1)], dim=1)
        logits, state.cache = last_logits(
            model,
            input_ids=torch.tensor(chosen, device=state.mask.device)[:, None],
            attention_mask=state.mask,
            position_ids=state.positions[:, None],
            use_cache=True,
            **{CACHE: state.cache},
        )
        state.positions = state.positions + 1
    return new
