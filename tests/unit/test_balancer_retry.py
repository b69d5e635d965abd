"""The retry decision: what may be sent again, where, and what the client gets."""

from __future__ import annotations

import pytest

from balancer import retry
from balancer.retry import RETRY_BUFFER, AttemptFailed, Step


def test_a_body_is_kept_up_to_the_retry_buffer() -> None:
    assert RETRY_BUFFER == 64 * 1024
    assert retry.kept(0)
    assert retry.kept(RETRY_BUFFER)
    assert not retry.kept(RETRY_BUFFER + 1)


def test_an_idempotent_kept_request_with_no_response_byte_may_be_retried() -> None:
    assert retry.may_retry(idempotent=True, replayable=True, got_bytes=False, started=False)


@pytest.mark.parametrize("change", ["idempotent", "replayable", "got_bytes", "started"])
def test_any_sign_the_request_was_acted_on_forbids_a_retry(change: str) -> None:
    args = {"idempotent": True, "replayable": True, "got_bytes": False, "started": False}
    args[change] = not args[change]
    assert not retry.may_retry(**args)


def test_the_keep_alive_race_is_not_the_servers_fault() -> None:
    assert not retry.servers_fault(reused=True, got_bytes=False)
    assert retry.servers_fault(reused=True, got_bytes=True)
    assert retry.servers_fault(reused=False, got_bytes=False)
    assert retry.servers_fault(reused=False, got_bytes=True)


def test_redispatch_excludes_the_servers_tried() -> None:
    tried = ["web0", "web1"]
    assert list(retry.excluded(tried, redispatch=True)) == ["web0", "web1"]
    assert list(retry.excluded(tried, redispatch=False)) == []


def test_retries_are_counted() -> None:
    assert retry.again(True, attempts=0, retries=3)
    assert retry.again(True, attempts=2, retries=3)
    assert not retry.again(True, attempts=3, retries=3)
    assert not retry.again(True, attempts=0, retries=0)
    assert not retry.again(False, attempts=0, retries=3)


def test_a_retryable_failure_with_retries_left_is_retried() -> None:
    err = AttemptFailed("connection refused", retryable=True)
    assert retry.next_step(err, 0, 3, connected=False, started=False) == (Step.RETRY, 0)
    assert retry.next_step(err, 2, 3, connected=True, started=False) == (Step.RETRY, 0)


def test_a_connect_failure_with_no_retry_left_is_503() -> None:
    err = AttemptFailed("connect timeout", retryable=True)
    assert retry.next_step(err, 3, 3, connected=False, started=False) == (Step.ANSWER, 503)
    fds = AttemptFailed("no file descriptor left", retryable=False, passive=False, status=503)
    assert retry.next_step(fds, 0, 3, connected=False, started=False) == (Step.ANSWER, 503)


def test_a_failure_after_the_connect_answers_its_own_status() -> None:
    bad = AttemptFailed("invalid response", retryable=False)
    assert retry.next_step(bad, 0, 3, connected=True, started=False) == (Step.ANSWER, 502)
    slow = AttemptFailed("server timeout", retryable=False, status=504)
    assert retry.next_step(slow, 0, 3, connected=True, started=False) == (Step.ANSWER, 504)
    lost = AttemptFailed("server closed the connection", retryable=True)
    assert retry.next_step(lost, 3, 3, connected=True, started=False) == (Step.ANSWER, 502)


def test_a_failure_once_the_response_began_cuts_the_client() -> None:
    err = AttemptFailed("server timeout during response", retryable=False)
    assert retry.next_step(err, 0, 3, connected=True, started=True) == (Step.CUT, 0)
