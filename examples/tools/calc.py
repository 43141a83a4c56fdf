"""Calculator: integer arithmetic with named memory cells.

    eval(compute(<str>), <int>)   compute("1+2*x") -> 3 (names are memory cells set by store)
    do(store(<str>, <int>))       store("x", 1)

Internal (``tool_name = "examples.tools.calc:Calc"``, ``host_name = "ToolBus"``) or external:
``{python} -m examples.tools.calc`` runs the same class through ``toolbus.adapter``.
"""

from __future__ import annotations

import ast
import operator

_OPERATORS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv,
    ast.Div: operator.floordiv,  # integer arithmetic: "/" divides and rounds down
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}


class Calc:
    def __init__(self) -> None:
        self.memory: dict[str, int] = {}

    def compute(self, expr: str) -> int:
        """The value of an integer expression over + - * / // % ** and parentheses."""
        return self._value(ast.parse(expr, mode="eval").body)

    def store(self, name: str, value: int) -> None:
        self.memory[name] = value

    def _value(self, node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in self.memory:
                raise KeyError(f"{node.id} is not stored")
            return self.memory[node.id]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            value = self._value(node.operand)
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            left, right = self._value(node.left), self._value(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > 64:
                raise ValueError("exponent too large")
            return _OPERATORS[type(node.op)](left, right)
        raise ValueError(f"not integer arithmetic: {ast.unparse(node)}")


if __name__ == "__main__":
    from toolbus.adapter import run

    run(Calc)
