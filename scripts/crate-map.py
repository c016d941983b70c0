#!/usr/bin/env python3
"""Checks the README's crate map against the workspace: for every crate line
("- `PATH` (`CRATE`) → a, b, c: ..."), the crates named after the arrow (up to the colon that
ends the list; features in backticks and remarks in parentheses left aside) are exactly the
workspace crates it depends on (normal dependencies, optional ones included; for `examples`,
its dev-dependencies), and every workspace crate under runtime/ has a line."""
import json
import re
import subprocess
import sys

ROOT = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True).stdout.strip()
meta = json.loads(subprocess.run(
    ["cargo", "metadata", "--locked", "--format-version", "1", "--no-deps"],
    capture_output=True, text=True, check=True, cwd=ROOT).stdout)
members = {p["name"]: p for p in meta["packages"]}


def short(name):
    if name == "sextant":
        return "sextant"
    return {"sextant-plugin-artifacts": "artifacts"}.get(name, name.removeprefix("sextant-"))


shorts = {short(n): n for n in members}
readme = open(f"{ROOT}/README.md", encoding="utf-8").read()
# A crate line and its continuation lines (indented by two spaces).
items = re.findall(r"^- `([^`]+)` \(`([^`]+)`[^)]*\)(.*(?:\n  .*)*)", readme, re.M)
problems, seen = [], set()
for path, crate, rest in items:
    if crate not in members:
        problems.append(f"README names crate {crate} ({path}), which is not in the workspace")
        continue
    seen.add(crate)
    text = " ".join(rest.split())
    named = set()
    if text.startswith("→"):
        listed = text[1:].split(":", 1)[0]
        # Features (`server`) and remarks in parentheses are not crates.
        listed = re.sub(r"`[^`]*`|\([^)]*\)", "", listed)
        named = {w for w in re.findall(r"[a-z][a-z-]*", listed) if w in shorts}
    # The examples' crate has its dependencies as dev-dependencies (its lib is empty).
    kinds = {None, "dev"} if path == "examples" else {None}
    actual = {short(d["name"]) for d in members[crate]["dependencies"]
              if d["name"] in members and d["kind"] in kinds}
    if named != actual:
        missing, extra = sorted(actual - named), sorted(named - actual)
        problems.append(f"README's line for {crate}: " + "; ".join(
            ([f"depends on {', '.join(missing)} but does not say so"] if missing else [])
            + ([f"names {', '.join(extra)}, which it does not depend on"] if extra else [])))
for name, p in members.items():
    rel = p["manifest_path"].removeprefix(ROOT + "/").removesuffix("/Cargo.toml")
    if rel.startswith("runtime/") and name not in seen:
        problems.append(f"README's crate map has no line for {name} ({rel})")
if problems:
    print("crate map:", *problems, sep="\n  ", file=sys.stderr)
    sys.exit(1)
print(f"crate map: the README's {len(seen)} crate lines name exactly what each depends on")
