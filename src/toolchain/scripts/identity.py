"""pochi identity worker: which Python this is and which versions of the packages pochi's
stage kinds use it has, without importing them (fast: no torch import).

Run by pochi as:  python -I identity.py RESULT.json MODULE=DISTRIBUTION ...
It answers in RESULT.json only: {"ok": true, "python": ..., "modules": {...}, "site_dirs": [...]}
or {"ok": false, "error": ..., "traceback": ...}.
"""

import importlib.metadata
import importlib.util
import json
import os
import platform
import sys
import traceback


def query(pairs):
    by_module = importlib.metadata.packages_distributions()
    modules = {}
    for pair in pairs:
        module, _, wanted = pair.partition("=")
        entry = {"found": False, "distribution": None, "version": None}
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if found:
            entry["found"] = True
            names = by_module.get(module) or [wanted]
            # The distribution that provides the module (e.g. onnxruntime-gpu for onnxruntime).
            for name in sorted(set(names), key=lambda n: (n != wanted, n)):
                try:
                    entry["version"] = importlib.metadata.version(name)
                    entry["distribution"] = name
                    break
                except importlib.metadata.PackageNotFoundError:
                    continue
        modules[module] = entry
    site_dirs = sorted({os.path.realpath(p) for p in sys.path if p and os.path.isdir(p)})
    return {
        "ok": True,
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
        "executable": sys.executable,
        "prefix": sys.prefix,
        "modules": modules,
        "site_dirs": site_dirs,
    }


def main(argv):
    if len(argv) < 2:
        sys.stderr.write("usage: identity.py RESULT.json MODULE=DISTRIBUTION ...\n")
        return 2
    try:
        result = query(argv[2:])
    except Exception as error:  # answer in JSON, whatever happened
        result = {"ok": False, "error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
    temp = argv[1] + ".tmp"
    with open(temp, "w", encoding="utf-8") as out:
        json.dump(result, out)
    os.replace(temp, argv[1])
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
