"""Figures of the update agent (issue 4).

1. Apply time of a ~200 MB payload (plus a 12 MB kernel and a 40 MB initrd) into the
   inactive slot (``updater.slots.write_slot``: usr.verity checked against the root hash,
   usr.img and usr.verity written (O_DIRECT) and fsynced while two threads hash every block
   of usr.img against the tree and the kernel/initrd are copied to the ESP, then both
   partitions read back from the devices and compared, then the boot entry) against
   ``dd bs=4M conv=fsync`` of the same bytes to the same loop devices and ESP directory, in
   pairs (alternating which goes first); the figure is the median of the per-pair ratios
   (the machine is shared: single runs are noisy).  Goal: apply ≤ 1.15 × dd.  Also
   reported: the partition-write phase alone, the tree check of usr.img alone (one thread,
   no I/O: what the hashing costs), dd + ``veritysetup verify``, and apply with
   ``full_verify`` (``veritysetup verify`` on top).
2. Idle RSS of ``tidehost-update daemon`` with a config pointing nowhere (goal ≤ 40 MB).

Run as root (loop devices): ``.venv/bin/python bench/updater_bench.py [--size-mb 200]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from channels.bundle import FILES, Slot, load_bundle  # noqa: E402
from updater import slots, verity  # noqa: E402
from updater.slots import SlotDevices, write_slot  # noqa: E402


def sh(*argv: str, **kw: object) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kw).stdout


def make_bundle(d: Path, size_mb: int) -> Path:
    b = d / "tidehost-9.0.0.release"
    b.mkdir()
    with open(b / "usr.img", "wb") as f:
        for _ in range(size_mb):
            f.write(os.urandom(1 << 20))
    out = sh("veritysetup", "format", str(b / "usr.img"), str(b / "usr.verity"))
    roothash = re.search(r"Root hash:\s+([0-9a-f]{64})", out)[1]  # type: ignore[index]
    (b / "vmlinuz").write_bytes(os.urandom(12 << 20))
    (b / "initrd").write_bytes(os.urandom(40 << 20))

    def sha(p: Path) -> str:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            while c := f.read(1 << 20):
                h.update(c)
        return h.hexdigest()

    files = {n: {"size": (b / n).stat().st_size, "sha256": sha(b / n)} for n in FILES}
    (b / "manifest.json").write_text(json.dumps({
        "format": 1, "name": "tidehost", "version": "9.0.0", "channel": "stable",
        "build_id": "bench", "arch": "x86-64", "suite": "trixie", "usr_filesystem": "squashfs",
        "roothash": roothash, "kernel_cmdline": "", "boot_tries": 3, "files": files}))
    return b


def make_disk(image: Path, usr_mb: int) -> dict[str, Path]:
    layout = [("USR-A", usr_mb), ("USR-A-VERITY", 8), ("USR-B", usr_mb), ("USR-B-VERITY", 8)]
    with open(image, "wb") as f:
        f.truncate((sum(mb for _, mb in layout) + 2) << 20)
    sh("sfdisk", "--quiet", str(image),
       input="label: gpt\n" + "".join(f"size={mb}MiB, name={n}\n" for n, mb in layout))
    table = json.loads(sh("sfdisk", "--json", str(image)))["partitiontable"]
    parts = {}
    for p in table["partitions"]:
        parts[p["name"]] = Path(sh("losetup", "-f", "--show", "-o", str(p["start"] * 512),
                                   "--sizelimit", str(p["size"] * 512), str(image)).strip())
    return parts


def bench_apply(work: Path, size_mb: int, runs: int) -> dict[str, float]:
    bundle = make_bundle(work, size_mb)
    manifest = load_bundle(bundle)
    parts = make_disk(work / "disk.img", size_mb + 16)
    esp = work / "efi"
    (esp / "loader/entries").mkdir(parents=True)
    b = SlotDevices(parts["USR-B"], parts["USR-B-VERITY"])
    a = SlotDevices(parts["USR-A"], parts["USR-A-VERITY"])
    t_apply, t_write, t_dd, t_dd_verify, t_full, ratios = [], [], [], [], [], []
    orig_stream = slots._stream
    write_time = [0.0]

    def timed_stream(src: Path, dest: Path) -> int:
        t = time.perf_counter()
        n = orig_stream(src, dest)
        write_time[0] += time.perf_counter() - t
        return n

    def dd() -> float:
        t = time.perf_counter()
        for src, dst in (("usr.img", b.usr), ("usr.verity", b.verity),
                         ("vmlinuz", esp / "dd-vmlinuz"), ("initrd", esp / "dd-initrd")):
            sh("dd", f"if={bundle / src}", f"of={dst}", "bs=4M", "conv=fsync", "status=none")
        return time.perf_counter() - t

    def apply(full: bool = False) -> float:
        t = time.perf_counter()
        write_slot(bundle, manifest, Slot.B, active=Slot.A, devices=b, active_devices=a,
                   esp=esp, tries=3, full_verify=full)
        return time.perf_counter() - t

    slots._stream = timed_stream  # type: ignore[assignment]
    try:
        apply()  # warm-up: first writes to a fresh loop device are slow
        dd()
        for i in range(runs):  # pairs, alternating which goes first
            sh("sync")
            write_time[0] = 0.0
            if i % 2:
                t_dd.append(dd())
                sh("sync")
                t_apply.append(apply())
            else:
                t_apply.append(apply())
                sh("sync")
                t_dd.append(dd())
            t_write.append(write_time[0])
            ratios.append(t_apply[-1] / t_dd[-1])
            t = time.perf_counter()
            sh("veritysetup", "verify", str(b.usr), str(b.verity), manifest.roothash)
            t_dd_verify.append(t_dd[-1] + time.perf_counter() - t)
        for _ in range(max(1, runs // 3)):
            sh("sync")
            t_full.append(apply(full=True))
    finally:
        slots._stream = orig_stream  # type: ignore[assignment]
        for dev in parts.values():
            subprocess.run(["losetup", "-d", str(dev)], check=False)
    med = statistics.median
    tree = verity.source_tree(bundle / "usr.verity", manifest.files["usr.img"].size,
                              manifest.roothash)
    t_tree = []
    for _ in range(3):
        t = time.perf_counter()
        verity.check_data(bundle / "usr.img", tree, manifest.roothash, threads=1)
        t_tree.append(time.perf_counter() - t)
    return {"payload_mb": size_mb, "runs": runs, "apply_s": med(t_apply),
            "tree_check_alone_s": min(t_tree),
            "apply_stream_phase_s": med(t_write), "apply_full_verify_s": med(t_full),
            "dd_s": med(t_dd), "dd_plus_verify_s": med(t_dd_verify),
            "apply_over_dd": med(ratios),
            "apply_over_dd_min": min(ratios), "apply_over_dd_max": max(ratios),
            "full_verify_over_dd": med(t_full) / med(t_dd),
            "apply_over_dd_plus_verify": med(t_apply) / med(t_dd_verify)}


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def bench_rss(work: Path, settle: float) -> dict[str, float]:
    out = {}
    (work / "root.json").write_text("{}")
    for name, channel in (("no_channel", ""),
                          ("channel_unreachable", "http://127.0.0.1:9/")):
        cfg = work / f"{name}.yaml"
        cfg.write_text(f"channel: {{url: '{channel}', root: {work}/root.json}}\n"
                       f"etcd: {{endpoints: [http://127.0.0.1:9]}}\n"
                       f"state_dir: {work}/state-{name}\nmetrics_file: {work}/{name}.prom\n")
        exe = shutil.which("tidehost-update", path=str(Path(sys.executable).parent))
        argv = [exe] if exe else [sys.executable, "-m", "updater.cli"]
        proc = subprocess.Popen([*argv, "--config", str(cfg), "--defaults", "/nonexistent",
                                 "daemon"], cwd=REPO, stderr=subprocess.DEVNULL)
        time.sleep(settle)
        alive = proc.poll() is None
        out[f"rss_mb_{name}"] = rss_kb(proc.pid) / 1024 if alive else float("nan")
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        out[f"exit_{name}"] = proc.returncode
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=200)
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--settle", type=float, default=5.0)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="updater-bench-", dir="/var/tmp") as tmp:
        res = bench_apply(Path(tmp), a.size_mb, a.runs)
    with tempfile.TemporaryDirectory(prefix="updater-bench-") as tmp:
        res.update(bench_rss(Path(tmp), a.settle))
    for k, v in res.items():
        print(f"{k:28s} {v:.3f}" if isinstance(v, float) else f"{k:28s} {v}")
    rss = max(res["rss_mb_no_channel"], res["rss_mb_channel_unreachable"])
    print(f"goal apply ≤ 1.15 × dd: {'met' if res['apply_over_dd'] <= 1.15 else 'NOT met'} "
          f"(with full_verify {res['full_verify_over_dd']:.2f} × dd); "
          f"goal idle RSS ≤ 40 MB: {'met' if rss <= 40 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
