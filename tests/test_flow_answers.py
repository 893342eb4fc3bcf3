"""Answers of the payment flow: the 402 of an unpaid request is rendered once per URL."""

from x402gate.errors import PaymentError
from x402gate.flow import Answer


def challenge(url: str) -> PaymentError:
    return PaymentError(
        402,
        "payment_required",
        "this resource requires payment",
        headers={"PAYMENT-REQUIRED": f"terms-of-{url}"},
        body={"x402Version": 2, "error": "payment_required", "resource": url},
    )


def test_a_challenge_is_rendered_once_and_handed_out_as_new_answers() -> None:
    first_error, again_error = challenge("/a"), challenge("/a")
    first = Answer.from_error(first_error)
    again = Answer.from_error(again_error)
    assert (again.status, again.headers, again.body) == (first.status, first.headers, first.body)
    # Each answer carries its own error and headers list: nothing a server or framework does to
    # one (adding a header, raising the error) reaches the next.
    assert (first.error, again.error) == (first_error, again_error)
    assert again.headers is not first.headers
    again.headers.append(("Date", "now"))
    assert ("Date", "now") not in Answer.from_error(challenge("/a")).headers
    # Another URL, a browser, another message: rendered on their own.
    assert Answer.from_error(challenge("/b")).body != first.body
    assert Answer.from_error(challenge("/a"), "text/html").headers != first.headers
    other = PaymentError(402, "payment_required", "other", headers=first_error.headers, body={})
    assert Answer.from_error(other).body == b"{}"


def test_other_answers_are_rendered_each_time() -> None:
    error = PaymentError(400, "invalid_payment", "bad header", body={"error": "invalid_payment"})
    assert Answer.from_error(error).body == b'{"error":"invalid_payment"}'
    changed = PaymentError(400, "invalid_payment", "bad header", body={"error": "other"})
    assert Answer.from_error(changed).body == b'{"error":"other"}'
