"""The product in front of a model server nobody here wrote: LiteLLM's proxy in mock mode, which
serves the OpenAI API under `/v1` (as vLLM, SGLang and hosted providers do), answers only its
master key, and knows the model by its own id (`deepseek-chat`, the catalog's
`deepseek/deepseek-v4-flash`). Over plain HTTP and over TLS with a test CA (the catalog's
`ca_file`, the certificate's name checked), through the real Envoy and the ASGI gateway, with the
official openai SDK: answered, shown back under the catalog's id, and charged exactly the usage
that server reports; a credential the server refuses is the product's own error, never charged.

Beside it, on the session stack (the fake model server keeps what it received): the model server
never receives the client's `crt_` key or any `x-critique-*` header, and always the operator's
credential."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal

import httpx
import openai
import pytest
import trustme

from critique_sidecar.core.catalog import load_catalog
from critique_sidecar.devtools import litellm_proxy
from critique_sidecar.devtools.stack import FRONT_DOORS, Stack
from critique_sidecar.envoy.config import render

from .helpers import FrontDoor, balance, expected_charge, front_door, funded_key, upstream_seen, usage_records

MODEL = "deepseek/deepseek-v4-flash"
UPSTREAM_ID = "deepseek-chat"  # what the model server calls it
MISPLACED = "acme/misplaced-credential"  # its credential goes in a header the server does not read
WRONG = "acme/wrong-credential"  # its credential is not the server's key
UNTRUSTED = "acme/untrusted-tls"  # https, verified against a CA that did not sign the server's certificate
TEXT = "Retry with backoff, cap the attempts, and log each failure."
VECTOR = [0.25, -0.5, 0.125]
EMBED = "acme/embed-small"

CATALOG = """\
version = "test-litellm"
default_model = "{model}"

[upstreams.litellm]
base_urls = ["{base}"]
credential = {{ env = "LITELLM_MASTER_KEY" }}
{ca}

[upstreams.litellm-misplaced]
base_urls = ["{base}"]
credential = {{ header = "x-not-read", env = "LITELLM_MASTER_KEY" }}
{ca}

[upstreams.litellm-wrong]
base_urls = ["{base}"]
credential = {{ env = "LITELLM_WRONG_KEY" }}
{ca}

[[models]]
id = "{model}"
role = "Default"
owned_by = "deepseek"
context_window = 1_000_000
max_output_tokens = 32_768
upstream = "litellm"
upstream_model = "{upstream_id}"
price = {{ input = "0.15", output = "0.30" }}

[[models]]
id = "acme/embed-small"
role = "Embeddings"
owned_by = "acme"
context_window = 8_192
endpoints = ["embeddings"]
upstream = "litellm"
upstream_model = "embed-small"
price = {{ input = "0.02", output = "0" }}

[[models]]
id = "{misplaced}"
role = "Test"
owned_by = "acme"
context_window = 8_192
max_output_tokens = 1_024
upstream = "litellm-misplaced"
upstream_model = "{upstream_id}"
price = {{ input = "1.00", output = "2.00" }}

[[models]]
id = "{wrong}"
role = "Test"
owned_by = "acme"
context_window = 8_192
max_output_tokens = 1_024
upstream = "litellm-wrong"
upstream_model = "{upstream_id}"
price = {{ input = "1.00", output = "2.00" }}
"""


UNTRUSTED_TABLES = """
[upstreams.litellm-untrusted]
base_urls = ["{{base}}"]
ca_file = "{ca}"
credential = {{ env = "LITELLM_MASTER_KEY" }}

[[models]]
id = "{model}"
role = "Test"
owned_by = "acme"
context_window = 8_192
max_output_tokens = 1_024
upstream = "litellm-untrusted"
upstream_model = "deepseek-chat"
price = {{ input = "1.00", output = "2.00" }}
"""


@dataclass
class Served:
    stack: Stack
    scheme: str

    def door(self, name: str) -> FrontDoor:
        return front_door(self.stack, name)


@pytest.fixture(scope="module", params=["http", "https"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    scheme: str = request.param
    workdir = tmp_path_factory.mktemp(f"litellm-{scheme}")
    tls, ca_line, host, extra = None, "", "127.0.0.1", ""
    if scheme == "https":
        ca = trustme.CA()
        cert = ca.issue_cert("localhost")  # a name: SNI and the certificate's name are checked
        (workdir / "server.crt").write_bytes(b"".join(c.bytes() for c in cert.cert_chain_pems))
        cert.private_key_pem.write_to_path(str(workdir / "server.key"))
        ca.cert_pem.write_to_path(str(workdir / "ca.pem"))
        tls, ca_line, host = (
            (workdir / "server.crt", workdir / "server.key"),
            f'ca_file = "{workdir / "ca.pem"}"',
            "localhost",
        )
        trustme.CA().cert_pem.write_to_path(str(workdir / "other-ca.pem"))
        extra = UNTRUSTED_TABLES.format(model=UNTRUSTED, ca=workdir / "other-ca.pem")
    models = [
        {
            "model_name": UPSTREAM_ID,
            "litellm_params": {"model": f"openai/{UPSTREAM_ID}", "api_key": "unused", "mock_response": TEXT},
        },
        {
            "model_name": "embed-small",
            "litellm_params": {"model": "openai/text-embedding-3-small", "api_key": "unused", "mock_response": VECTOR},
        },
    ]
    server = litellm_proxy.start(workdir / "litellm", models, tls, host)
    try:
        catalog = workdir / "catalog.toml"
        catalog.write_text(
            CATALOG.format(
                model=MODEL, upstream_id=UPSTREAM_ID, misplaced=MISPLACED, wrong=WRONG, base=server.base_url, ca=ca_line
            ).replace("{base}", server.base_url)
            + extra.replace("{base}", server.base_url)
        )
        envoy_yaml = workdir / "envoy.yaml"
        envoy_yaml.write_text(render(load_catalog(catalog)))  # what `critique-sidecar envoy-config` prints
        stack = Stack(
            workdir / "stack",
            envoy_config=envoy_yaml,
            start_upstream=False,
            front_doors=FRONT_DOORS,
            sidecar_env={
                "CRITIQUE_CATALOG_PATH": str(catalog),
                "LITELLM_MASTER_KEY": server.master_key,
                "LITELLM_WRONG_KEY": "sk-not-the-key",
            },
        )
        try:
            stack.start()
            yield Served(stack, scheme)
        finally:
            stack.stop()
    finally:
        server.stop()


def sdk(door: FrontDoor, key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=door.base_url + "/api/v1", max_retries=0, timeout=60)


@pytest.mark.parametrize("door_name", FRONT_DOORS)
def test_json_is_answered_under_the_catalogs_id_and_charged_what_the_server_reports(
    served: Served, door_name: str, account: str
) -> None:
    door = served.door(door_name)
    key = funded_key(served.stack, account)
    before = balance(served.stack, account)
    raw = sdk(door, key).chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "Summarize this retry policy."}], max_tokens=50
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == TEXT
    assert completion.model == MODEL  # the server said deepseek-chat
    assert completion.usage is not None
    credits, usd = expected_charge(MODEL, completion.usage.prompt_tokens, completion.usage.completion_tokens)
    assert (raw.headers["x-critique-credits-charged"], raw.headers["x-critique-estimated-usd"]) == (credits, usd)
    assert before - balance(served.stack, account) == Decimal(credits)
    [record] = usage_records(served.stack, account)
    assert record["status"] == "ok" and record["estimated"] == "0" and record["endpoint"] == "chat.completions"


@pytest.mark.parametrize("door_name", FRONT_DOORS)
@pytest.mark.parametrize("client_asks_usage", [True, False])
def test_a_stream_is_charged_what_the_server_reports(
    served: Served, door_name: str, account: str, client_asks_usage: bool
) -> None:
    door = served.door(door_name)
    key = funded_key(served.stack, account)
    before = balance(served.stack, account)
    options = {"stream_options": {"include_usage": True}} if client_asks_usage else {}
    chunks = list(
        sdk(door, key).chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Stream it."}],
            stream=True,
            **options,  # type: ignore[call-overload]
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == TEXT
    assert {c.model for c in chunks} == {MODEL}
    with_usage = [c.usage for c in chunks if c.usage is not None]
    [record] = usage_records(served.stack, account)
    assert record["status"] == "ok" and record["estimated"] == "0"
    if client_asks_usage:
        [usage] = with_usage
        assert (int(record["input_tokens"]), int(record["output_tokens"])) == (
            usage.prompt_tokens,
            usage.completion_tokens,
        )
    else:
        assert with_usage == []  # the usage the product asked for is not shown to a client that did not
    credits, _ = expected_charge(MODEL, int(record["input_tokens"]), int(record["output_tokens"]))
    assert int(record["credits"]) == int(Decimal(credits) * 1_000_000)
    assert before - balance(served.stack, account) == Decimal(credits)


@pytest.mark.parametrize("door_name", FRONT_DOORS)
def test_a_credential_the_server_does_not_read_is_the_products_error_and_free(
    served: Served, door_name: str, account: str
) -> None:
    door = served.door(door_name)
    key = funded_key(served.stack, account)
    before = balance(served.stack, account)
    with pytest.raises(openai.APIStatusError) as caught:
        sdk(door, key).chat.completions.create(model=MISPLACED, messages=[{"role": "user", "content": "hi"}])
    error = caught.value
    assert error.status_code == 502 and error.code == "upstream_auth_failed"
    assert "not your API key" in error.message
    assert error.response.headers["x-request-id"].startswith("req_")
    assert error.response.headers["x-should-retry"] == "false"  # a retry meets the same configuration
    assert balance(served.stack, account) == before
    [record] = usage_records(served.stack, account)
    assert record["status"] == "upstream_error" and record["credits"] == "0"


@pytest.mark.parametrize("door_name", FRONT_DOORS)
def test_a_key_the_server_refuses_is_its_error_and_free(served: Served, door_name: str, account: str) -> None:
    """LiteLLM without a database answers an unknown key with a 400 of its own (`no_db_connection`,
    not a 401): a model server's other errors pass through as it sent them; never charged."""
    door = served.door(door_name)
    key = funded_key(served.stack, account)
    before = balance(served.stack, account)
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(door, key).chat.completions.create(model=WRONG, messages=[{"role": "user", "content": "hi"}])
    assert "db" in caught.value.message.lower()
    assert balance(served.stack, account) == before


@pytest.mark.parametrize("door_name", FRONT_DOORS)
def test_the_responses_api_completions_and_embeddings_are_charged_what_the_server_reports(
    served: Served, door_name: str, account: str
) -> None:
    """LiteLLM serves the Responses API (JSON: its streamed mock answers an error event of its
    own), legacy completions (JSON and streamed) and embeddings."""
    door = served.door(door_name)
    key = funded_key(served.stack, account)
    client = sdk(door, key)
    before = balance(served.stack, account)
    expected = Decimal(0)

    response = client.responses.create(model=MODEL, input="Summarize this retry policy.", max_output_tokens=64)
    assert response.output_text == TEXT and response.usage is not None and response.model == MODEL
    expected += Decimal(expected_charge(MODEL, response.usage.input_tokens, response.usage.output_tokens)[0])

    completion = client.completions.create(model=MODEL, prompt="Once upon", max_tokens=32)
    assert completion.choices[0].text == TEXT and completion.usage is not None
    expected += Decimal(expected_charge(MODEL, completion.usage.prompt_tokens, completion.usage.completion_tokens)[0])

    chunks = list(
        client.completions.create(
            model=MODEL, prompt="Once", max_tokens=32, stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(c.choices[0].text or "" for c in chunks if c.choices) == TEXT
    [usage] = [c.usage for c in chunks if c.usage is not None]
    expected += Decimal(expected_charge(MODEL, usage.prompt_tokens, usage.completion_tokens)[0])

    embedded = client.embeddings.create(model=EMBED, input="retry policy", encoding_format="float")
    assert embedded.data[0].embedding == VECTOR and embedded.model == EMBED
    expected += Decimal(expected_charge(MODEL, embedded.usage.prompt_tokens, 0, prices=("0.02", "0"))[0])

    assert before - balance(served.stack, account) == expected
    records = usage_records(served.stack, account)
    assert sorted(r["endpoint"] for r in records) == ["completions", "completions", "embeddings", "responses"]
    assert all(r["status"] == "ok" and r["estimated"] == "0" for r in records)


# -- what the model server receives (the session stack's fake keeps it) ---------------------------


def test_the_model_server_never_sees_the_clients_key_and_always_the_operators(
    stack: Stack, front_door: FrontDoor, account: str
) -> None:
    key = funded_key(stack, account)
    marker = f"upstream-headers-{account}"
    for stream in (False, True):
        r = httpx.post(
            front_door.chat_url,
            headers={
                "authorization": f"Bearer {key}",
                "x-critique-model": "tencent/hy3-preview",
                "x-critique-credits-charged": "0",
                "X-Critique-Anything": "forged",
                "x-critique-deepseek-training-opt-in": "true",
            },
            json={"model": MODEL, "messages": [{"role": "user", "content": marker}], "stream": stream},
            timeout=30,
        )
        assert r.status_code == 200, r.text
    seen = [s for s in upstream_seen(stack) if s["body"] and marker in str(s["body"])]
    assert len(seen) == 2
    for request in seen:
        headers = request["headers"]
        assert request["path"] == "/v1/chat/completions"
        assert headers["authorization"] == f"Bearer {stack.upstream_key}"  # the operator's credential
        assert key not in str(request) and "crt_" not in str(headers)
        assert not [h for h in headers if h.startswith("x-critique-")]
        assert request["body"]["model"] == MODEL  # routed by the body, not the forged header


@pytest.mark.parametrize("served", ["https"], indirect=True)
@pytest.mark.parametrize("door_name", FRONT_DOORS)
def test_tls_is_verified_a_server_another_ca_signed_is_never_reached(
    served: Served, door_name: str, account: str
) -> None:
    door = served.door(door_name)
    key = funded_key(served.stack, account)
    before = balance(served.stack, account)
    with pytest.raises(openai.APIStatusError) as caught:
        sdk(door, key).chat.completions.create(model=UNTRUSTED, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 502 and caught.value.code == "upstream_error"
    assert balance(served.stack, account) == before
