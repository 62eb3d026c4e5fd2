"""What the tests of exported Hugging Face folders share: our greedy decoding against
`transformers`' own on the same prompt."""

from __future__ import annotations

import torch

from llmcore.generate.sampling import generate


def assert_greedy_matches(model, hf_model, prompt: list[int], new_tokens: int, eos_id: int) -> list[int]:
    """Greedy continuations of `prompt` by our `model` and by `hf_model.generate` are the same
    ids, up to and including the first eos (transformers pads after it); returns ours."""
    mine = generate(model, [prompt], new_tokens, temperature=0.0, eos_id=eos_id)[0]
    with torch.no_grad():
        full = hf_model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                 max_new_tokens=new_tokens, do_sample=False)[0, len(prompt):].tolist()
    if eos_id in full:
        full = full[:full.index(eos_id) + 1]
    assert mine == full, f"greedy from {prompt}: ours {mine}, transformers {full}"
    return mine
