"""Drives a running cc-relay with the official Anthropic Python SDK (its strict SSE parser is the
client our users have). Usage: sdk_client.py BASE_URL SCENARIO. Exits non-zero on any mismatch.
With CC_RELAY_TEST_CA set, an https BASE_URL is trusted through that CA certificate only."""

import os
import ssl
import sys

import anthropic

MODEL = "claude-sonnet-4-5"
MESSAGES = [{"role": "user", "content": "Say hello"}]


def happy(client: anthropic.Anthropic) -> None:
    msg = client.messages.create(model=MODEL, max_tokens=1024, messages=MESSAGES)
    assert msg.type == "message", msg
    assert msg.model == MODEL, msg.model
    assert msg.content and msg.content[0].text, msg.content
    assert msg.usage.output_tokens == 12, msg.usage
    assert msg.usage.input_tokens > 0, msg.usage

    with client.messages.stream(model=MODEL, max_tokens=64000, messages=MESSAGES) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == final.content[0].text and text, (text, final)
    assert final.usage.output_tokens == 12, final.usage
    assert final.stop_reason == "end_turn", final.stop_reason

    counted = client.messages.count_tokens(model=MODEL, messages=MESSAGES)
    assert counted.input_tokens > 0, counted


def midstream(client: anthropic.Anthropic) -> None:
    try:
        with client.messages.stream(model=MODEL, max_tokens=64000, messages=MESSAGES) as stream:
            for _ in stream.text_stream:
                pass
    except anthropic.APIStatusError as e:
        # The relay ends a broken stream with Anthropic's error event: the SDK raises it.
        assert "stream broke" in str(e), e
        return
    except anthropic.APIConnectionError as e:
        raise AssertionError(f"the SDK saw a broken connection, not an error event: {e!r}")
    raise AssertionError("a stream cut by the upstream completed without an error")


def exhausted(client: anthropic.Anthropic) -> None:
    # The key allows one request a minute: the first goes through, the second is refused.
    client.messages.create(model=MODEL, max_tokens=16, messages=MESSAGES)
    try:
        client.messages.create(model=MODEL, max_tokens=16, messages=MESSAGES)
    except anthropic.RateLimitError as e:
        retry_after = int(e.response.headers["retry-after"])
        assert retry_after >= 1, retry_after
        assert e.body["error"]["type"] == "rate_limit_error", e.body
        return
    raise AssertionError("expected a 429 from the exhausted pool")


def failover(client: anthropic.Anthropic) -> None:
    # The first provider answers 529 to everything: the relay fails the stream over to the
    # second before a byte reaches the SDK, which sees one clean stream.
    for _ in range(3):
        with client.messages.stream(model=MODEL, max_tokens=64000, messages=MESSAGES) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
        assert text == final.content[0].text and text, (text, final)
        assert final.usage.output_tokens == 12, final.usage
        assert final.stop_reason == "end_turn", final.stop_reason


def foundry(client: anthropic.Anthropic) -> None:
    # Through an azure provider pinned to one deployment: JSON, a stream with its exact final
    # usage, count_tokens; the mock echoes the model it was asked for (the deployment).
    msg = client.messages.create(model=MODEL, max_tokens=1024, messages=MESSAGES)
    assert msg.type == "message", msg
    assert msg.model == "claude-foundry-deployment", msg.model
    assert msg.usage.output_tokens == 12, msg.usage
    with client.messages.stream(model=MODEL, max_tokens=64000, messages=MESSAGES) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == final.content[0].text and text, (text, final)
    assert final.usage.output_tokens == 12, final.usage
    counted = client.messages.count_tokens(model=MODEL, messages=MESSAGES)
    assert counted.input_tokens > 0, counted


def foundry_error(client: anthropic.Anthropic) -> None:
    # Foundry refuses with an Azure-shaped body; the SDK gets Anthropic's shape.
    try:
        client.messages.create(model=MODEL, max_tokens=16, messages=MESSAGES)
    except anthropic.BadRequestError as e:
        assert e.body["type"] == "error", e.body
        assert e.body["error"]["type"] == "invalid_request_error", e.body
        assert "Azure code 400" in e.body["error"]["message"], e.body
        return
    raise AssertionError("expected a 400 from Foundry")


def main() -> None:
    base_url, scenario = sys.argv[1], sys.argv[2]
    options = {}
    ca = os.environ.get("CC_RELAY_TEST_CA")
    if ca:
        options["http_client"] = anthropic.DefaultHttpxClient(
            verify=ssl.create_default_context(cafile=ca)
        )
    client = anthropic.Anthropic(
        base_url=base_url, api_key="client-key", max_retries=0, **options
    )
    scenarios = {
        "happy": happy,
        "midstream": midstream,
        "exhausted": exhausted,
        "failover": failover,
        "foundry": foundry,
        "foundry_error": foundry_error,
    }
    scenarios[scenario](client)
    print(f"sdk {scenario}: ok")


if __name__ == "__main__":
    main()
