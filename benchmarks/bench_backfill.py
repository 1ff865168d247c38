"""Benchmark: an 8-slide backfill through the daemon's run queue on 1 and 2 Celery workers
(issue 15). Not collected by pytest (its name does not start with ``test_``).

Run from the project root with::

    python3.12 -m uv run --locked python -m benchmarks.bench_backfill

It needs the live services of ``bms_pipeline_tests/live`` (PostgreSQL and RabbitMQ on
127.0.0.1; moto's S3 server is started here) and prints a markdown section for
``docs/benchmarks.md``. For each worker count it builds the whole deployment afresh (a new
Postgres database, a new bucket holding the same generated 8-slide ``small`` dataset, the
daemon, N workers with one pool process each), submits ``dagster job backfill`` of
``slides_job`` and measures:

* wall time from the submission to the last run finished (the daemon launches the queued
  runs, at most ``max_concurrent_runs`` at once as dagster.yaml sets it for this machine);
* CPU seconds of the deployment's processes (daemon, code server, run workers, Celery
  workers and their pool processes: every descendant, sampled from /proc every 0.25 s) and
  of the whole machine (from /proc/stat, which includes the other users of a shared one);
* the sum of the ``sm_series`` step durations, and which worker ran how many steps.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import threading
import time
from pathlib import Path

import dagster as dg

from bms_pipeline.core.synthetic.demo import write_demo_dataset
from bms_pipeline.orchestration.deploy import PostgresTarget, ensure_postgres_database
from bms_pipeline_tests.live.instance_ops import (
    open_instance,
    stop_sensors,
    submit_backfill,
    wait_runs_finished,
)
from bms_pipeline_tests.live.services import (
    BROKER,
    Cluster,
    fresh_database,
    purge_queue,
    s3_server,
    upload_tree,
)

TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of a process, or None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK


def _machine_busy() -> float:
    """Busy CPU seconds of the whole machine since boot (all cores)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / TICK


class TreeCpu:
    """CPU seconds of a set of processes and all their descendants, sampled in a thread."""

    def __init__(self, roots: list[int]) -> None:
        self.roots = set(roots)
        self.seen: dict[int, float] = {}
        self.baseline: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> dict[int, float]:
        stats = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
                stats[int(entry.name)] = stat
        members = set(self.roots)
        changed = True
        while changed:
            changed = False
            for pid, (ppid, _) in stats.items():
                if ppid in members and pid not in members:
                    members.add(pid)
                    changed = True
        return {pid: stats[pid][1] for pid in members if pid in stats}

    def start(self) -> TreeCpu:
        self.baseline = self._sample()
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            for pid, cpu in self._sample().items():
                self.seen[pid] = max(cpu, self.seen.get(pid, 0.0))
            self._stop.wait(0.25)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return sum(cpu - self.baseline.get(pid, 0.0) for pid, cpu in self.seen.items())


def step_seconds(instance: dg.DagsterInstance, run_ids: list[str], step: str) -> float:
    total = 0.0
    for run_id in run_ids:
        start = None
        for record in instance.all_logs(run_id):
            event = record.dagster_event
            if event is None or event.step_key != step:
                continue
            if event.event_type == dg.DagsterEventType.STEP_START:
                start = record.timestamp
            elif event.event_type == dg.DagsterEventType.STEP_SUCCESS and start is not None:
                total += record.timestamp - start
    return total


def steps_per_worker(instance: dg.DagsterInstance, run_ids: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for run_id in run_ids:
        for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
            if record.dagster_event is None:
                continue
            worker = record.dagster_event.engine_event_data.metadata.get("Celery worker")
            if worker is not None:
                name = str(worker.value).split("@")[0]
                counts[name] = counts.get(name, 0) + 1
    return counts


def run_once(workdir: Path, generated: Path, s3, workers: int, slide_ids: list[str]) -> dict:
    bucket = s3.new_bucket()
    data_url, out_url = f"s3://{bucket}/data", f"s3://{bucket}/out"
    upload_tree(s3.filesystem(), generated, data_url)
    with fresh_database() as url:
        ensure_postgres_database(url)
        logs = workdir / "logs"
        logs.mkdir(parents=True)
        env = {
            **os.environ,
            **s3.env(),
            "DAGSTER_HOME": str(workdir / "dagster_home"),
            "BMS_DAGSTER_POSTGRES_URL": PostgresTarget.parse(url).dagster_url,
            "BMS_DATA_ROOT": data_url,
            "BMS_OUTPUT_ROOT": out_url,
            "BMS_EXECUTOR": "celery",
            "BMS_CELERY_BROKER": BROKER,
            "BMS_SCRATCH": str(workdir / "scratch-submitter"),
        }
        saved = dict(os.environ)
        os.environ.update(env)
        cluster = Cluster(env=env, home=workdir / "dagster_home", logs=logs)
        try:
            purge_queue()
            instance = open_instance(cluster.home, url)
            instance.add_dynamic_partitions("slides", slide_ids)
            stop_sensors(instance)
            for k in range(workers):
                cluster.start_worker(f"w{k + 1}")
            cluster.start_daemon()
            cluster.wait_workers_ready()
            assert cluster.daemon is not None
            cpu = TreeCpu([cluster.daemon.pid, *(w.process.pid for w in cluster.workers)])
            cpu.start()
            machine_before = _machine_busy()
            started = time.perf_counter()
            submit_backfill(instance, slide_ids)
            runs = wait_runs_finished(instance, len(slide_ids), timeout=3600)
            wall = time.perf_counter() - started
            machine = _machine_busy() - machine_before
            tree = cpu.stop()
            run_ids = [r.run_id for r in runs]
            return {
                "workers": workers,
                "ok": sum(r.is_success for r in runs),
                "wall": wall,
                "cpu": tree,
                "machine_cpu": machine,
                "sm_seconds": step_seconds(instance, run_ids, "sm_series"),
                "per_worker": steps_per_worker(instance, run_ids),
            }
        finally:
            cluster.stop()
            os.environ.clear()
            os.environ.update(saved)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--slides", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="bench-backfill-") as tmp:
        tmp_path = Path(tmp)
        generated = tmp_path / "generated"
        slide_ids = sorted(write_demo_dataset(generated, slides=args.slides, seed=15).slides)
        results = []
        with s3_server(tmp_path / "moto.log") as s3:
            for workers in args.workers:
                results.append(
                    run_once(tmp_path / f"w{workers}", generated, s3, workers, slide_ids)
                )
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\n{args.slides}-slide `small` backfill, {cores} cores, load after: {load}\n")
    print(
        "| workers | runs ok | wall s | deployment CPU s | CPU use | machine CPU s | "
        "sm_series s (sum) | steps per worker |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in results:
        use = r["cpu"] / r["wall"] / cores
        steps = ", ".join(f"{k}: {v}" for k, v in sorted(r["per_worker"].items()))
        print(
            f"| {r['workers']} | {r['ok']}/{args.slides} | {r['wall']:.1f} | {r['cpu']:.1f} | "
            f"{use:.0%} | {r['machine_cpu']:.1f} | {r['sm_seconds']:.1f} | {steps} |"
        )


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
