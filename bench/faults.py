"""Fault scenarios and the fuzz campaign, longer than in `make test`. Prints JSON.

    python bench/faults.py [--scenarios worker_sigkill,redis_outage,frontend_restart,unread_streams,fuzz]
                           [--fuzz-scale 2.0]

Each scenario runs on its own fresh stack (a real redis-server, the three services and workers on
free loopback ports: harness/mesh.py) and reports what happened (harness/faults.py, harness/fuzz.py).
The figures go to docs/reliability.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness import faults, fuzz  # noqa: E402
from harness.load import ingest_ask_corpus  # noqa: E402
from harness.mesh import Mesh  # noqa: E402
from services.common.redis_server import RedisServer  # noqa: E402

SCENARIOS = ("worker_sigkill", "redis_outage", "frontend_restart", "unread_streams", "fuzz")


def on_stack(run, workers: int = 1, persist: bool = False, corpus: bool = True, **env):
    with tempfile.TemporaryDirectory() as data_dir:
        server = RedisServer(data_dir=data_dir, persist=persist).start()
        mesh = Mesh(server.url, "bench:", env_extra=env)
        try:
            procs = mesh.stack(workers=workers)
            if corpus:
                ingest_ask_corpus(procs["retrieval"].address)
            return run(mesh, procs, server)
        finally:
            mesh.stop()
            server.stop()


def worker_sigkill(args):
    return on_stack(lambda mesh, procs, _: faults.worker_sigkill(mesh, procs, streams=16, max_new_tokens=64),
                    workers=2, corpus=False)


def redis_outage(args):
    def run(mesh, procs, server):
        report, restarted = faults.redis_outage(mesh, procs, server, clients=8, before_s=20, outage_s=10,
                                                after_s=30, call_timeout_s=20)
        restarted.stop()
        return report
    return on_stack(run, persist=True)


def frontend_restart(args):
    def run(mesh, procs, _):
        return [faults.frontend_restart(mesh, procs, service, kill, streams=4)
                for service in ("generation", "retrieval") for kill in (False, True)]
    return on_stack(run)


def unread_streams(args):
    # 48 of the worker's 64 sequence slots: an unread stream holds its slot until gRPC's window is
    # full and its reader lease (15 s) lapses, so 64 would leave no room for the other client this checks
    return on_stack(lambda mesh, procs, _: faults.unread_streams(mesh, procs, streams=48, hold_s=30,
                                                                 abandon_wait_s=180), corpus=False)


def fuzz_campaign(args):
    def run(mesh, procs, _):
        report = fuzz.run_campaign({n: procs[n].address for n in ("tokenizer", "generation", "retrieval")},
                                   scale=args.fuzz_scale)
        alive = {n: p.alive for n, p in procs.items()}
        return {"cases": sum(r["cases"] for r in report.values()),
                "failures": sum(r["failures"] for r in report.values()),
                "processes_alive": alive, "by_method": report}
    return on_stack(run, corpus=False, **fuzz.FUZZ_ENV)


RUNS = {"worker_sigkill": worker_sigkill, "redis_outage": redis_outage, "frontend_restart": frontend_restart,
        "unread_streams": unread_streams, "fuzz": fuzz_campaign}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--fuzz-scale", type=float, default=2.0, help="examples per method, relative to the defaults")
    args = ap.parse_args()
    results = {}
    for name in args.scenarios.split(","):
        start = time.monotonic()
        try:
            results[name] = RUNS[name](args)
        except Exception as e:                   # noqa: BLE001 - a failed scenario is a result too
            results[name] = {"error": f"{type(e).__name__}: {e}"}
        print(f"{name}: {time.monotonic() - start:.0f}s {json.dumps(results[name])[:2000]}", file=sys.stderr,
              flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
