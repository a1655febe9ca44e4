"""``tidehost-update``: the on-host command.  ``main()`` is the only place errors become exit
codes (0 ok, 1 error, 2 usage, 3 lock busy: the reboot lock, or the agent's step lock)."""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from channels.errors import ChannelError
from updater import config as cfgmod
from updater.errors import (
    ChannelUnavailable,
    ConfigError,
    LockBusy,
    LockError,
    StepBusy,
    UpdaterError,
)

log = logging.getLogger("updater")
STEP_WAIT = 30.0  # default seconds a verb waits for the agent's step lock
WAIT_RESYNC = 900.0  # lock lock --wait: longest wait on a watch before it reads again


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tidehost-update", description="Tidehost update agent")
    p.add_argument("--config", type=Path, default=cfgmod.CONFIG_FILE, help="operator config")
    p.add_argument("--defaults", type=Path, default=cfgmod.DEFAULTS_FILE, help="defaults")
    p.add_argument("--debug", action="store_true", help="debug logs and tracebacks")
    sub = p.add_subparsers(dest="verb", required=True)
    sub.add_parser("daemon", help="run the agent (the systemd service)")
    st = sub.add_parser("status", help="version, slot, channel, state, last check, lock")
    st.add_argument("--json", action="store_true")
    busy = argparse.ArgumentParser(add_help=False)
    busy.add_argument("--wait", type=float, default=STEP_WAIT, metavar="SECONDS",
                      help="how long to wait while the agent is busy with a step "
                           f"(default {STEP_WAIT:.0f}; 0: refuse at once)")
    sub.add_parser("check", parents=[busy],
                   help="ask the channel now and stage a newer release (no reboot)")
    sub.add_parser("apply", parents=[busy],
                   help="stage now, then take the lock and reboot (ignores window)")
    rb = sub.add_parser("rollback", parents=[busy],
                        help="boot the other slot from the next reboot on")
    rb.add_argument("--now", action="store_true", help="take the lock and reboot now")
    sub.add_parser("health", help="wait for the health checks (the health-check unit)")
    sub.add_parser("bless-guard", help="exit 1 when the loader counted a try of another entry "
                   "than the one that booted (systemd-bless-boot's ExecCondition)")
    lk = sub.add_parser("lock", help="the reboot lock (like locksmithctl)")
    lk.add_argument("--etcd", help="etcd endpoints URL[,URL…] (default: config)")
    lk.add_argument("--group", help="lock group (default: config)")
    where = argparse.ArgumentParser(add_help=False)  # also accepted after the lock verb
    where.add_argument("--etcd", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    where.add_argument("--group", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    lsub = lk.add_subparsers(dest="lock_verb", required=True)
    ls = lsub.add_parser("status", parents=[where])
    ls.add_argument("--json", action="store_true")
    ll = lsub.add_parser("lock", parents=[where])
    ll.add_argument("id", nargs="?")
    ll.add_argument("--wait", action="store_true",
                    help="wait in the group's queue until a slot is free (on a watch)")
    ll.add_argument("--lease", type=int, help="seconds the hold lives without renewal "
                                              "(5 to 604800)")
    lu = lsub.add_parser("unlock", parents=[where])
    lu.add_argument("id", nargs="?")
    lm = lsub.add_parser("set-max", parents=[where])
    lm.add_argument("max", type=int)
    return p


def _setup_logging(debug: bool) -> None:
    fmt = "%(levelname)s %(name)s: %(message)s" if debug else "%(message)s"
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format=fmt,
                        stream=sys.stderr)
    logging.getLogger("urllib3").setLevel(logging.WARNING)


def _agent(config: cfgmod.AgentConfig, *, need_channel: bool, need_lock: bool = True) -> Any:
    from updater.agent import Agent
    from updater.channel import make_channel
    from updater.host import SystemdHost
    from updater.lock import NoLock, make_lock
    from updater.report import make_reporter

    channel = make_channel(config)
    if need_channel and channel is None:
        raise ChannelUnavailable(f"no channel configured (set channel.url in {cfgmod.CONFIG_FILE})")
    return Agent(config, SystemdHost(), make_lock(config) if need_lock else NoLock(), channel,
                 fleet=make_reporter(config) if need_lock else None)


def _ts(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%SZ") if t else "never"


def cmd_status(config: cfgmod.AgentConfig, as_json: bool) -> None:
    st = _agent(config, need_channel=False, need_lock=False).status()
    if as_json:
        print(json.dumps(st, indent=2, sort_keys=True))
        return
    target = f" → {st['target_version']} on slot {st['target_slot'].upper()}" \
        if st["target_version"] and st["state"] not in ("idle", "rolled-back") else ""
    print(f"version {st['version']} on slot {st['slot'].upper() or '?'}, "
          f"channel {st['channel']}, state {st['state']}{target}")
    print(f"last check {_ts(st['last_check'])}, next {_ts(st['next_check'])}, "
          f"lock {'held' if st['lock_held'] else 'not held'} ({st['strategy']}, "
          f"group {st['group']})")
    if st["last_result"]:
        print(f"last result: {st['last_result']}")
    if st["fetched_bytes"] or st["reused_bytes"]:
        print(f"last download: {st['fetched_bytes']} bytes fetched, {st['reused_bytes']} "
              "reused from this host's slots")
    if st["last_error"]:
        print(f"last error: {st['last_error']}")
    if st["halted"]:
        print(f"halted: {st['halted']}")
    if st["bad_versions"]:
        print(f"never again: {', '.join(st['bad_versions'])}")


def cmd_daemon(config: cfgmod.AgentConfig, *, fork: bool = True) -> None:
    """Run the service; the agent (and its HTTP/TUF stack) is built inside each step."""
    from updater.daemon import run_daemon

    if not config.channel_configured:
        log.info("no channel configured (channel.url in %s): idling", cfgmod.CONFIG_FILE)

    def make_agent() -> Any:
        try:
            return _agent(config, need_channel=False)
        except (ChannelUnavailable, ChannelError) as e:
            log.error("channel %s: %s; not checking for updates", config.channel_url, e)
            return _agent(replace(config, channel_url=""), need_channel=False)

    run_daemon(make_agent, config.state_dir, fork=fork, deadlines=config.deadlines,
               health_deadline=config.health_deadline)


def cmd_lock(config: cfgmod.AgentConfig, a: argparse.Namespace) -> None:
    from updater.fields import MAX_SLOTS
    from updater.host import SystemdHost
    from updater.lock import etcd_lock, host_token
    from updater.lock.semaphore import check_holder, shown

    lease = getattr(a, "lease", None)
    if lease is not None:
        try:
            cfgmod.LEASE(lease)
        except ValueError as e:
            raise LockError(f"--lease: {e}") from None
    if a.lock_verb == "set-max" and not 0 <= a.max <= MAX_SLOTS:
        raise LockError(f"set-max: {a.max} is not from 0 to {MAX_SLOTS}")
    token = host_token(config.state_dir) if a.lock_verb == "lock" else ""
    client = etcd_lock(config, endpoints=tuple(a.etcd.split(",")) if a.etcd else None,
                       group=a.group, lease=lease, token=token)
    holder = getattr(a, "id", None) or config.node or SystemdHost().machine_id()
    if a.lock_verb == "status":
        sem = client.status()
        if a.json:
            print(json.dumps({"group": client.group, "max": sem.max,
                              "holders": list(sem.holders)}))
        else:
            print(f"Group: {client.group}\nAvailable: {sem.semaphore}\nMax: {sem.max}")
            if sem.holders:  # ids other clients wrote are escaped: one line each
                print("\nMachine IDs:\n" + "\n".join(map(shown, sem.holders)))
        return
    if a.lock_verb in ("lock", "unlock"):
        if not holder:
            raise LockError("no holder id given and /etc/machine-id is empty")
        check_holder(holder)
    if a.lock_verb == "lock":
        while not client.acquire(holder):
            if not a.wait:
                raise LockBusy(f"group {client.group}: no free slot")
            # in the group's queue, on a watch; re-read after a long, jittered while
            client.wait_turn(holder, WAIT_RESYNC * (0.6 + 0.4 * random.random()))
        print(f"{holder} holds the lock of group {client.group}")
    elif a.lock_verb == "unlock":
        client.unlock(holder, force=True)  # the operator may release any host's slot
        print(f"{holder} released the lock of group {client.group}")
    elif a.lock_verb == "set-max":
        old = client.status().max
        sem = client.set_max(a.max)
        print(f"Old: {old}\nNew: {sem.max}")


def cmd_health(config: cfgmod.AgentConfig) -> None:
    from updater import health
    from updater.host import SystemdHost

    bad = health.wait_healthy(SystemdHost(), config.health_units, config.health_commands,
                              config.health_deadline, boot_complete=False)
    if bad:
        raise UpdaterError(f"unhealthy: {', '.join(bad)}")
    log.info("healthy")
    from updater.secureboot import bless_guard

    if why := bless_guard():  # systemd-bless-boot's ExecCondition skips the blessing
        log.warning("%s", why)


def _config_for_daemon(path: Path, defaults: Path) -> cfgmod.AgentConfig:
    """The config, waiting (the service stays up, ready) until the files are valid."""
    from updater.daemon import notify

    failures = 0
    last = ""
    while True:
        try:
            return cfgmod.load(path, defaults)
        except ConfigError as e:
            failures += 1
            if str(e) != last:
                log.error("%s (the agent waits for a valid configuration)", e)
                last = str(e)
            notify("READY=1")
            notify(f"STATUS=invalid configuration: {e}")
            time.sleep(min(5.0 * 2 ** min(failures, 6), 300.0))


def run(argv: list[str] | None = None) -> None:
    a = _parser().parse_args(argv)
    _setup_logging(a.debug)
    if a.verb == "daemon":
        cmd_daemon(_config_for_daemon(a.config, a.defaults))
        return
    if a.verb == "bless-guard":  # no configuration: it runs before anything else could
        from updater.secureboot import bless_guard

        if why := bless_guard():
            raise UpdaterError(why)
        return
    if a.verb == "health":
        try:
            config = cfgmod.load(a.config, a.defaults)
        except ConfigError as e:  # the gate still runs the image's own checks
            log.error("%s; checking with the defaults of %s only", e, a.defaults)
            config = cfgmod.load(Path("/nonexistent"), a.defaults)
        cmd_health(config)
        return
    config = cfgmod.load(a.config, a.defaults)
    if a.verb == "status":
        cmd_status(config, a.json)
    elif a.verb == "health":
        cmd_health(config)
    elif a.verb == "lock":
        cmd_lock(config, a)
    else:
        from updater.daemon import exclusive

        agent = _agent(config, need_channel=a.verb in ("check", "apply"))
        with exclusive(config.state_dir, wait=max(a.wait, 0.0), what=f"tidehost-update {a.verb}"):
            if a.verb == "check":
                s, _ = agent.check_and_stage(agent.load())
                if s.phase.value == "error":
                    raise UpdaterError(s.last_error)
                print(f"{s.phase}: {s.target_version or agent.version}")
            elif a.verb == "apply":
                s = agent.apply_now()
                print(f"{s.phase}{': ' + s.target_version if s.target_version else ''}")
            elif a.verb == "rollback":
                s = agent.rollback()
                print(f"slot {s.target_slot.upper()} ({s.target_version}) boots next")
                if a.now:
                    agent.apply_now()


def main(argv: list[str] | None = None) -> int:
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        run(argv)
    except (LockBusy, StepBusy) as e:
        print(f"tidehost-update: {e}", file=sys.stderr)
        return 3
    except (UpdaterError, ChannelError) as e:
        print(f"tidehost-update: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # the one boundary: a bug, not bad input
        if debug:
            raise
        print(f"tidehost-update: internal error: {type(e).__name__}: {e} (use --debug)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
