#!/usr/bin/env python3
"""Fails when modules of a crate under runtime/ import each other in a circle.

A module's imports are its `use crate::m` lines and `crate::m::` paths outside comments
(doc links do not count). Prints each circle found; exits 1 if there is one.
"""
import glob
import os
import re
import sys

found = set()
for src in sorted(glob.glob("runtime/*/src")):
    graph = {}
    for path in glob.glob(f"{src}/*.rs"):
        module = os.path.basename(path)[:-3]
        code = "\n".join(line for line in open(path, encoding="utf-8") if not line.strip().startswith("//"))
        used = set(re.findall(r"use crate::(\w+)", code)) | set(re.findall(r"crate::(\w+)::", code))
        graph[module] = {m for m in used if m != module and os.path.exists(f"{src}/{m}.rs")}

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
