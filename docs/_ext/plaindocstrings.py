"""rnnkit's docstrings are plain text written to be read in a terminal (equations in aligned columns,
`code` in single backticks, `*` for products): this extension turns them into safe reST for autodoc.

Paragraphs stay paragraphs, with `x` as inline code and every other reST special character escaped;
a block with indented or column-aligned lines (equations, tables of arguments) becomes a literal block,
so its alignment is kept; "- " items become a bullet list; `>>>` examples stay doctest blocks.
"""
from __future__ import annotations

import re

CODE = re.compile(r"``(.+?)``|`([^`]+)`")
SPECIAL = re.compile(r"([\\*_|`\[\]])")
ENUMERATOR = re.compile(r"^(\(?[0-9a-zA-Z#]{1,3})([.)])(\s)")


def _escape(text: str) -> str:
    return SPECIAL.sub(r"\\\1", text)


def inline(text: str) -> str:
    """One line or paragraph of prose as reST: backtick spans as literals, the rest escaped."""
    out, pos = [], 0
    for m in CODE.finditer(text):
        out.append(_escape(text[pos:m.start()]))
        code = (m.group(1) or m.group(2)).strip()
        before = text[m.start() - 1] if m.start() else " "
        after = text[m.end()] if m.end() < len(text) else " "
        out.append(("\\ " if before.isalnum() or before in "([{'\"" else "") + f"``{code}``"
                   + ("\\ " if after.isalnum() or after == "'" else ""))
        pos = m.end()
    out.append(_escape(text[pos:]))
    result = "".join(out)
    return result[:-1] if result.endswith("::") else result


def _literal(block: list[str]) -> list[str]:
    return ["::", ""] + ["    " + line for line in block]


def _is_literal(block: list[str]) -> bool:
    return any(line.startswith((" ", "\t")) or "   " in line.strip() or re.fullmatch(r"[-=~^#*+]{3,}", line.strip())
               for line in block)


def convert(lines: list[str]) -> list[str]:
    blocks, current = [], []
    for line in lines:
        if line.strip():
            current.append(line.rstrip())
        elif current:
            blocks.append(current)
            current = []
    if current:
        blocks.append(current)
    out: list[str] = []
    for block in blocks:
        if block[0].lstrip().startswith(">>>"):
            out += block
        elif block[0].startswith(("- ", "* ")) and all(line.startswith(("- ", "* ", "  ")) for line in block):
            items: list[str] = []
            for line in block:
                if line.startswith(("- ", "* ")):
                    items.append(line[2:].strip())
                else:
                    items[-1] += " " + line.strip()
            out += ["- " + inline(item) for item in items]
        elif _is_literal(block):
            head = []
            for line in block:
                if _is_literal([line]):
                    break
                head.append(line)
            if head and len(head) < len(block):
                out += [ENUMERATOR.sub(r"\1\\\2\3", inline(" ".join(head))), ""]
            out += _literal(block[len(head):] if head else block)
        else:
            out.append(ENUMERATOR.sub(r"\1\\\2\3", inline(" ".join(block))))
        out.append("")
    return out


def _process(app, what, name, obj, options, lines):
    lines[:] = convert(lines)


def setup(app):
    app.connect("autodoc-process-docstring", _process)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
