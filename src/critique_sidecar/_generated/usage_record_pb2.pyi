from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class UsageRecord(_message.Message):
    __slots__ = ("ts_ms", "request_id", "account", "key_id", "model", "input_tokens", "output_tokens", "credits", "usd", "price_version", "opt_in", "estimated", "status", "latency_ms", "overage", "cached_input_tokens", "cache_write_5m_tokens", "cache_write_1h_tokens", "reasoning_tokens", "endpoint", "end_user", "paid_by")
    TS_MS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    USD_FIELD_NUMBER: _ClassVar[int]
    PRICE_VERSION_FIELD_NUMBER: _ClassVar[int]
    OPT_IN_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    OVERAGE_FIELD_NUMBER: _ClassVar[int]
    CACHED_INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHE_WRITE_5M_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHE_WRITE_1H_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REASONING_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    END_USER_FIELD_NUMBER: _ClassVar[int]
    PAID_BY_FIELD_NUMBER: _ClassVar[int]
    ts_ms: int
    request_id: str
    account: str
    key_id: str
    model: str
    input_tokens: int
    output_tokens: int
    credits: int
    usd: str
    price_version: str
    opt_in: bool
    estimated: bool
    status: str
    latency_ms: int
    overage: int
    cached_input_tokens: int
    cache_write_5m_tokens: int
    cache_write_1h_tokens: int
    reasoning_tokens: int
    endpoint: str
    end_user: str
    paid_by: str
    def __init__(self, ts_ms: _Optional[int] = ..., request_id: _Optional[str] = ..., account: _Optional[str] = ..., key_id: _Optional[str] = ..., model: _Optional[str] = ..., input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., credits: _Optional[int] = ..., usd: _Optional[str] = ..., price_version: _Optional[str] = ..., opt_in: _Optional[bool] = ..., estimated: _Optional[bool] = ..., status: _Optional[str] = ..., latency_ms: _Optional[int] = ..., overage: _Optional[int] = ..., cached_input_tokens: _Optional[int] = ..., cache_write_5m_tokens: _Optional[int] = ..., cache_write_1h_tokens: _Optional[int] = ..., reasoning_tokens: _Optional[int] = ..., endpoint: _Optional[str] = ..., end_user: _Optional[str] = ..., paid_by: _Optional[str] = ...) -> None: ...
