"""catalog.py: the built-in catalog, prices from the product page, and validation errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from critique_sidecar.core.catalog import Catalog, CatalogError, load_catalog, price_for

CATALOGS = Path(__file__).parent / "catalogs"

DEEPSEEK = "deepseek/deepseek-v4-flash"
TENCENT = "tencent/hy3-preview"
NEMOTRON = "nvidia/nemotron-3-ultra-550b-a55b"
EMBEDDINGS = "example/text-embedding-small"

PROMO_LAST_SECOND = datetime(2026, 6, 19, 23, 59, 59, tzinfo=UTC)
PROMO_OVER = datetime(2026, 6, 20, 0, 0, 0, tzinfo=UTC)
SOME_DAY = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


def test_builtin_catalog_loads(catalog: Catalog) -> None:
    assert catalog.version == "v5.2"
    assert catalog.default_model == DEEPSEEK
    assert [m.id for m in catalog.models] == [DEEPSEEK, TENCENT, NEMOTRON]  # the product page's, no more
    assert catalog.model("no/such-model") is None
    for model in catalog.models:
        assert catalog.model(model.id) is model
        assert model.max_output_tokens <= model.context_window
    # the product page's models generate; the demo's example embeddings model only embeds
    assert {m.id: m.endpoints for m in catalog.models} == dict.fromkeys(
        (DEEPSEEK, TENCENT, NEMOTRON), ("chat.completions", "responses", "completions", "messages")
    )


def test_the_demo_adds_an_example_embeddings_model(tmp_path: Path) -> None:
    from critique_sidecar.devtools.stack import demo_catalog_text

    path = tmp_path / "catalog.toml"
    path.write_text(demo_catalog_text())
    demo = load_catalog(path)
    assert [m.id for m in demo.models] == [DEEPSEEK, TENCENT, NEMOTRON, EMBEDDINGS]
    assert demo.model(EMBEDDINGS).endpoints == ("embeddings",)  # type: ignore[union-attr]


def test_the_catalogs_endpoint_names_are_the_registrys() -> None:
    from critique_sidecar.core.catalog import ENDPOINT_NAMES, GENERATION_ENDPOINTS
    from critique_sidecar.core.endpoints import NAMES

    assert set(ENDPOINT_NAMES) == set(NAMES) and set(GENERATION_ENDPOINTS) < set(NAMES)


@pytest.mark.parametrize(
    "extra, problem",
    [
        ('endpoints = ["chat.completions", "images"]', "endpoints"),
        ("endpoints = []", "endpoints"),
    ],
)
def test_a_models_endpoints_are_checked(tmp_path: Path, extra: str, problem: str) -> None:
    text = (CATALOGS / "valid_minimal.toml").read_text().replace('upstream = "local"', f'upstream = "local"\n{extra}')
    (tmp_path / "c.toml").write_text(text)
    with pytest.raises(CatalogError, match=problem):
        load_catalog(tmp_path / "c.toml")


def test_a_model_that_generates_needs_an_output_budget(tmp_path: Path) -> None:
    text = (CATALOGS / "valid_minimal.toml").read_text().replace("max_output_tokens = 1_024\n", "")
    (tmp_path / "c.toml").write_text(text)
    with pytest.raises(CatalogError, match="max_output_tokens"):
        load_catalog(tmp_path / "c.toml")
    embeds_only = text.replace('upstream = "local"', 'upstream = "local"\nendpoints = ["embeddings"]')
    (tmp_path / "e.toml").write_text(embeds_only)
    assert load_catalog(tmp_path / "e.toml").models[0].max_output_tokens == 0


def test_context_windows_match_product_page(catalog: Catalog) -> None:
    assert catalog.model(DEEPSEEK).context_window == 1_000_000  # "1M context"
    assert catalog.model(TENCENT).context_window == 262_144  # "262K context"


def test_deepseek_private_tier_price(catalog: Catalog) -> None:
    p = price_for(catalog, catalog.model(DEEPSEEK), SOME_DAY, opt_in=False)
    assert (p.input, p.output) == (Decimal("0.15"), Decimal("0.30"))
    assert p.opt_in is False
    assert p.version == "v5.2/deepseek/deepseek-v4-flash/list"


def test_deepseek_training_opt_in_is_25_percent_of_list(catalog: Catalog) -> None:
    model = catalog.model(DEEPSEEK)
    p = price_for(catalog, model, SOME_DAY, opt_in=True)
    assert (p.input, p.output) == (Decimal("0.0375"), Decimal("0.075"))
    assert p.input == model.price.input * Decimal("0.25")
    assert p.output == model.price.output * Decimal("0.25")
    assert p.opt_in is True
    assert p.version == "v5.2/deepseek/deepseek-v4-flash/training-opt-in"


def test_only_deepseek_has_an_opt_in_tier(catalog: Catalog) -> None:
    assert catalog.model(DEEPSEEK).training_opt_in is not None
    assert catalog.model(TENCENT).training_opt_in is None
    assert catalog.model(NEMOTRON).training_opt_in is None


def test_tencent_price(catalog: Catalog) -> None:
    p = price_for(catalog, catalog.model(TENCENT), SOME_DAY, opt_in=False)
    assert (p.input, p.output) == (Decimal("0.0567"), Decimal("0.189"))
    assert p.version == "v5.2/tencent/hy3-preview/list"


def test_opt_in_on_model_without_tier_prices_at_list(catalog: Catalog) -> None:
    model = catalog.model(TENCENT)
    with_opt_in = price_for(catalog, model, SOME_DAY, opt_in=True)
    without = price_for(catalog, model, SOME_DAY, opt_in=False)
    assert with_opt_in == without
    assert (with_opt_in.input, with_opt_in.output) == (Decimal("0.0567"), Decimal("0.189"))
    assert with_opt_in.opt_in is False  # the request is not recorded as opted in at a discount


def test_opt_in_on_nemotron_keeps_promo(catalog: Catalog) -> None:
    p = price_for(catalog, catalog.model(NEMOTRON), SOME_DAY, opt_in=True)
    assert (p.input, p.output) == (Decimal("0.30"), Decimal("1.20"))
    assert p.opt_in is False


def test_nemotron_intro_promo_is_half_of_list(catalog: Catalog) -> None:
    model = catalog.model(NEMOTRON)
    promo = model.promotions[0]
    assert promo.id == "intro-50-off"
    assert promo.input * 2 == model.price.input
    assert promo.output * 2 == model.price.output


@pytest.mark.parametrize(
    "at",
    [
        utc(2026, 1, 1, 0, 0, 0),
        SOME_DAY,
        utc(2026, 6, 19, 0, 0, 0),
        PROMO_LAST_SECOND,
        PROMO_OVER - timedelta(microseconds=1),
    ],
)
def test_nemotron_promo_applies_through_19_june(catalog: Catalog, at: datetime) -> None:
    p = price_for(catalog, catalog.model(NEMOTRON), at, opt_in=False)
    assert (p.input, p.output) == (Decimal("0.30"), Decimal("1.20"))
    assert p.version == "v5.2/nvidia/nemotron-3-ultra-550b-a55b/promo:intro-50-off"


@pytest.mark.parametrize(
    "at", [PROMO_OVER, utc(2026, 6, 20, 0, 0, 1), utc(2027, 1, 1, 0, 0, 0), utc(2025, 12, 31, 23, 59, 59)]
)
def test_nemotron_promo_does_not_apply_outside_window(catalog: Catalog, at: datetime) -> None:
    p = price_for(catalog, catalog.model(NEMOTRON), at, opt_in=False)
    assert (p.input, p.output) == (Decimal("0.60"), Decimal("2.40"))
    assert p.version == "v5.2/nvidia/nemotron-3-ultra-550b-a55b/list"


def test_promo_boundary_with_non_utc_aware_time(catalog: Catalog) -> None:
    # 2026-06-20T01:00+01:00 is exactly the UTC end of the promotion.
    cet = timezone(timedelta(hours=1))
    model = catalog.model(NEMOTRON)
    assert price_for(catalog, model, datetime(2026, 6, 20, 1, 0, 0, tzinfo=cet), False).input == Decimal("0.60")
    assert price_for(catalog, model, datetime(2026, 6, 20, 0, 59, 59, tzinfo=cet), False).input == Decimal("0.30")


def test_catalog_from_path() -> None:
    cat = load_catalog(CATALOGS / "valid_minimal.toml")
    assert cat.version == "test-1"
    assert cat.model("acme/small").price.output == Decimal("2.00")
    assert load_catalog(str(CATALOGS / "valid_minimal.toml")) == cat


def test_missing_catalog_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(CatalogError) as err:
        load_catalog(missing)
    assert str(missing) in str(err.value)


# file -> fragments the message must contain (the file and the problem)
BAD_CATALOGS = {
    "bad_duplicate_id.toml": ["duplicate model id", "acme/small"],
    "bad_default_model_unknown.toml": ["default_model", "acme/missing", "not in the catalog"],
    "bad_default_model_absent.toml": ["default_model", "required"],
    "bad_negative_price.toml": ["models.0.price.output", "non-negative"],
    "bad_non_utc_time.toml": ["models.0.promotions.0.valid_from", "UTC"],
    "bad_local_time.toml": ["models.0.promotions.0.valid_from", "UTC"],
    "bad_valid_to_before_from.toml": ["promotion backwards", "valid_to must be after valid_from"],
    "bad_unknown_field.toml": ["models.0.max_output_token", "not permitted"],
    "bad_toml_syntax.toml": ["line 3"],
    "bad_no_models.toml": ["no models"],
}


@pytest.mark.parametrize(("name", "fragments"), sorted(BAD_CATALOGS.items()))
def test_invalid_catalog_message_names_the_problem(name: str, fragments: list[str]) -> None:
    path = CATALOGS / name
    with pytest.raises(CatalogError) as err:
        load_catalog(path)
    message = str(err.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize(
    "name",
    [
        "bad_negative_price.toml",
        "bad_non_utc_time.toml",
        "bad_local_time.toml",
        "bad_valid_to_before_from.toml",
        "bad_unknown_field.toml",
    ],
)
def test_invalid_model_does_not_claim_the_catalog_is_empty(name: str) -> None:
    """One bad model must be reported as that problem alone, not also as 'no models'."""
    with pytest.raises(CatalogError) as err:
        load_catalog(CATALOGS / name)
    message = str(err.value)
    assert "at least 1 item" not in message, message
    assert "no models" not in message, message


def test_every_bad_catalog_file_is_covered() -> None:
    on_disk = {p.name for p in CATALOGS.glob("bad_*.toml")}
    assert on_disk == set(BAD_CATALOGS)


def test_promotion_equal_bounds_rejected(tmp_path: Path) -> None:
    text = (CATALOGS / "valid_minimal.toml").read_text() + (
        '\n[[models.promotions]]\nid = "instant"\n'
        "valid_from = 2026-03-01T00:00:00Z\nvalid_to = 2026-03-01T00:00:00Z\n"
        'input = "0.5"\noutput = "1.0"\n'
    )
    path = tmp_path / "equal.toml"
    path.write_text(text)
    with pytest.raises(CatalogError, match="valid_to must be after valid_from"):
        load_catalog(path)


def test_non_finite_price_rejected(tmp_path: Path) -> None:
    text = (CATALOGS / "valid_minimal.toml").read_text().replace('input = "1.00"', 'input = "NaN"')
    path = tmp_path / "nan.toml"
    path.write_text(text)
    with pytest.raises(CatalogError) as err:
        load_catalog(path)
    assert "models.0.price.input" in str(err.value)
