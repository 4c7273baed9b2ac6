"""Prompt capture for the DeepSeek V4 Flash training opt-in tier.

The only place payloads are kept, and only for requests that opted in (header or account
setting), on a model with an opt-in tier, that completed with reported usage. The rule that
ties price to capture: **the opt-in price applies only if the capture was written**; when the
sink is off, full, slow or unreachable, the request is charged the normal price instead and
the failure is logged without payload."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import orjson


@dataclass(frozen=True, slots=True)
class CaptureRecord:
    request_id: str
    account: str
    key_id: str
    model: str
    ts_ms: int
    messages: list[Any]
    completion: str
    input_tokens: int
    output_tokens: int
    credits: int  # micro-credits charged at the opt-in price
    usd: str
    price_version: str

    def to_json(self) -> bytes:
        return orjson.dumps({name: getattr(self, name) for name in self.__slots__})


class CaptureSink(Protocol):
    async def write(self, record: CaptureRecord) -> None:
        """Store the record or raise; must not take longer than the caller's timeout."""
