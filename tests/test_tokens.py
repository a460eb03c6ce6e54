"""Signed tokens: short, case-insensitive, bound to the owner, rotatable."""

from __future__ import annotations

import pytest

from rc_mta import smtp_replies as R
from rc_mta.errors import Refusal
from rc_mta.tokens import TOKEN_LENGTH, Action, Signer, new_request_id

KEYS = {1: b"first-secret-0123456789", 2: b"second-secret-0123456789"}


def _reply_of(call: object) -> str:
    with pytest.raises(Refusal) as info:
        call()  # type: ignore[operator]
    return R.reply_for(info.value).name


def test_token_fits_a_local_part_and_survives_lower_and_upper_case() -> None:
    signer = Signer(KEYS, 2)
    request_id = new_request_id()
    token = signer.issue(request_id, Action.COMPLETE, 2_000_000_000, "alice@example.com")

    assert len(token) == TOKEN_LENGTH <= 64 - len("rc+")
    for variant in (token, token.upper()):
        decoded = signer.decode(variant)
        signer.verify(decoded, "ALICE@example.com", now=0)
        assert (decoded.request_id, decoded.action, decoded.key_id) == (request_id, Action.COMPLETE, 2)


def test_token_is_bound_to_its_owner() -> None:
    signer = Signer(KEYS, 1)
    decoded = signer.decode(signer.issue(new_request_id(), Action.FAIL, 2_000_000_000, "alice@example.com"))

    assert _reply_of(lambda: signer.verify(decoded, "mallory@example.com", now=0)) == R.TOKEN_INVALID.name


def test_any_changed_character_breaks_the_signature() -> None:
    signer = Signer(KEYS, 1)
    token = signer.issue(new_request_id(), Action.REPLY, 2_000_000_000, "alice@example.com")
    for i in range(TOKEN_LENGTH):
        changed = token[:i] + ("a" if token[i] != "a" else "b") + token[i + 1 :]
        try:
            decoded = signer.decode(changed)
            signer.verify(decoded, "alice@example.com", now=0)
        except Refusal as exc:
            assert R.reply_for(exc).code == 550
        else:
            pytest.fail(f"changing character {i} was not noticed")


def test_expired_token_is_refused_after_its_signature_checks_out() -> None:
    signer = Signer(KEYS, 1)
    decoded = signer.decode(signer.issue(new_request_id(), Action.COMPLETE, 1_000, "alice@example.com"))

    assert _reply_of(lambda: signer.verify(decoded, "alice@example.com", now=1_000)) == R.TOKEN_EXPIRED.name


def test_old_key_verifies_after_rotation_and_unknown_key_is_named() -> None:
    old = Signer({1: KEYS[1]}, 1)
    rotated = Signer(KEYS, 2)
    retired = Signer({2: KEYS[2]}, 2)
    token = old.issue(new_request_id(), Action.COMPLETE, 2_000_000_000, "alice@example.com")

    rotated.verify(rotated.decode(token), "alice@example.com", now=0)
    assert _reply_of(lambda: retired.decode(token)) == R.TOKEN_UNKNOWN_KEY.name


def test_garbage_is_malformed() -> None:
    signer = Signer(KEYS, 1)
    for text in ("", "abc", "1" * TOKEN_LENGTH, "a" * TOKEN_LENGTH):
        assert _reply_of(lambda t=text: signer.decode(t)) == R.TOKEN_MALFORMED.name
