"""This host's report to the fleet, in the etcd its reboot lock uses (``channels.fleet``).

The report is written on every state change and every check, on a lease of three check
intervals (a host that is gone disappears by itself); its lease id is kept in
``state_dir/report-lease`` across the daemon's steps and renewed once a third of its time
has passed.  With the report go the rollback keys the halt rule reads.  Writing never stops
the agent: a failure is one warning line (the first of a streak; ``report-failing`` marks
it) and this process writes no more reports.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from channels import fleet
from updater.config import AgentConfig, Strategy
from updater.errors import LockError, UpdaterError
from updater.lock import password_reader
from updater.lock.gateway import EtcdGateway
from updater.state import atomic_write

log = logging.getLogger(__name__)
LEASE_FILE = "report-lease"
FAILING = "report-failing"


class FleetReporter:
    def __init__(self, gateway: EtcdGateway, state_dir: Path, ttl: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.gw = gateway
        self.state_dir = Path(state_dir)
        self.ttl = max(int(ttl), 60)
        self.clock = clock
        self.broken = False
        self.last = ""

    # --- the lease, kept across steps ------------------------------------------------------

    def _saved_lease(self) -> tuple[int, float]:
        try:
            d = json.loads((self.state_dir / LEASE_FILE).read_text())
            return int(d["lease"]), float(d["renewed"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0, 0.0

    def _lease(self, fresh: bool = False) -> int:
        lease, renewed = (0, 0.0) if fresh else self._saved_lease()
        now = self.clock()
        if lease and now - renewed < self.ttl / 3:
            return lease
        if lease and self.gw.lease_keepalive(lease) > 0:
            self._keep(lease, now)
            return lease
        lease = self.gw.lease_grant(self.ttl)
        self._keep(lease, now)
        return lease

    def _keep(self, lease: int, now: float) -> None:
        try:
            atomic_write(self.state_dir / LEASE_FILE,
                         json.dumps({"lease": lease, "renewed": now}) + "\n")
        except OSError as e:
            log.debug("fleet report: cannot keep the lease id: %s", e.strerror)

    # --- writing ----------------------------------------------------------------------------

    def _write(self, report: fleet.HostReport, lease: int) -> None:
        ops = [self.gw.op_put(fleet.host_key(report.id), report.to_json(), lease)]
        ops += [self.gw.op_put(fleet.rollback_key(report.group, v, report.id), "", lease)
                for v in report.bad_versions]
        self.gw.txn([], ops)

    @property
    def refresh_every(self) -> float:
        """How often a host that stays in one state (waiting for the lock) writes its report
        again, so that its lease does not run out: a third of the lease."""
        return self.ttl / 3

    def publish(self, report: fleet.HostReport, again: bool = False) -> None:
        """Write ``report`` unless it is what this process wrote last (``again``: even then,
        to renew its lease and time); never raises."""
        text = json.dumps({**report.to_dict(), "time": 0}, sort_keys=True)
        if self.broken or (text == self.last and not again):
            return
        try:
            try:
                self._write(report, self._lease())
            except LockError as e:
                if "lease" not in str(e).lower():
                    raise
                self._write(report, self._lease(fresh=True))  # the lease ran out meanwhile
        except (UpdaterError, OSError) as e:
            self.broken = True
            self._failing(f"fleet report: cannot write {fleet.host_key(report.id)}: {e}; "
                          "updating goes on without it")
            return
        self.last = text
        self._failing("")

    def _failing(self, why: str) -> None:
        marker = self.state_dir / FAILING
        if why:
            if marker.exists():
                log.debug("%s", why)
                return
            log.warning("%s", why)
            try:
                marker.write_text(why + "\n")
            except OSError:
                pass
        elif marker.exists():
            log.info("fleet report: written again")
            marker.unlink(missing_ok=True)

    # --- reading: the halt rule's input -----------------------------------------------------

    def rollbacks(self, group: str) -> dict[str, set[str]]:
        """version → the hosts of ``group`` that rolled it back.

        Raises: LockError (etcd unreachable).
        """
        keys = self.gw.get_prefix(fleet.rollbacks_prefix(group), keys_only=True)
        return fleet.parse_rollback_keys((kv.key for kv in keys), group)


def make_reporter(config: AgentConfig) -> FleetReporter | None:
    """The reporter of ``config``: only the etcd-lock strategy has an etcd to report to."""
    if config.strategy is not Strategy.ETCD_LOCK:
        return None
    try:
        gw = EtcdGateway(config.etcd_endpoints, ca=config.etcd_ca, cert=config.etcd_cert,
                         key=config.etcd_key, timeout=5.0, user=config.etcd_user,
                         password=password_reader(config.etcd_password_file))
    except LockError as e:
        log.warning("fleet report: %s", e)
        return None
    return FleetReporter(gw, config.state_dir, 3 * (config.interval + config.jitter))
