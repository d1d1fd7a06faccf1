"""The house limits on the collection's code: fails listing every breach.

- every file under plugins/ at most MAX_FILE_LINES lines, not counting a module's DOCUMENTATION, EXAMPLES and
  RETURN strings (the module-level assignments of those names);
- every function (and method) under plugins/ at most MAX_FUNCTION_LINES lines, from its ``def`` line to its
  last line.

Files that are not Python count all their lines.  Standard library only (``ast``).

Usage: python3 tools/guard.py [ROOT]   (ROOT: the repository, default this checkout; checks ROOT/plugins)
"""

from __future__ import annotations

import ast
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 60
DOC_STRINGS = ('DOCUMENTATION', 'EXAMPLES', 'RETURN')


def _doc_lines(tree: ast.Module) -> int:
    """The lines of the module-level DOCUMENTATION/EXAMPLES/RETURN assignments."""
    lines = 0
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(target, ast.Name) and target.id in DOC_STRINGS
                                                for target in node.targets):
            lines += node.end_lineno - node.lineno + 1
    return lines


def file_breaches(path: pathlib.Path, shown: str) -> list[str]:
    """The breaches of one file, each ``SHOWN[:LINE]: what``; ``shown`` is the name to print for it."""
    text = path.read_text(encoding='utf-8', errors='replace')
    total = len(text.splitlines())
    if path.suffix != '.py':
        return ['%s: %d lines (at most %d)' % (shown, total, MAX_FILE_LINES)] if total > MAX_FILE_LINES else []
    tree = ast.parse(text, filename=str(path))
    counted = total - _doc_lines(tree)
    out = []
    if counted > MAX_FILE_LINES:
        out.append('%s: %d lines without the module documentation (at most %d)' % (shown, counted, MAX_FILE_LINES))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                out.append('%s:%d: function %s is %d lines (at most %d)'
                           % (shown, node.lineno, node.name, length, MAX_FUNCTION_LINES))
    return out


def breaches(root: pathlib.Path) -> list[str]:
    """Every breach under ROOT/plugins, file by file in name order."""
    out = []
    for path in sorted((root / 'plugins').rglob('*')):
        if path.is_file() and '__pycache__' not in path.parts:
            out.extend(file_breaches(path, str(path.relative_to(root))))
    return out


def main(argv: list[str]) -> int:
    root = pathlib.Path(argv[0]) if argv else ROOT
    if not (root / 'plugins').is_dir():
        print('guard: no plugins/ directory under %s' % root, file=sys.stderr)
        return 2
    found = breaches(root)
    for line in found:
        print(line)
    if found:
        print('guard: %d breach(es) of the house limits (files <= %d lines, functions <= %d lines)'
              % (len(found), MAX_FILE_LINES, MAX_FUNCTION_LINES), file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
