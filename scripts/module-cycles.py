#!/usr/bin/env python3
"""Fails when modules of a crate under runtime/ import each other in a circle.

A module's imports are, outside comments (doc links do not count) and unit-test modules:
- `use crate::m` and `crate::m::` paths naming a module m;
- names taken from the crate root (`use crate::{Name, ...}`, `use crate::Name`,
  `crate::Name` in code) that the root re-exports (`pub use m::{Name}` in lib.rs): such a
  name is an import of the module m that defines it.
Prints each circle found; exits 1 if there is one.
"""
import glob
import os
import re
import sys


def code_of(path):
    """The file without its comment lines and its unit tests (a `#[cfg(test)] mod`, a module
    of its own that may use what sits above the module it tests)."""
    with open(path, encoding="utf-8") as f:
        code = "\n".join(line.rstrip("\n") for line in f if not line.strip().startswith("//"))
    return re.split(r"#\[cfg\(test\)\]\s*mod ", code)[0]


def flat(items):
    """Names in a `use` list (`{A, b::C, D as E}`) at its first level, and nested paths."""
    names = []
    depth = 0
    current = ""
    for ch in items:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            names.append(current.strip())
            current = ""
            continue
        current += ch
    if current.strip():
        names.append(current.strip())
    return names


def reexports(src):
    """Name → module, for each `pub use m::...` of the crate root."""
    owners = {}
    root = code_of(f"{src}/lib.rs")
    for m, rest in re.findall(r"pub use (\w+)::([^;]+);", root):
        if not os.path.exists(f"{src}/{m}.rs"):
            continue
        rest = rest.strip()
        items = flat(rest[1:-1]) if rest.startswith("{") else [rest]
        for item in items:
            name = re.split(r"\s+as\s+", item)[-1].split("::")[-1].strip()
            if re.fullmatch(r"\w+", name):
                owners[name] = m
    return owners


def imports(code, src, owners):
    """The modules of the crate one file's code imports."""
    used = set(re.findall(r"crate::(\w+)::", code))
    for path in re.findall(r"use crate::([^;]+);", code):
        path = path.strip()
        if path.startswith("{"):
            for item in flat(path[1:-1]):
                used.add(re.split(r"::|\s", item)[0])
        else:
            used.add(re.split(r"::|\s", path)[0])
    used |= set(re.findall(r"crate::(\w+)\b", code))
    modules = set()
    for name in used:
        if os.path.exists(f"{src}/{name}.rs") and name != "lib":
            modules.add(name)
        elif name in owners:
            modules.add(owners[name])
    return modules


found = set()
for src in sorted(glob.glob("runtime/*/src")):
    owners = reexports(src) if os.path.exists(f"{src}/lib.rs") else {}
    graph = {}
    for path in glob.glob(f"{src}/*.rs"):
        module = os.path.basename(path)[:-3]
        if module in ("lib", "main"):
            continue
        graph[module] = {m for m in imports(code_of(path), src, owners) if m != module}

    def walk(module, path):
        for dep in sorted(graph.get(module, ())):
            if dep in path:
                circle = path[path.index(dep):] + [dep]
                if min(circle[:-1]) == circle[0]:  # report each circle once
                    found.add(f"{src}: {' -> '.join(circle)}")
                continue
            walk(dep, path + [dep])

    for module in sorted(graph):
        walk(module, [module])

for circle in sorted(found):
    print(f"import circle: {circle}", file=sys.stderr)
if found:
    sys.exit(1)
print("modules: no import circles in runtime/")
