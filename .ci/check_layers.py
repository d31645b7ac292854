#!/usr/bin/env python3
"""Checks the library's module dependencies (docs/DESIGN.md, "The source tree"):

- no import cycle among its modules (a child module adding an `impl` block to its parent's type,
  as every engine file does for `Store`, is not counted: that is one concept split over files);
- every module imports only from its own layer or the layers below it:
  the handle > the engine > options and reports > the log, sorted files, manifest, memtable, view and locking
  > the layout, format, I/O and small primitives.

It reads `use crate::…` / `use super::…` paths and `crate::…` paths in code, outside
`#[cfg(test)] mod` blocks. The test machinery (`src/testing/`) is outside the layers: it drives
the engine from above, through the public API. Exits 1 naming each violation.
"""

import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")

LAYERS = [
    # (layer, modules): a module's layer is that of its first path segment.
    (5, {"db", "iter", "snapshot", "transaction", "watch", "backup", "typed"}),
    (4, {"engine"}),
    (3, {"options", "stats"}),
    (2, {"wal", "sorted", "manifest", "memtable", "view", "locking"}),
    (1, {"layout", "format", "io", "sync", "poison", "batch", "bytes", "error", "limits"}),
]


def layer_of(module):
    top = module.split("::")[0]
    for layer, names in LAYERS:
        if top in names:
            return layer
    return None


def modules():
    found = {}
    for dirpath, _, files in os.walk(ROOT):
        for name in files:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(dirpath, name)
            parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
            if parts[-1] == "mod":
                parts = parts[:-1]
            if parts in (["lib"], ["main"]) or parts[0] == "bin":
                continue
            found["::".join(parts)] = path
    return found


def without_tests(text):
    # Drops `#[cfg(test)] mod name { … }` blocks by brace matching, and comments.
    out, i = [], 0
    pattern = re.compile(r"#\[cfg\(test\)\]\s*(pub(\([a-z]+\))?\s+)?mod\s+\w+\s*\{")
    while True:
        m = pattern.search(text, i)
        if not m:
            out.append(text[i:])
            break
        out.append(text[i : m.start()])
        depth, j = 1, m.end()
        while depth and j < len(text):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    return re.sub(r"//[^\n]*", "", "".join(out))


def reexports():
    """`pub use module::{Item, …}` in lib.rs: which module a `crate::Item` comes from."""
    lib = open(os.path.join(ROOT, "lib.rs")).read()
    items = {}
    for module, names in re.findall(r"pub use (\w+)::\{([^}]*)\};", lib):
        for name in re.split(r"[,\s]+", names):
            if name:
                items[name] = module
    for module, name in re.findall(r"pub use (\w+)::(\w+);", lib):
        items[name] = module
    return items


def paths_in(text):
    """Every `crate::a::b` path, with `use crate::{x, y::z}` groups expanded."""
    found = []
    for group in re.findall(r"crate::\{([^;]*?)\}\s*;", text, re.S):
        for item in re.split(r",\s*", group):
            item = item.strip()
            if item:
                found.append(re.split(r"::\{", item)[0].replace(" ", ""))
    found += re.findall(r"crate::((?:\w+::)*\w+)", text)
    return found


def resolve(path, names, items):
    parts = path.split("::")
    for k in range(len(parts), 0, -1):
        candidate = "::".join(parts[:k])
        if candidate in names:
            return candidate
    return items.get(parts[0])


def main():
    names = modules()
    items = reexports()
    edges = {m: set() for m in names}
    for module, path in names.items():
        text = without_tests(open(path).read())
        refs = paths_in(text)
        parent = module.rsplit("::", 1)[0] if "::" in module else ""
        for rest in re.findall(r"\bsuper::((?:\w+::)*\w+)", text):
            refs.append(f"{parent}::{rest}" if parent else rest)
        for ref in refs:
            target = resolve(ref, names, items)
            if target and target != module and not module.startswith(target + "::"):
                edges[module].add(target)

    problems = []
    for module, targets in sorted(edges.items()):
        mine = layer_of(module)
        if mine is None:
            continue
        for target in sorted(targets):
            theirs = layer_of(target)
            if theirs is not None and theirs > mine:
                problems.append(f"{module} (layer {mine}) imports {target} (layer {theirs})")

    # Strongly connected components (Tarjan), iteratively.
    index, low, on_stack, stack, cycles, counter = {}, {}, set(), [], [], [0]
    for start in sorted(names):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        cycles.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = counter[0]
                counter[0] += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(edges[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    problems += [f"import cycle: {' -> '.join(cycle)}" for cycle in cycles]

    if "-v" in sys.argv:
        for module in sorted(edges):
            print(f"{module} -> {', '.join(sorted(edges[module])) or '-'}")
    for problem in problems:
        print(problem)
    print(f"{len(names)} modules, {sum(map(len, edges.values()))} dependencies, "
          f"{len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
