"""The usage record's fields and their protobuf types, read from proto/usage_record.proto's
generated module: the one schema the stream, the export and the provisioning API's document share."""

from __future__ import annotations

from .._generated.usage_record_pb2 import UsageRecord as UsageRecordPb

SCHEMA: tuple[tuple[str, int], ...] = tuple((f.name, f.type) for f in UsageRecordPb.DESCRIPTOR.fields)
