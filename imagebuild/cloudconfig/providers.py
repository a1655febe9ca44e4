"""How each provider tells a host its own address and hostname, and which datasource it uses.

The node's cluster address always comes from the cluster file (etcd's static member list and
swarm need it before any host exists). On clouds with a metadata service, the host also asks
the service (``/etc/tidehost/bin/tidehost-metadata``) and publishes what it saw next to the
configured address, so a mismatch is visible with ``etcdctl``. All metadata services are
reached at the link-local 169.254.169.254.
"""

from __future__ import annotations

from dataclasses import dataclass

from imagebuild.core.platforms import PLATFORMS, Provider

METADATA_IP = "169.254.169.254"


@dataclass(frozen=True)
class ProviderInfo:
    provider: Provider
    address_url: str = ""  # metadata URL of the private IPv4 address ("" = static)
    hostname_url: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    token_url: str = ""  # EC2 IMDSv2: PUT for a session token first
    token_ttl_header: str = ""
    token_header: str = ""

    @property
    def datasources(self) -> tuple[str, ...]:
        """The cloud-init datasource_list pinned for later boots (``core.platforms``)."""
        return PLATFORMS[self.provider].datasources


PROVIDERS: dict[Provider, ProviderInfo] = {
    Provider.EC2: ProviderInfo(
        Provider.EC2,
        address_url=f"http://{METADATA_IP}/latest/meta-data/local-ipv4",
        hostname_url=f"http://{METADATA_IP}/latest/meta-data/local-hostname",
        token_url=f"http://{METADATA_IP}/latest/api/token",
        token_ttl_header="X-aws-ec2-metadata-token-ttl-seconds",
        token_header="X-aws-ec2-metadata-token",
    ),
    Provider.GCE: ProviderInfo(
        Provider.GCE,
        address_url=f"http://{METADATA_IP}/computeMetadata/v1/instance/network-interfaces/0/ip",
        hostname_url=f"http://{METADATA_IP}/computeMetadata/v1/instance/hostname",
        headers=(("Metadata-Flavor", "Google"),),
    ),
    Provider.DIGITALOCEAN: ProviderInfo(
        Provider.DIGITALOCEAN,
        address_url=f"http://{METADATA_IP}/metadata/v1/interfaces/private/0/ipv4/address",
        hostname_url=f"http://{METADATA_IP}/metadata/v1/hostname",
    ),
    Provider.VAGRANT: ProviderInfo(Provider.VAGRANT),
    Provider.NOCLOUD: ProviderInfo(Provider.NOCLOUD),
}
