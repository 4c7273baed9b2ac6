"""The model catalog: load, validate, and price a request at its start time."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .upstream import UpstreamServer


def _non_negative(v: Decimal) -> Decimal:
    if not v.is_finite() or v < 0:
        raise ValueError("price must be a finite, non-negative decimal")
    return v


def _utc(v: datetime) -> datetime:
    if v.tzinfo is None or v.utcoffset() is None or v.utcoffset().total_seconds() != 0:  # type: ignore[union-attr]
        raise ValueError("times must be UTC (end with Z)")
    return v


UsdPerMillion = Annotated[Decimal, AfterValidator(_non_negative)]
UtcTime = Annotated[datetime, AfterValidator(_utc)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TokenPrice(_Strict):
    input: UsdPerMillion
    output: UsdPerMillion
    # Optional dimensions; absent, those tokens are billed at the input price.
    cached_input: UsdPerMillion | None = None  # prompt-cache reads
    cache_write_5m: UsdPerMillion | None = None  # prompt-cache writes kept 5 minutes
    cache_write_1h: UsdPerMillion | None = None  # prompt-cache writes kept 1 hour

    def priced(self, version: str, opt_in: bool) -> Price:
        return Price(
            self.input, self.output, version, opt_in, self.cached_input, self.cache_write_5m, self.cache_write_1h
        )


class Promotion(TokenPrice):
    id: str
    valid_from: UtcTime
    valid_to: UtcTime

    @model_validator(mode="after")
    def _ordered(self) -> Promotion:
        if self.valid_to <= self.valid_from:
            raise ValueError(f"promotion {self.id}: valid_to must be after valid_from")
        return self


# Endpoint names (core/endpoints/ registers each; a test keeps the two lists equal).
ENDPOINT_NAMES = ("chat.completions", "responses", "completions", "embeddings", "messages")
GENERATION_ENDPOINTS = ("chat.completions", "responses", "completions", "messages")  # a model's default
MediaKind = Literal["image", "audio", "file", "video"]

# An upstream's name: also part of its Envoy cluster's name (upstream_<name>).
UPSTREAM_NAME = r"^[a-z0-9][a-z0-9_-]{0,62}$"


class Model(_Strict):
    id: str = Field(min_length=1)
    role: str
    owned_by: str
    context_window: int = Field(gt=0)
    max_output_tokens: int = Field(0, ge=0)  # needed (> 0) by a model that generates
    # The output bound sent upstream (and held for) when a request names none; the model's
    # whole output budget (max_output_tokens) when unset.
    default_output_tokens: int | None = Field(None, gt=0)
    # What the model serves (endpoint names, core/endpoints/); a request to any other is a 404.
    endpoints: tuple[str, ...] = GENERATION_ENDPOINTS
    # Input kinds it takes besides text ("image", "audio", "file", "video"); unset: any, each item
    # held at the whole context window unless input_item_tokens bounds it.
    inputs: tuple[MediaKind, ...] | None = None
    input_item_tokens: dict[MediaKind, Annotated[int, Field(gt=0)]] = Field(default_factory=dict)
    upstream: str  # the name of an [upstreams.<name>] table
    # The id the model server knows this model by, sent in place of `id` (and shown back as `id`);
    # unset, the model server is sent `id` itself.
    upstream_model: str | None = Field(None, min_length=1, max_length=256)
    price: TokenPrice
    training_opt_in: TokenPrice | None = None
    promotions: tuple[Promotion, ...] = ()

    @field_validator("upstream", mode="before")
    @classmethod
    def _upstream_name(cls, v: object) -> object:
        if isinstance(v, dict):
            raise ValueError(
                "name an [upstreams.<name>] table here (an upstream is a model server's base URL, with "
                'optional replicas, TLS and a credential), e.g. [upstreams.local] base_urls = ["http://127.0.0.1:8000/v1"]'
            )
        return v

    @property
    def upstream_id(self) -> str:
        """The model id the model server is sent."""
        return self.upstream_model or self.id

    @field_validator("endpoints")
    @classmethod
    def _known_endpoints(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [e for e in v if e not in ENDPOINT_NAMES]
        if unknown or not v:
            raise ValueError(f"endpoints: expected some of {', '.join(ENDPOINT_NAMES)}; got {', '.join(v) or 'none'}")
        return v

    @model_validator(mode="after")
    def _generators_have_a_budget(self) -> Model:
        if self.max_output_tokens == 0 and set(self.endpoints) & set(GENERATION_ENDPOINTS):
            raise ValueError(f"model {self.id}: max_output_tokens (> 0) is needed by {', '.join(self.endpoints)}")
        return self

    @model_validator(mode="after")
    def _default_within_budget(self) -> Model:
        if self.default_output_tokens is not None and self.default_output_tokens > self.max_output_tokens:
            raise ValueError(f"model {self.id}: default_output_tokens must be at most max_output_tokens")
        return self


class Catalog(_Strict):
    version: str
    default_model: str
    # Not Field(min_length=1): pydantic would then also report "at least 1 item" whenever any
    # one model is invalid. Emptiness is checked below, once every model has validated.
    models: tuple[Model, ...]
    upstreams: dict[str, UpstreamServer] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> Catalog:
        if not self.models:
            raise ValueError("the catalog has no models")
        bad_names = sorted(n for n in self.upstreams if not re.fullmatch(UPSTREAM_NAME, n))
        if bad_names:
            raise ValueError(
                f"upstream name(s) {', '.join(map(repr, bad_names))}: lower-case letters, digits, '-' and '_'"
            )
        for m in self.models:
            if m.upstream not in self.upstreams:
                known = ", ".join(sorted(self.upstreams)) or "none"
                raise ValueError(
                    f"model {m.id}: upstream {m.upstream!r} is not an [upstreams.<name>] table (known: {known})"
                )
        ids = [m.id for m in self.models]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate model id(s): {', '.join(dupes)}")
        if self.default_model not in ids:
            raise ValueError(f"default_model {self.default_model!r} is not in the catalog")
        return self

    def model(self, model_id: str) -> Model | None:
        return self._by_id().get(model_id)

    def upstream_of(self, model: Model) -> UpstreamServer:
        return self.upstreams[model.upstream]

    def _by_id(self) -> dict[str, Model]:
        cached = self.__dict__.get("_index")
        if cached is None:
            cached = {m.id: m for m in self.models}
            object.__setattr__(self, "_index", cached)  # frozen model: cache once
        return cached


@dataclass(frozen=True, slots=True)
class Price:
    """The price a request is charged at, and which version of the catalog it came from.
    A dimension without its own price (None) is billed at the input price."""

    input: Decimal
    output: Decimal
    version: str
    opt_in: bool
    cached_input: Decimal | None = None  # cache reads
    cache_write_5m: Decimal | None = None
    cache_write_1h: Decimal | None = None

    def of(self, dimension: Decimal | None) -> Decimal:
        return self.input if dimension is None else dimension

    @property
    def highest_input(self) -> Decimal:
        """What an input token can cost at most: the hold prices the input bound at it."""
        return max(self.input, self.of(self.cached_input), self.of(self.cache_write_5m), self.of(self.cache_write_1h))


def price_for(catalog: Catalog, model: Model, at: datetime, opt_in: bool) -> Price:
    """Price at the request's start time. The training opt-in tier applies only to models
    that have one; otherwise a promotion valid at `at` applies; otherwise list price."""
    if opt_in and model.training_opt_in is not None:
        return model.training_opt_in.priced(f"{catalog.version}/{model.id}/training-opt-in", True)
    for promo in model.promotions:
        if promo.valid_from <= at < promo.valid_to:
            return promo.priced(f"{catalog.version}/{model.id}/promo:{promo.id}", False)
    return model.price.priced(f"{catalog.version}/{model.id}/list", False)


class CatalogError(ValueError):
    """The catalog file is missing or invalid; the message says where."""


def load_catalog(path: str | Path | None = None) -> Catalog:
    try:
        if path is None:
            text = resources.files("critique_sidecar").joinpath("catalog.toml").read_text("utf-8")
            where = "built-in catalog.toml"
        else:
            text = Path(path).read_text("utf-8")
            where = str(path)
        data = tomllib.loads(text)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CatalogError(f"catalog {path or 'built-in catalog.toml'}: {exc}") from exc
    try:
        return Catalog.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors())
        raise CatalogError(f"catalog {where} is invalid: {problems}") from exc
