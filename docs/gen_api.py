"""Write docs/api.md: the API reference of every public name, from the docstrings.

Usage:
    python docs/gen_api.py           # rewrite docs/api.md
    python docs/gen_api.py --check   # exit 1 when docs/api.md is stale (tests/test_docs.py runs this)

Public means `surgeon.__all__`, and the `__all__` of the modules it lists (masks, schedule,
lottery, distributed). Google-style sections (Args, Returns, Raises, Attributes) become bullet
lists, Example blocks become code.
"""
from __future__ import annotations

import argparse
import inspect
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import surgeon

OUT = Path(__file__).with_name("api.md")
SECTIONS = ("Args", "Arguments", "Returns", "Raises", "Attributes", "Yields")
EXAMPLES = ("Example", "Examples", "Usage")


def _signature(obj: Any, name: str) -> str:
    """`name(a, b=1, *, c=None) -> str` without parameter annotations (the docstring says them)."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return name
    params = [p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()
              if p.name not in ("self", "cls")]
    ret = sig.return_annotation
    text = f"{name}{sig.replace(parameters=params, return_annotation=inspect.Signature.empty)}"
    text = re.sub(r"<class '(?:\w+\.)*(\w+)'>", r"\1", text)  # a class as a default: its name
    return text + (f" -> {ret}" if isinstance(ret, str) and ret != "None" else "")


def _markdown(doc: str | None) -> list[str]:
    """A docstring as Markdown: sections as bullet lists, examples as code blocks."""
    lines = inspect.cleandoc(doc or "").splitlines()
    out: list[str] = []
    mode = ""
    for line in lines:
        head = line.strip().rstrip(":")
        if line.endswith(":") and not line.startswith(" ") and head in SECTIONS + EXAMPLES:
            if mode == "code":
                out.append("```")
            mode = "code" if head in EXAMPLES else "list"
            out += ["", f"**{head}**", ""] + (["```python"] if mode == "code" else [])
            continue
        if mode == "code" and (line.startswith(" ") or not line):
            out.append(line[4:])
            continue
        if mode == "code":
            out += ["```", ""]
            mode = ""
        if mode == "list" and line.startswith("    "):
            item = re.match(r"^    (\*{0,2}\w+)( \([^)]*\))?: (.*)$", line)
            if item:
                out.append(f"- `{item[1]}`{item[2] or ''}: {item[3]}")
            elif out[-1].startswith("- "):
                out[-1] += " " + line.strip()
            else:
                out.append(f"- {line.strip()}")  # a section without names (Returns)
            continue
        mode = "" if not line.startswith(" ") else mode
        out.append(line)
    if mode == "code":
        out.append("```")
    while out and not out[-1].strip():
        out.pop()
    return out


def _entry(obj: Any, qualname: str) -> list[str]:
    """One public function or class: heading, signature, docstring; a class's public methods."""
    name = qualname.rpartition(".")[2]
    if inspect.isclass(obj) and issubclass(obj, BaseException):
        head = f"class {name}({', '.join(b.__name__ for b in obj.__bases__)})"
    else:
        head = ("class " if inspect.isclass(obj) else "") + _signature(obj, name)
    lines = [f"### `{qualname}`", "", "```python", head, "```", ""]
    lines += _markdown(obj.__doc__ if inspect.isclass(obj) else inspect.getdoc(obj))
    if inspect.isclass(obj) and not issubclass(obj, BaseException):
        for attr, member in vars(obj).items():
            fn = member.__func__ if isinstance(member, (classmethod, staticmethod)) else member
            if attr.startswith("_") or not inspect.isfunction(fn) or not fn.__doc__:
                continue
            signature = _signature(getattr(obj, attr), attr)
            lines += ["", f"#### `{qualname}.{attr}`", "", "```python", signature, "```", ""]
            lines += _markdown(fn.__doc__)
    return lines + [""]


def _module(module: ModuleType, prefix: str) -> list[str]:
    lines = [f"## `{prefix}`", ""] + _markdown((module.__doc__ or "").split("\n\n")[0]) + [""]
    for name in module.__all__:
        obj = getattr(module, name)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            lines += _entry(obj, f"{prefix}.{name}")
    return lines


def render() -> str:
    """The whole reference, as docs/api.md holds it."""
    lines = ["# API reference", "",
             "Generated from the docstrings by `python docs/gen_api.py` — do not edit; "
             "`tests/test_docs.py` fails when this page is stale. The command line is in [cli.md](cli.md).", ""]
    top = [n for n in surgeon.__all__ if not inspect.ismodule(getattr(surgeon, n))]
    errors = [n for n in top if isinstance(getattr(surgeon, n), type) and issubclass(getattr(surgeon, n), Exception)]
    lines += ["## `surgeon`", ""]
    for name in [n for n in top if n not in errors]:
        lines += _entry(getattr(surgeon, name), f"surgeon.{name}")
    lines += ["## Errors", ""]
    for name in errors:
        lines += _entry(getattr(surgeon, name), f"surgeon.{name}")
    for name in [n for n in surgeon.__all__ if inspect.ismodule(getattr(surgeon, n))]:
        lines += _module(getattr(surgeon, name), f"surgeon.{name}")
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/api.md is stale")
    text = render()
    if parser.parse_args().check:
        stale = not OUT.exists() or OUT.read_text() != text
        print(f"{OUT} is stale: run python docs/gen_api.py" if stale else f"{OUT} is up to date")
        return int(stale)
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
