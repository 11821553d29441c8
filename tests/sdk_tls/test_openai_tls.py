"""The official OpenAI SDK pointed at the gateway over `https://`, trusting the dev CA (issue #14's
acceptance): a chat completion and a stream, with the CA given to the SDK's HTTP client and with
`SSL_CERT_FILE`; without the CA the SDK refuses the connection (the certificate is really checked)."""
import ssl

import openai
import pytest

from conftest import KEY


def client(base_url, verify):
    return openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0,
                         http_client=openai.DefaultHttpxClient(verify=verify))


def test_chat_completion_over_https_with_the_dev_ca(gateway, certs):
    sdk = client(gateway, ssl.create_default_context(cafile=certs["ca"]))
    reply = sdk.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello over tls"}])
    assert reply.choices[0].message.content
    assert reply.usage.total_tokens > 0


def test_stream_over_https_with_the_dev_ca(gateway, certs):
    sdk = client(gateway, ssl.create_default_context(cafile=certs["ca"]))
    stream = sdk.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "stream over tls"}],
        stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0


def test_ssl_cert_file_is_honoured(gateway, certs, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", certs["ca"])
    sdk = openai.OpenAI(base_url=gateway, api_key=KEY, max_retries=0)
    reply = sdk.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello via SSL_CERT_FILE"}])
    assert reply.choices[0].message.content


def test_without_the_dev_ca_the_sdk_refuses_the_certificate(gateway, monkeypatch):
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    sdk = client(gateway, ssl.create_default_context())
    with pytest.raises(openai.APIConnectionError) as refused:
        sdk.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "untrusted"}])
    causes, e = [], refused.value
    while e is not None:
        causes.append(repr(e))
        e = e.__cause__ or e.__context__
    assert any("CERTIFICATE_VERIFY_FAILED" in c for c in causes), causes
