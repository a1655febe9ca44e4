"""Cloud-config: a cluster file -> certificates and per-node cloud-init user-data."""

from imagebuild.cloudconfig.certs import generate_certs
from imagebuild.cloudconfig.model import Cluster, Node, Provider, Role, Strategy
from imagebuild.cloudconfig.parse import parse_cluster_file, parse_cluster_text
from imagebuild.cloudconfig.render import render_user_data, update_mapping
from imagebuild.cloudconfig.validate import validate_user_data

__all__ = [
    "Cluster",
    "Node",
    "Provider",
    "Role",
    "Strategy",
    "generate_certs",
    "parse_cluster_file",
    "parse_cluster_text",
    "render_user_data",
    "update_mapping",
    "validate_user_data",
]
