"""`${...}` in a pipeline's overrides: arithmetic over the pipeline's named numbers (`vars`).

Used by the planner (`llmcore.pipeline.plan`): a study whose keys follow from one swept number
(a mixture weight, a source's token budget and the steps that follow from both) writes the
arithmetic once, e.g. `train.max_steps=${pre_steps + int(lam * post_tokens) // batch_tokens}`,
instead of one hand-computed override per variant; a string variable names a folder once
(`eval.sets={post: ${data}/post}`). Only numbers, the variables, + - * / // %
**, parentheses and int, round, min, max, abs, floor, ceil are allowed: the text is parsed,
never executed.
"""

from __future__ import annotations

import ast
import math
import operator
import re

from llmcore.errors import ConfigError

_SUB_RE = re.compile(r"\$\{([^{}]*)\}")
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_CALLS = {"int": int, "round": round, "min": min, "max": max, "abs": abs, "floor": math.floor, "ceil": math.ceil}


def substitute(text: str, variables: dict[str, float | int | str], where: str) -> str:
    """`text` with every `${expr}` replaced by its value (an integral result is written as an
    integer, so it fits an int key; a string variable alone is written as it is). ConfigError naming `where`, the expression and the problem."""
    def one(m: re.Match) -> str:
        value = evaluate(m.group(1), variables, where)
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return repr(value) if isinstance(value, float) else str(value)
    return _SUB_RE.sub(one, text)


def evaluate(expr: str, variables: dict[str, float | int | str], where: str = "<expr>") -> float | int | str:
    """The value of one arithmetic expression over `variables`."""
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError:
        raise ConfigError(f"{where}: ${{{expr}}} is not an arithmetic expression") from None

    def ev(node: ast.AST) -> float | int:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in variables:
                raise ConfigError(f"{where}: ${{{expr}}} uses {node.id!r}, which is not a pipeline variable "
                                  f"(vars: {', '.join(sorted(variables)) or 'none'})")
            return variables[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            try:
                return _BINARY[type(node.op)](ev(node.left), ev(node.right))
            except ZeroDivisionError:
                raise ConfigError(f"{where}: ${{{expr}}} divides by zero") from None
            except TypeError:
                raise ConfigError(f"{where}: ${{{expr}}} does arithmetic on a string variable") from None
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](ev(node.operand))
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _CALLS
                and not node.keywords):
            return _CALLS[node.func.id](*(ev(a) for a in node.args))
        raise ConfigError(f"{where}: ${{{expr}}}: only numbers, pipeline variables, + - * / // % ** and "
                          f"{', '.join(_CALLS)} are allowed")
    return ev(tree)
