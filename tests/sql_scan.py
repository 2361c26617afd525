"""A static check (helpers, not tests): SQL text built from variables by f-string, `+`, `%` or .format.

`built_sql(path)` parses one Python file and reports every call of a SQL entry point (execute,
executemany, executescript, exec_driver_sql, text, ...) whose SQL argument is assembled from
something that is not a string literal: an f-string with a {placeholder}, `"..." + name`,
`"..." % args`, `"...".format(...)`, or a local variable assigned such an expression in the
same function. Literals joined with literals are fine (that is still one fixed statement), and
so is a variable passed through untouched (a tool that runs a whole statement it was given is
reviewed on its own: see Lab 06's read-only guard). psycopg's `sql.SQL(...).format(sql.Identifier(x))`
is the safe way to put a name into SQL and is not flagged.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

SQL_CALLS = {"execute", "executemany", "executescript", "exec_driver_sql", "mogrify"}
SQL_MODULES = {"sqlalchemy", "sqlmodel"}  # their text() makes SQL; a text() of our own (SVG, say) does not


@dataclass(frozen=True)
class Finding:
    path: Path
    line: int
    call: str
    how: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.call}(...) gets SQL built by {self.how}"


def _literal(node: ast.AST, constants: dict[str, bool]) -> bool:
    """True when `node` can only ever be one fixed string (literals, joined, or names bound to them)."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, ast.JoinedStr):
        return all(isinstance(part, ast.Constant) for part in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _literal(node.left, constants) and _literal(node.right, constants)
    if isinstance(node, ast.Name):
        return constants.get(node.id, False)
    return False


def _how_built(node: ast.AST) -> str | None:
    """How a non-literal SQL expression was assembled, or None for a plain pass-through."""
    if isinstance(node, ast.JoinedStr):
        return "an f-string"
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return "concatenation (+)"
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
        return "%-formatting"
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format" \
            and isinstance(node.func.value, (ast.Constant, ast.JoinedStr)):
        return "str.format"
    return None


def _call_name(call: ast.Call) -> str | None:
    func = call.func
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return None


class _Scope(ast.NodeVisitor):
    """One function (or the module body): which local names hold fixed strings, which hold built ones."""

    def __init__(self, path: Path, findings: list[Finding], sql_text_names: set[str] = frozenset()):
        self.path, self.findings, self.sql_text_names = path, findings, sql_text_names
        self.constants: dict[str, bool] = {}
        self.built: dict[str, str] = {}

    def visit_FunctionDef(self, node):  # a nested function is its own scope
        scope = _Scope(self.path, self.findings, self.sql_text_names)
        for statement in node.body:
            scope.visit(statement)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Assign(self, node: ast.Assign) -> None:
        self.generic_visit(node)
        for target in node.targets:
            if isinstance(target, ast.Name):
                self._bind(target.id, node.value, replace=True)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self.generic_visit(node)
        if isinstance(node.target, ast.Name) and isinstance(node.op, ast.Add):
            self._bind(node.target.id, ast.BinOp(ast.Name(node.target.id), ast.Add(), node.value), replace=False)

    def _bind(self, name: str, value: ast.AST, replace: bool) -> None:
        literal = _literal(value, self.constants)
        self.constants[name] = literal and (replace or self.constants.get(name, False))
        how = None if literal else _how_built(value)
        if how:
            self.built[name] = how
        elif replace:
            self.built.pop(name, None)

    def visit_Call(self, node: ast.Call) -> None:
        self.generic_visit(node)
        name = _call_name(node)
        sql_text = name == "text" and (isinstance(node.func, ast.Attribute) or name in self.sql_text_names)
        if (name not in SQL_CALLS and not sql_text) or not node.args:
            return
        sql = node.args[0]
        if _literal(sql, self.constants):
            return
        how = _how_built(sql) or (self.built.get(sql.id) if isinstance(sql, ast.Name) else None)
        if how:
            self.findings.append(Finding(self.path, node.lineno, name, how))


def _sql_text_names(tree: ast.Module) -> set[str]:
    """Local names of sqlalchemy's / sqlmodel's text() (`from sqlalchemy import text as t`: {"t"})."""
    return {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
            and (node.module or "").split(".")[0] in SQL_MODULES for alias in node.names if alias.name == "text"}


def built_sql(path: Path) -> list[Finding]:
    findings: list[Finding] = []
    tree = ast.parse(Path(path).read_text(), filename=str(path))
    _Scope(path, findings, _sql_text_names(tree)).visit(tree)
    return findings
