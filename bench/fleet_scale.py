"""Fleet figures (issue 15), against a real etcd (Debian's etcd-server) on 127.0.0.1 that this
script starts, with simulated hosts running the real lock and report code.

1. The lock: ``--waiters`` (1000) hosts wait in one group with ``--max`` (50) slots, each
   holding its slot ``--hold`` seconds: etcd requests per second while they all wait, etcd
   transactions per hand-off, hand-off latency (a release to the next take) p50/p99, and the
   time for all to pass.  Requests are counted by etcd itself (``grpc_server_started_total``
   in its /metrics: one per gateway call, a watch stream counts once).
2. Reports: ``--hosts`` (10000) hosts write their report (``updater.report``, each on its own
   lease): etcd writes per second sustained, what 10000 hosts reporting hourly need, and the
   time of ``tidehost fleet status`` (read + table) over them.
3. Rollout waves over 100000 machine ids (``channels.rollout``): the observed share per wave
   against the plan (goal within ±1 point); pause and pull take effect at the next poll of a
   real channel client.
4. An idle channel poll on the wire (goal ≤ 2 KB) and the load of 100000 hosts polling hourly
   on a static server.

``.venv/bin/python bench/fleet_scale.py [--waiters 1000 --max 50 --hosts 10000]``; takes a few
minutes on two cores.
"""

from __future__ import annotations

import argparse
import logging
import re
import resource
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import requests  # noqa: E402

from channels import fleet  # noqa: E402
from channels.client import ChannelClient  # noqa: E402
from channels.create import create  # noqa: E402
from channels.etcd import EtcdGateway  # noqa: E402
from channels.releases import ChannelRepository  # noqa: E402
from channels.repository import open_repository  # noqa: E402
from channels.rollout import RolloutPlan, host_position, parse_waves  # noqa: E402
from channels.serve import ChannelServer  # noqa: E402
from imagebuild.fleet import source, table  # noqa: E402
from imagebuild.lab.etcd import LocalEtcd  # noqa: E402
from tests.channels.conftest import write_bundle  # noqa: E402
from updater.lock.etcd import EtcdLockClient  # noqa: E402
from updater.lock.gateway import EtcdGateway as LockGateway  # noqa: E402
from updater.report import FleetReporter  # noqa: E402

_METRIC = re.compile(r'^grpc_server_started_total\{grpc_method="(\w+)",'
                     r'grpc_service="etcdserverpb\.\w+",[^}]*\} (\d+)', re.M)


def requests_by_method(url: str) -> dict[str, int]:
    text = requests.get(f"{url}/metrics", timeout=10).text
    out: dict[str, int] = {}
    for method, n in _METRIC.findall(text):
        out[method] = out.get(method, 0) + int(n)
    return out


def delta(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: b.get(k, 0) - a.get(k, 0) for k in b if b.get(k, 0) != a.get(k, 0)}


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


# --- 1. the lock -----------------------------------------------------------------------------


def bench_lock(etcd: LocalEtcd, waiters: int, slots: int, hold: float) -> None:
    group = f"bench-{uuid.uuid4().hex[:6]}"

    def client(name: str) -> EtcdLockClient:
        return EtcdLockClient(LockGateway([etcd.url], timeout=30), group, 300,
                              init_max=slots, token=f"{name}-token".ljust(32, "x"))

    blockers = client("blocker")
    for i in range(slots):  # every slot taken: the waiters queue up first
        blockers.lock(f"blocker-{i:03d}")
    takes: list[float] = []
    releases: list[float] = []
    mu = threading.Lock()
    failed_tries = [0]
    ready = threading.Barrier(waiters + 1)

    def host(i: int) -> None:
        me = f"host-{i:05d}"
        c = client(me)
        first = True
        while not c.acquire(me):
            if not first:
                with mu:
                    failed_tries[0] += 1
            if first:
                c._enqueue(me, ttl=1200)
                ready.wait()
                first = False
            c.wait_turn(me, 900)
        with mu:
            takes.append(time.monotonic())
        time.sleep(hold)
        t = time.monotonic()
        c.release(me)
        with mu:
            releases.append(t)

    pool = [threading.Thread(target=host, args=(i,), daemon=True) for i in range(waiters)]
    t0 = time.monotonic()
    for t in pool:
        t.start()
    ready.wait()
    queued = time.monotonic() - t0
    time.sleep(2.0)  # the last ones open their watches
    before = requests_by_method(etcd.url)
    quiet = 10.0
    time.sleep(quiet)
    idle = sum(delta(before, requests_by_method(etcd.url)).values())  # /metrics is not gRPC
    start_pass = requests_by_method(etcd.url)
    t1 = time.monotonic()
    for i in range(slots):
        releases.append(time.monotonic())
        blockers.unlock(f"blocker-{i:03d}")
    for t in pool:
        t.join()
    all_passed = time.monotonic() - t1
    used = delta(start_pass, requests_by_method(etcd.url))
    hand_offs = waiters  # each take follows one release (the blockers' or a waiter's)
    releases.sort()
    takes.sort()
    latency = [tk - rl for tk, rl in zip(takes, releases, strict=False)]
    print(f"lock: {waiters} waiters, max {slots}, each holding {hold:g}s "
          f"(queued in {queued:.1f}s)")
    print(f"  etcd requests while all wait:   {idle / quiet:.2f}/s "
          f"({idle} in {quiet:.0f}s; polling every 30s would be {waiters / 30:.0f}/s)")
    print(f"  etcd txns per hand-off:         {used.get('Txn', 0) / hand_offs:.2f} "
          f"(a take and a release; {failed_tries[0]} woken tries found no slot)")
    print(f"  etcd requests per hand-off:     {sum(used.values()) / hand_offs:.1f} "
          f"({', '.join(f'{k} {v / hand_offs:.1f}' for k, v in sorted(used.items()))})")
    print(f"  hand-off latency:               p50 {pct(latency, 50) * 1000:.0f} ms, "
          f"p99 {pct(latency, 99) * 1000:.0f} ms")
    ideal = waiters / slots * hold
    print(f"  time for all to pass:           {all_passed:.1f}s "
          f"(the holds alone: {ideal:.1f}s)")


# --- 2. reports ---------------------------------------------------------------------------------


def bench_reports(etcd: LocalEtcd, hosts: int, work: Path) -> None:
    EtcdGateway([etcd.url]).delete_prefix(fleet.ROOT + "/")
    gws = [LockGateway([etcd.url], timeout=30) for _ in range(16)]
    now = time.time()

    def write(i: int) -> None:
        state = work / "hosts" / f"{i:05d}"
        state.mkdir(parents=True)
        bad = ("1.1.0",) if i % 500 == 0 else ()
        r = fleet.HostReport(
            id=f"host-{i:05d}", version="1.1.0" if i % 3 else "1.0.0", slot="ab"[i % 2],
            channel="stable", group=f"g{i % 20}", state="rolled-back" if bad else "idle",
            bad_versions=bad, boot_id=uuid.uuid4().hex, time=now,
            last_result="updated to 1.1.0")
        FleetReporter(gws[i % len(gws)], state, 3 * 4200).publish(r)

    before = requests_by_method(etcd.url)
    t = time.monotonic()
    with ThreadPoolExecutor(16) as ex:
        list(ex.map(write, range(hosts)))
    first = time.monotonic() - t
    used = delta(before, requests_by_method(etcd.url))
    t = time.monotonic()
    again = [fleet.HostReport(id=f"host-{i:05d}", version="1.1.0", state="checking", time=now)
             for i in range(hosts)]

    def rewrite(i: int) -> None:  # a state change: the lease is kept, one txn
        r = FleetReporter(gws[i % len(gws)], work / "hosts" / f"{i:05d}", 3 * 4200)
        r.publish(again[i])

    with ThreadPoolExecutor(16) as ex:
        list(ex.map(rewrite, range(hosts)))
    second = time.monotonic() - t
    t = time.monotonic()
    snap = source.snapshot(EtcdGateway([etcd.url], timeout=60))
    text = table.render(snap)
    status = time.monotonic() - t
    assert len(snap["hosts"]) == hosts, len(snap["hosts"])
    need = hosts * 3 / 3600  # checking, idle, and now and then a change, per hourly check
    print(f"reports: {hosts} hosts")
    print(f"  first report (lease + write):   {hosts / first:.0f} hosts/s "
          f"({', '.join(f'{k} {v}' for k, v in sorted(used.items()))})")
    print(f"  a state change (one txn):       {hosts / second:.0f} writes/s sustained")
    print(f"  needed at {hosts} hosts hourly:  ~{need:.1f} writes/s (+{hosts / 4200:.1f} "
          "lease renewals/s)")
    print(f"  fleet status over {hosts}:      {status:.2f}s "
          f"(read {snap['read_seconds']:.2f}s, {len(text) // 1024} KiB of table)")


# --- 3. rollout waves, pause and pull ------------------------------------------------------------


def bench_waves(work: Path) -> None:
    waves = parse_waves("1%@0h,5%@6h,25%@24h,50%@48h,100%@72h")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    plan = RolloutPlan(start, waves)
    ids = [uuid.UUID(int=i * 2654435761 % 2**128).hex for i in range(100_000)]
    pos = [host_position(m, "1.3.0") for m in ids]
    worst = 0.0
    print("waves over 100000 machine ids (planned → observed):")
    for w in waves:
        opened = plan.open_percent(start + w.offset)
        got = 100 * sum(p < opened for p in pos) / len(pos)
        worst = max(worst, abs(got - w.percent))
        print(f"  {w}:  {w.percent:6.2f}% → {got:6.2f}%")
    print(f"  worst difference: {worst:.2f} points (goal ≤ 1)")
    repo = work / "repo"
    create(repo, None)
    with open_repository(repo) as tuf:
        ChannelRepository(tuf).publish(write_bundle(work / "b", "1.3.0", channel="stable"),
                                       "stable")
    server = ChannelServer(repo / "published")
    server.start()
    try:
        client = ChannelClient(server.url, "stable", work / "state",
                               repo / "published/metadata/root.json")
        assert client.offer("host-1", "1.2.0") is not None
        for change in ("pause", "resume", "pull"):
            with open_repository(repo) as tuf:
                getattr(ChannelRepository(tuf), change)("stable", "1.3.0")
            offer = client.offer("host-1", "1.2.0")  # the next poll
            print(f"  after {change}: next poll offers "
                  f"{offer.version if offer else 'nothing'}")
        c = server.counter
        assert client.offer("host-1", "1.2.0") is None  # warm
        sent, received, reqs = c.sent, c.received, c.requests
        assert client.offer("host-1", "1.2.0") is None  # the idle poll measured
        wire = c.sent - sent + c.received - received
        n = c.requests - reqs
    finally:
        server.stop()
    print(f"idle channel poll: {wire} bytes on the wire in {n} requests (goal ≤ 2048)")
    per_s = 100_000 / 3600
    print(f"  100000 hosts hourly: {per_s:.1f} requests/s, "
          f"{per_s * wire * 8 / 1e6:.2f} Mbit/s, {100_000 * wire * 24 / 1e9:.2f} GB/day")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--waiters", type=int, default=1000)
    ap.add_argument("--max", type=int, default=50)
    ap.add_argument("--hold", type=float, default=1.0, help="seconds each host holds its slot")
    ap.add_argument("--hosts", type=int, default=10_000)
    ap.add_argument("--skip", default="", help="comma list of lock,reports,waves")
    a = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # two sockets per waiter
    skip = set(a.skip.split(","))
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        work = Path(tmp)
        if "waves" not in skip:
            bench_waves(work)
        with LocalEtcd(work / "etcd" / "data", name="bench") as etcd:
            version = requests.get(f"{etcd.url}/version", timeout=5).json()["etcdserver"]
            print(f"etcd {version} on {etcd.url}")
            if "lock" not in skip:
                bench_lock(etcd, a.waiters, a.max, a.hold)
            if "reports" not in skip:
                bench_reports(etcd, a.hosts, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
