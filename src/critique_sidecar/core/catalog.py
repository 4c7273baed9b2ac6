"""The model catalog: load, validate, and price a request at its start time."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator


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


class Promotion(TokenPrice):
    id: str
    valid_from: UtcTime
    valid_to: UtcTime

    @model_validator(mode="after")
    def _ordered(self) -> Promotion:
        if self.valid_to <= self.valid_from:
            raise ValueError(f"promotion {self.id}: valid_to must be after valid_from")
        return self


class Upstream(_Strict):
    cluster: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    host: str
    port: int = Field(ge=1, le=65535)


class Model(_Strict):
    id: str = Field(min_length=1)
    role: str
    owned_by: str
    context_window: int = Field(gt=0)
    max_output_tokens: int = Field(gt=0)
    # The output bound sent upstream (and held for) when a request names none; the model's
    # whole output budget (max_output_tokens) when unset.
    default_output_tokens: int | None = Field(None, gt=0)
    upstream: Upstream
    price: TokenPrice
    training_opt_in: TokenPrice | None = None
    promotions: tuple[Promotion, ...] = ()

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

    @model_validator(mode="after")
    def _consistent(self) -> Catalog:
        if not self.models:
            raise ValueError("the catalog has no models")
        ids = [m.id for m in self.models]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate model id(s): {', '.join(dupes)}")
        if self.default_model not in ids:
            raise ValueError(f"default_model {self.default_model!r} is not in the catalog")
        return self

    def model(self, model_id: str) -> Model | None:
        return self._by_id().get(model_id)

    def _by_id(self) -> dict[str, Model]:
        cached = self.__dict__.get("_index")
        if cached is None:
            cached = {m.id: m for m in self.models}
            object.__setattr__(self, "_index", cached)  # frozen model: cache once
        return cached


@dataclass(frozen=True, slots=True)
class Price:
    """The price a request is charged at, and which version of the catalog it came from."""

    input: Decimal
    output: Decimal
    version: str
    opt_in: bool


def price_for(catalog: Catalog, model: Model, at: datetime, opt_in: bool) -> Price:
    """Price at the request's start time. The training opt-in tier applies only to models
    that have one; otherwise a promotion valid at `at` applies; otherwise list price."""
    if opt_in and model.training_opt_in is not None:
        tier = model.training_opt_in
        return Price(tier.input, tier.output, f"{catalog.version}/{model.id}/training-opt-in", True)
    for promo in model.promotions:
        if promo.valid_from <= at < promo.valid_to:
            return Price(promo.input, promo.output, f"{catalog.version}/{model.id}/promo:{promo.id}", False)
    return Price(model.price.input, model.price.output, f"{catalog.version}/{model.id}/list", False)


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
