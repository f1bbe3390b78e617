#!/usr/bin/env python3
"""Sanity-check a directory produced by gen_pipelines.py.

Usage:
    python3 bench/check_pipelines.py DIR [DIR ...]

Checks (standard library only):
  * pipeline.toml parses with tomllib and has the expected structure;
  * every stage name matches [a-z0-9_-]+;
  * every "@name" input resolves to an existing stage, every plain input
    path exists on disk, and the stage graph is acyclic;
  * every {inputs.X} placeholder in `run` names a declared input;
  * build.ninja has exactly one edge per stage, with the same output path
    and the same (resolved) inputs in the same order.
Exits non-zero on the first directory that fails.
"""

from __future__ import annotations

import os
import re
import sys
import tomllib

NAME_RE = re.compile(r"^[a-z0-9_-]+$")
PLACEHOLDER_RE = re.compile(r"\{inputs\.([A-Za-z0-9_-]+)\}")
EDGE_RE = re.compile(r"^build (\S+): (\S+)((?: \S+)*)$")


def check(d: str) -> list[str]:
    errs: list[str] = []
    with open(os.path.join(d, "pipeline.toml"), "rb") as f:
        doc = tomllib.load(f)
    if doc.get("pipeline", {}).get("name") != "bench":
        errs.append("[pipeline].name missing or not 'bench'")
    stages = doc.get("stages", {})
    if not stages:
        return errs + ["no stages"]

    deps: dict[str, list[str]] = {}
    resolved_inputs: dict[str, list[str]] = {}
    outputs: dict[str, str] = {}
    for name, st in stages.items():
        if not NAME_RE.match(name):
            errs.append(f"{name}: bad stage name")
        if st.get("kind") != "command":
            errs.append(f"{name}: kind != command")
        outs = st.get("outputs", {})
        if list(outs) != ["out"]:
            errs.append(f"{name}: outputs must be exactly {{out = ...}}")
        outputs[name] = outs.get("out", "")
    seen_outputs: dict[str, str] = {}
    for name, out in outputs.items():
        if out in seen_outputs:
            errs.append(f"{name}: output {out} also produced by {seen_outputs[out]}")
        seen_outputs[out] = name

    for name, st in stages.items():
        ins = st.get("inputs", {})
        deps[name] = []
        resolved_inputs[name] = []
        for key, ref in ins.items():
            if ref.startswith("@"):
                target = ref[1:]
                if target not in stages:
                    errs.append(f"{name}: input {key} = {ref} does not resolve")
                    continue
                deps[name].append(target)
                resolved_inputs[name].append(outputs[target])
            else:
                if not os.path.isfile(os.path.join(d, ref)):
                    errs.append(f"{name}: source {ref} does not exist")
                resolved_inputs[name].append(ref)
        run = st.get("run")
        if not isinstance(run, list) or not all(isinstance(a, str) for a in run):
            errs.append(f"{name}: run must be an array of strings")
            continue
        for arg in run:
            for key in PLACEHOLDER_RE.findall(arg):
                if key not in ins:
                    errs.append(f"{name}: run references undeclared input {key}")
        if not any("{outputs.out}" in a for a in run):
            errs.append(f"{name}: run never mentions {{outputs.out}}")

    # Cycle check: iterative DFS with colours (graphs can be 10k deep).
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(stages, WHITE)
    for root in stages:
        if colour[root] != WHITE:
            continue
        stack = [(root, iter(deps[root]))]
        colour[root] = GREY
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                colour[node] = BLACK
                stack.pop()
            elif colour[nxt] == GREY:
                errs.append(f"cycle through {node} -> {nxt}")
                return errs
            elif colour[nxt] == WHITE:
                colour[nxt] = GREY
                stack.append((nxt, iter(deps[nxt])))

    # Ninja equivalence.
    edges: dict[str, list[str]] = {}
    with open(os.path.join(d, "build.ninja"), encoding="utf-8") as f:
        for line in f:
            m = EDGE_RE.match(line.rstrip("\n"))
            if m:
                out, _rule, rest = m.groups()
                if out in edges:
                    errs.append(f"ninja: duplicate edge for {out}")
                edges[out] = rest.split()
    if len(edges) != len(stages):
        errs.append(f"ninja has {len(edges)} edges, pipeline has {len(stages)} stages")
    for name, out in outputs.items():
        if edges.get(out) != resolved_inputs[name]:
            errs.append(f"{name}: ninja inputs {edges.get(out)} != pochi inputs {resolved_inputs[name]}")
    return errs


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    rc = 0
    for d in argv:
        errs = check(d)
        if errs:
            rc = 1
            print(f"FAIL {d}:", file=sys.stderr)
            for e in errs[:20]:
                print(f"  {e}", file=sys.stderr)
            if len(errs) > 20:
                print(f"  ... and {len(errs) - 20} more", file=sys.stderr)
        else:
            print(f"ok   {d}", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
