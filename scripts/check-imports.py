#!/usr/bin/env python3
"""Imports point one way: no module of any crate in the workspace is on an import cycle, and the
appliance's folders depend on one another only downwards (docs/architecture.md has the map).

Every `crate::`, `self::` and `super::` path in a crate's sources (use trees included, test
modules at the end of a file excluded) is resolved to the deepest module it names; the graph of
those references must be acyclic. Exit 1 with the cycle or the upward reference named.
"""
import os
import re
import sys

ROOT = os.environ.get("CHECK_ROOT") or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CRATES = ["wire", "guestinfo", "tether", "appliance-side", "bootstrap-iso", "tests"]

# The appliance's layers, lowest first; a module may refer to its own layer or lower ones.
APPLIANCE_LAYERS = [
    {"home", "logging", "path_io"},
    {"store"},
    {"server", "backend", "registry"},
    {"engine"},
    {"api"},
    {"cli", "daemon"},
    {"testing"},
]


def crate_trees(src):
    """(root file, {module path: file}) for the library and each binary under src/."""
    trees = []
    bin_dir = os.path.join(src, "bin")
    lib_files = {}
    for dirpath, _, files in os.walk(src):
        if dirpath.startswith(bin_dir):
            continue
        for f in files:
            if f.endswith(".rs"):
                lib_files[os.path.join(dirpath, f)] = module_of(src, os.path.join(dirpath, f))
    trees.append(lib_files)
    if os.path.isdir(bin_dir):
        for entry in sorted(os.listdir(bin_dir)):
            path = os.path.join(bin_dir, entry)
            if os.path.isdir(path):
                files = {}
                for dirpath, _, fs in os.walk(path):
                    for f in fs:
                        if f.endswith(".rs"):
                            p = os.path.join(dirpath, f)
                            files[p] = module_of(path, p)
                trees.append(files)
    return trees


def module_of(src, path):
    rel = os.path.relpath(path, src)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return "::".join(rel)


def strip_tests(text):
    m = re.search(r"#\[cfg\(test\)\]\s*mod tests\s*\{", text)
    text = text[: m.start()] if m else text
    # Comments and strings name paths that are not imports.
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r'"(?:\\.|[^"\\])*"', '""', text)


def expand(text, at):
    """Paths of the use tree starting at text[at:] (after `crate::` etc.), as lists."""
    out = []

    def tree(i, prefix):
        while i < len(text) and text[i].isspace():
            i += 1
        if i < len(text) and text[i] == "{":
            i += 1
            while True:
                i = tree(i, prefix)
                while i < len(text) and text[i] in " \n\t,":
                    i += 1
                if i >= len(text) or text[i] == "}":
                    return i + 1
        m = re.match(r"[A-Za-z_][A-Za-z0-9_]*", text[i:])
        if not m:
            out.append(prefix)
            return i
        name = m.group(0)
        i += len(name)
        if text.startswith("::", i):
            return tree(i + 2, prefix + [name])
        out.append(prefix + [name])
        return i

    tree(at, [])
    return out


def references(module, text, modules):
    refs = set()
    for m in re.finditer(r"\b(crate|self|super)::", text):
        if text[: m.start()].endswith("$"):
            continue
        base = [] if m.group(1) == "crate" else module.split("::") if module else []
        if m.group(1) == "super":
            base = base[:-1]
        for path in expand(text, m.end()):
            full = base + [p for p in path if p not in ("self",)]
            while full and "::".join(full) not in modules:
                full = full[:-1]
            target = "::".join(full)
            if target != module:
                refs.add(target)
    return refs


def find_cycle(graph):
    state = {}
    stack = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for d in sorted(graph.get(n, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state:
                c = visit(d)
                if c:
                    return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            c = visit(n)
            if c:
                return c
    return None


def layer(module):
    top = module.split("::")[0]
    for i, names in enumerate(APPLIANCE_LAYERS):
        if top in names:
            return i
    return None


def main():
    problems = []
    for crate in CRATES:
        src = os.path.join(ROOT, crate, "src")
        for files in crate_trees(src):
            modules = set(files.values())
            graph = {}
            for path, module in files.items():
                with open(path) as f:
                    text = strip_tests(f.read())
                graph.setdefault(module, set()).update(references(module, text, modules))
            # The crate root declares every module; references to it are to its re-exports.
            for deps in graph.values():
                deps.discard("")
            cycle = find_cycle(graph)
            if cycle:
                problems.append(f"{crate}: import cycle: {' -> '.join(c or 'crate' for c in cycle)}")
            if crate == "appliance-side":
                for module, deps in sorted(graph.items()):
                    for d in sorted(deps):
                        lm, ld = layer(module), layer(d)
                        if lm is not None and ld is not None and ld > lm:
                            problems.append(
                                f"appliance-side: {module} refers to {d}, a higher layer "
                                "(docs/architecture.md: imports point downwards)"
                            )
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        sys.exit(1)
    print("check-imports: no import cycles; appliance layers point downwards")


if __name__ == "__main__":
    main()
