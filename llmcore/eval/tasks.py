"""Exact match on prompt -> answer JSON-lines tasks (greedy decoding, first line of the output).

Used by `llmcore eval --tasks` and the recipes' experiments (pause tokens' arithmetic).
"""

from __future__ import annotations

from llmcore.data.sft import read_tasks
from llmcore.generate.sampling import generate_text


def first_line(text: str) -> str:
    """The answer part of a generation: up to the first newline, stripped."""
    return text.split("\n", 1)[0].strip()


def exact_match(model, tokenizer, jsonl_path: str, *, max_new_tokens: int = 32,
                prompt_field: str = "prompt", answer_field: str = "answer", recipes=None,
                batch_size: int = 16) -> dict:
    """Greedy exact match on a prompt->answer JSON-lines task.

    A prediction is the generated text up to the first newline (or eos), stripped; it is
    correct when it equals the stripped answer. Returns {"accuracy", "n", "examples": [{prompt,
    answer, prediction, correct}]}.
    """
    tasks = read_tasks(jsonl_path, prompt_field, answer_field)
    examples = []
    for start in range(0, len(tasks), batch_size):
        chunk = tasks[start:start + batch_size]
        outs = generate_text(model, tokenizer, [t["prompt"] for t in chunk], max_new_tokens,
                             temperature=0.0, recipes=recipes)
        for t, out in zip(chunk, outs):
            pred = first_line(out)
            examples.append(dict(t, prediction=pred, correct=pred == t["answer"].strip()))
    n_correct = sum(e["correct"] for e in examples)
    return {"accuracy": n_correct / len(examples), "n": len(examples), "examples": examples}
