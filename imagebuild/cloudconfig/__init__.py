"""cloudconfig: a cluster file -> certificates and per-node cloud-init user-data.

The cluster file is parsed once into a frozen ``model.Cluster`` (``parse``); ``certs`` makes
the cluster CA and the nodes' etcd certificates; ``render`` fills the templates of
``cloud-config/`` (shipped here as ``templates/``) for one node and one provider; ``seed``
writes a NoCloud seed folder; ``validate`` runs the real ``cloud-init schema``. Imports
``core`` only.
"""

from imagebuild.cloudconfig.certs import generate_certs
from imagebuild.cloudconfig.model import Cluster, Node, Role, Strategy
from imagebuild.cloudconfig.parse import parse_cluster_file, parse_cluster_text
from imagebuild.cloudconfig.render import render_user_data, update_mapping
from imagebuild.cloudconfig.validate import validate_user_data
from imagebuild.core.platforms import Provider

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
