#!/usr/bin/env python3
"""Import cycles among a crate's modules.

Usage: scripts/module-cycles.py SRC_DIR [--depth N]

Reads every `crate::a::b` and `super::b` path in SRC_DIR's .rs files (`use` lines, grouped
`use crate::{a, b::c}` imports and inline paths such as `crate::model::Route`; comments are skipped)
and builds the graph of module → module it names. A module is a file: `a.rs` or `a/mod.rs` is `a`,
`a/b.rs` is `a::b`. Modules are compared at `--depth` levels (default 1: the crate's top-level
modules, i.e. its layers), so `spec::limits` naming `model::Policy` is an edge `spec → model`.
`lib.rs` (the crate root, which re-exports), edges inside one module and edges between a module
and its own ancestors (the module tree itself, e.g. `validate::routes` using `validate::Check`) are
ignored.

Prints the edges and exits 1 if the graph has a cycle (printing one), else 0.
"""
import re
import sys
from pathlib import Path

PATH = re.compile(r"\bcrate((?:::[A-Za-z_][A-Za-z0-9_]*)+|::\{)")


def module_of(src: Path, file: Path) -> list[str]:
    parts = list(file.relative_to(src).with_suffix("").parts)
    if parts[-1] == "mod":
        parts.pop()
    return parts


def strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(line.split("//", 1)[0] for line in text.splitlines())


def targets(text: str, me: list[str]) -> list[list[str]]:
    """Every module path named after `crate::` or `super::`, grouped imports expanded one level."""
    out = []
    for m in re.finditer(r"\b((?:super::)+)([A-Za-z_][A-Za-z0-9_]*(?:::[A-Za-z_][A-Za-z0-9_]*)*)", text):
        up = m.group(1).count("super::")
        out.append(me[: max(len(me) - up, 0)] + m.group(2).split("::"))
    for m in re.finditer(r"\bcrate::\{([^}]*)\}", text):
        for item in m.group(1).split(","):
            item = item.strip()
            if item:
                out.append(item.split("::"))
    for m in PATH.finditer(text):
        if m.group(1) != "::{":
            out.append(m.group(1).strip(":").split("::"))
    return out


def graph(src: Path, depth: int) -> dict[str, set[str]]:
    modules = {tuple(module_of(src, f)) for f in src.rglob("*.rs")}
    edges: dict[str, set[str]] = {}
    for f in sorted(src.rglob("*.rs")):
        me = module_of(src, f)
        if me == ["lib"] or me == ["main"]:
            continue
        node = "::".join(me[:depth])
        for path in targets(strip_comments(f.read_text()), me):
            # The longest prefix of the path that is a module file (the rest names items).
            mod = next((path[:i] for i in range(len(path), 0, -1) if tuple(path[:i]) in modules), None)
            if mod is None:
                continue  # an item re-exported at the crate root (`crate::Config`)
            other = "::".join(mod[:depth])
            ancestor = me[: len(mod)] == mod or mod[: len(me)] == me
            if other != node and not ancestor:
                edges.setdefault(node, set()).add(other)
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(edges):
        if n not in state and (c := visit(n)):
            return c
    return None


def main() -> int:
    args = sys.argv[1:]
    depth = 1
    if "--depth" in args:
        i = args.index("--depth")
        depth = int(args[i + 1])
        del args[i : i + 2]
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    src = Path(args[0])
    edges = graph(src, depth)
    for n in sorted(edges):
        print(f"{n} -> {', '.join(sorted(edges[n]))}")
    cycle = find_cycle(edges)
    if cycle:
        print("cycle: " + " -> ".join(cycle))
        return 1
    print(f"no cycle among {src}'s modules (depth {depth})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
