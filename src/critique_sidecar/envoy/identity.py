"""Identity handed from ext_authz to ext_proc as dynamic metadata."""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2 as core_pb
from google.protobuf import struct_pb2

from ..core.auth import Identity

# Envoy's ext_authz writes its dynamic metadata under its extension name, whatever the filter is
# called (the generated config forwards this namespace to ext_proc: envoy/config.py).
NAMESPACE = "envoy.filters.http.ext_authz"


def identity_metadata(identity: Identity) -> struct_pb2.Struct:
    meta = struct_pb2.Struct()
    meta.update({"account": identity.account, "key_id": identity.key_id, "scopes": ",".join(sorted(identity.scopes))})
    return meta


def identity_from_metadata(metadata: core_pb.Metadata) -> Identity | None:
    if NAMESPACE not in metadata.filter_metadata:
        return None
    fields = metadata.filter_metadata[NAMESPACE].fields
    if "account" not in fields or "key_id" not in fields:
        return None
    scopes = frozenset(s for s in fields["scopes"].string_value.split(",") if s) if "scopes" in fields else frozenset()
    return Identity(fields["account"].string_value, fields["key_id"].string_value, scopes)
