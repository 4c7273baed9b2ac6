"""GET /api/v1/models: OpenAI's list format from the catalog, plus pricing fields."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ..core.catalog import Catalog, TokenPrice, price_for


def _usd(price: TokenPrice) -> dict[str, str]:
    return {"input_usd_per_million": str(price.input), "output_usd_per_million": str(price.output)}


def model_list(catalog: Catalog, now: datetime) -> dict[str, Any]:
    data = []
    for model in catalog.models:
        current = price_for(catalog, model, now, opt_in=False)
        pricing: dict[str, Any] = {
            "input_usd_per_million": str(current.input),
            "output_usd_per_million": str(current.output),
            "price_version": current.version,
            "list": _usd(model.price),
        }
        if model.training_opt_in is not None:
            pricing["training_opt_in"] = _usd(model.training_opt_in)
        data.append(
            {
                "id": model.id,
                "object": "model",
                "created": 0,
                "owned_by": model.owned_by,
                "role": model.role,
                "default": model.id == catalog.default_model,
                "context_window": model.context_window,
                "max_output_tokens": model.max_output_tokens,
                "pricing": pricing,
            }
        )
    return {"object": "list", "data": data}
