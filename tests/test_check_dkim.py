"""DKIM against real DNS (NSD serving tests/zones): messages signed by dkimpy with the keys in
tests/keys, whose public halves are published in good.test and evil.test."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
from pathlib import Path

import dkim
import dkim.crypto
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from dns_fixtures import black_hole_resolver as black_hole_resolver
from dns_fixtures import dns_server as dns_server
from dns_fixtures import resolver as resolver

from rc_mta import dkim_rsa
from rc_mta.checks._base import CheckContext, Verdict
from rc_mta.checks.dkim import (
    MAX_SIGNATURES,
    DkimCheck,
    DkimSignature,
    NeedsThread,
    _verify_one,
    check_dkim,
    parse,
    unreasonable_key,
)
from rc_mta.dns import DnsResolver

KEYS = Path(__file__).parent / "keys"

MESSAGE = (
    b"From: Alice <alice@good.test>\r\n"
    b"To: tasks@reply.example.test\r\n"
    b"Subject: Re: Approve deploy to prod\r\n"
    b"Message-ID: <reply-1@good.test>\r\n"
    b"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n"
    b"\r\n"
    b"approve\r\n"
)


def sign(message: bytes, domain: str, selector: str, key_file: str) -> bytes:
    """The message with one more DKIM-Signature on top, as a sending MTA would add it."""
    private_key = (KEYS / key_file).read_bytes()
    header = dkim.sign(
        message,
        selector.encode(),
        domain.encode(),
        private_key,
        include_headers=[b"from", b"to", b"subject", b"message-id", b"date"],
    )
    return bytes(header) + message


def verify(resolver: DnsResolver, raw: bytes, min_key_bits: int = 1024) -> tuple[Verdict, list[DkimSignature]]:
    return asyncio.run(check_dkim(resolver, raw, min_key_bits=min_key_bits))


def test_valid_signature_passes_with_its_domain_and_key_size(resolver: DnsResolver) -> None:
    verdict, signatures = verify(resolver, sign(MESSAGE, "good.test", "sel", "good-sel2048.pem"))
    assert verdict.result == "pass"
    assert verdict.facts == {"domains": "good.test"}
    # The signed To is kept as the signature covered it: it ties the message to a request.
    signed_to = (("to", "tasks@reply.example.test"),)
    # Nor does dkimpy's default h= sign Content-Type or Content-Transfer-Encoding: left open.
    unsigned = frozenset({"content-type", "content-transfer-encoding"})
    assert signatures == [DkimSignature("good.test", "sel", "pass", "signature verified", 2048, signed_to, unsigned)]


def test_unsigned_message_has_no_dkim_result(resolver: DnsResolver) -> None:
    verdict, signatures = verify(resolver, MESSAGE)
    assert verdict.result == "none"
    assert signatures == []
    assert resolver.stats.queries == 0


def test_body_changed_after_signing_fails(resolver: DnsResolver) -> None:
    signed = sign(MESSAGE, "good.test", "sel", "good-sel2048.pem")
    tampered = signed.replace(b"approve\r\n", b"reject\r\n")
    verdict, signatures = verify(resolver, tampered)
    assert verdict.result == "fail"
    assert [s.result for s in signatures] == ["fail"]
    assert "body hash mismatch" in signatures[0].reason


def test_signed_header_changed_after_signing_fails(resolver: DnsResolver) -> None:
    signed = sign(MESSAGE, "good.test", "sel", "good-sel2048.pem")
    tampered = signed.replace(b"Subject: Re: Approve", b"Subject: Re: Reject")
    verdict, signatures = verify(resolver, tampered)
    assert verdict.result == "fail"
    assert signatures[0].reason == "signature did not verify"


def test_other_domain_signature_passes_for_that_domain_only(resolver: DnsResolver) -> None:
    # evil.test signs a message showing From: good.test: DKIM passes, but for evil.test.
    verdict, signatures = verify(resolver, sign(MESSAGE, "evil.test", "evil", "evil-sel2048.pem"))
    assert verdict.result == "pass"
    assert verdict.facts == {"domains": "evil.test"}
    assert [(s.domain, s.result) for s in signatures] == [("evil.test", "pass")]


def test_every_signature_is_checked_and_one_good_one_is_enough(resolver: DnsResolver) -> None:
    good = sign(MESSAGE, "good.test", "sel", "good-sel2048.pem")
    # On top, a signature claiming good.test/sel but made with another key: it cannot verify.
    both = sign(good, "good.test", "sel", "evil-sel2048.pem")
    verdict, signatures = verify(resolver, both)
    assert verdict.result == "pass"
    assert verdict.facts == {"domains": "good.test"}
    assert [s.result for s in signatures] == ["fail", "pass"]
    assert signatures[0].reason == "signature did not verify"


def test_signatures_from_two_domains_both_pass(resolver: DnsResolver) -> None:
    both = sign(sign(MESSAGE, "good.test", "sel", "good-sel2048.pem"), "evil.test", "evil", "evil-sel2048.pem")
    verdict, signatures = verify(resolver, both)
    assert verdict.facts == {"domains": "evil.test,good.test"}
    assert [s.result for s in signatures] == ["pass", "pass"]


def test_1024_bit_key_passes_by_default(resolver: DnsResolver) -> None:
    verdict, signatures = verify(resolver, sign(MESSAGE, "good.test", "small", "good-small1024.pem"))
    assert verdict.result == "pass"
    assert signatures[0].key_bits == 1024


def test_1024_bit_key_is_rejected_when_2048_bits_are_required(resolver: DnsResolver) -> None:
    signed = sign(MESSAGE, "good.test", "small", "good-small1024.pem")
    verdict, signatures = verify(resolver, signed, min_key_bits=2048)
    assert verdict.result == "fail"
    assert signatures == [
        DkimSignature("good.test", "small", "fail", "key too short: 1024 bits, at least 2048 required", 1024)
    ]


def test_selector_without_published_key_is_a_permanent_error(resolver: DnsResolver) -> None:
    verdict, signatures = verify(resolver, sign(MESSAGE, "good.test", "gone", "good-sel2048.pem"))
    assert verdict.result == "permerror"
    assert signatures == [
        DkimSignature("good.test", "gone", "permerror", "no key published at gone._domainkey.good.test", None)
    ]
    assert "gone._domainkey.good.test" in verdict.reason


def test_unparseable_signature_is_a_permanent_error(resolver: DnsResolver) -> None:
    broken = b"DKIM-Signature: v=1; a=rsa-sha256; d=good.test; s=sel\r\n" + MESSAGE
    verdict, signatures = verify(resolver, broken)
    assert verdict.result == "permerror"
    assert signatures[0].result == "permerror"
    assert signatures[0].reason.startswith("unusable signature: missing")
    assert resolver.stats.queries == 0


def test_dns_timeout_is_a_temporary_error(black_hole_resolver: DnsResolver) -> None:
    verdict, signatures = verify(black_hole_resolver, sign(MESSAGE, "good.test", "sel", "good-sel2048.pem"))
    assert verdict.result == "temperror"
    assert verdict.temporary
    assert signatures[0].result == "temperror"
    assert "timeout" in signatures[0].reason.lower()


def test_missing_key_on_one_signature_does_not_hide_a_passing_one(resolver: DnsResolver) -> None:
    good = sign(MESSAGE, "good.test", "sel", "good-sel2048.pem")
    verdict, signatures = verify(resolver, sign(good, "good.test", "gone", "good-sel2048.pem"))
    assert verdict.result == "pass"
    assert [s.result for s in signatures] == ["permerror", "pass"]


def test_key_lookups_are_cached_by_the_shared_resolver(resolver: DnsResolver) -> None:
    signed = sign(MESSAGE, "good.test", "sel", "good-sel2048.pem")
    verify(resolver, signed)
    verify(resolver, signed)
    assert resolver.stats.queries == 1
    assert resolver.stats.cache_hits == 1


def test_signature_flood_is_capped_and_says_so(resolver: DnsResolver) -> None:
    flood = b"".join(
        f"DKIM-Signature: v=1; a=rsa-sha256; d=good.test; s=gone{i}; h=from; bh=AAAA; b=AAAA\r\n".encode()
        for i in range(MAX_SIGNATURES + 4)
    )
    verdict, signatures = verify(resolver, flood + MESSAGE)
    assert verdict.result == "permerror"
    assert len(signatures) == MAX_SIGNATURES
    assert resolver.stats.queries == MAX_SIGNATURES
    assert verdict.reason.endswith(f"(only the first {MAX_SIGNATURES} of {MAX_SIGNATURES + 4} signatures were checked)")


def test_signature_covering_only_part_of_the_body_does_not_pass(resolver: DnsResolver) -> None:
    key = (Path(__file__).parent / "keys" / "good-sel2048.pem").read_bytes()
    raw = b"From: alice@good.test\r\nTo: rc@reply.example.test\r\nSubject: Re\r\n\r\nNo\r\n"
    signed = bytes(dkim.sign(raw, b"sel", b"good.test", key, include_headers=[b"from"], length=True)) + raw

    verdict, [signature] = asyncio.run(check_dkim(resolver, signed + b"Appended: yes, complete it\r\n"))

    assert signature.result == "policy"
    assert "l=" in signature.reason
    assert verdict.result != "pass"


def sign_relaxed(message: bytes, domain: str, selector: str, key_file: str) -> bytes:
    private_key = (KEYS / key_file).read_bytes()
    header = dkim.sign(
        message,
        selector.encode(),
        domain.encode(),
        private_key,
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=[b"from", b"to", b"subject", b"message-id", b"date"],
    )
    return bytes(header) + message


def test_relaxed_signature_over_ordinary_text_passes(resolver: DnsResolver) -> None:
    table = b"".join(b"Item %d" % i + b" " * 40 + b"42\r\n" for i in range(200))
    verdict, signatures = verify(resolver, sign_relaxed(MESSAGE + table, "good.test", "sel", "good-sel2048.pem"))
    assert verdict.result == "pass"
    assert [s.result for s in signatures] == ["pass"]


def test_relaxed_signature_over_a_body_of_endless_white_space_is_not_verified(resolver: DnsResolver) -> None:
    # dkimpy's relaxed canonicalization takes seconds on runs of spaces that do not end a
    # line (its pattern tries every start of a run): such a body is not worth verifying.
    hostile = MESSAGE + (b" " * 990 + b"x\r\n") * 1000
    verdict, signatures = verify(resolver, sign_relaxed(hostile, "good.test", "sel", "good-sel2048.pem"))
    assert verdict.result == "permerror"
    assert [(s.domain, s.result) for s in signatures] == [("good.test", "permerror")]
    assert "white space" in signatures[0].reason


MIB = 1024 * 1024


def lines_of(atom: bytes, size: int) -> bytes:
    """``atom`` repeated on lines of under 998 bytes, to some ``size`` bytes of body."""
    line = atom * (990 // len(atom)) + b"\r\n"
    return line * (size // len(line))


# Bodies of 1 MiB (rc-mta's default max_message_size) whose runs of white space are each
# short, costing dkimpy's relaxed canonicalization 130-170 ms a signature (bench/dkim_whitespace.py).
SHORT_RUNS = {
    "a space between every letter": lines_of(b"x ", MIB),
    "runs of 31 beside one of 4400": b" " * 4400 + b"x\r\n" + lines_of(b" " * 31 + b"x", MIB - 4403),
}


@pytest.mark.parametrize("shape", sorted(SHORT_RUNS))
def test_relaxed_signature_over_a_megabyte_of_short_white_space_runs_is_not_verified(
    resolver: DnsResolver, shape: str
) -> None:
    hostile = MESSAGE.replace(b"approve\r\n", SHORT_RUNS[shape])
    verdict, signatures = verify(resolver, sign_relaxed(hostile, "good.test", "sel", "good-sel2048.pem"))
    assert verdict.result == "permerror"
    assert [(s.domain, s.result) for s in signatures] == [("good.test", "permerror")]
    assert "white space" in signatures[0].reason


def test_a_large_body_is_canonicalized_for_as_many_relaxed_signatures_as_its_cost_allows(
    resolver: DnsResolver,
) -> None:
    # dkimpy canonicalizes the body again for each signature: 1 MiB of runs of 31 spaces
    # (~100 ms each time) is verified once, not once for each signature on it.
    body = lines_of(b" " * 31 + b"x", MIB)
    signed_once = sign_relaxed(MESSAGE.replace(b"approve\r\n", body), "good.test", "sel", "good-sel2048.pem")
    signed_twice = sign_relaxed(signed_once, "good.test", "sel", "good-sel2048.pem")

    verdict, signatures = verify(resolver, signed_twice)

    assert verdict.result == "pass"
    assert [s.result for s in signatures] == ["pass", "permerror"]
    assert "over what is left" in signatures[1].reason and "after" in signatures[1].reason


def signed_by(message: bytes, times: int, names: list[bytes], canonicalize: bytes = b"relaxed") -> bytes:
    """``message`` with ``times`` good.test signatures on top, each signing ``names``."""
    key = (KEYS / "good-sel2048.pem").read_bytes()
    for _ in range(times):
        c = (canonicalize, canonicalize)
        message = bytes(dkim.sign(message, b"sel", b"good.test", key, canonicalize=c, include_headers=names)) + message
    return message


def with_fields(count: int, value: bytes) -> bytes:
    """MESSAGE with ``count`` more header fields of ``value``, as a sender may add them."""
    extra = b"".join(b"X-Filler-%d:%s\r\n" % (i, value) for i in range(count))
    return MESSAGE.replace(b"\r\n\r\n", b"\r\n" + extra + b"\r\n", 1)


SIGNS = [b"from", b"to", b"subject", b"message-id", b"date"]


def test_signatures_over_a_header_section_too_costly_to_canonicalize_each_time_are_not_all_verified(
    resolver: DnsResolver,
) -> None:
    # dkimpy canonicalizes every header field again for each relaxed signature: 256 KiB of
    # fields with a space every other byte cost ~20 ms each time, 16 times ~350 ms.
    raw = signed_by(with_fields(990, b" " + b"a " * 125), 5, SIGNS)

    verdict, signatures = verify(resolver, raw)

    assert verdict.result == "pass"
    assert [s.result for s in signatures] == ["pass"] * 3 + ["permerror"] * 2
    assert all("over what is left" in s.reason for s in signatures[3:]), signatures


def test_a_signature_listing_more_header_names_than_any_signer_is_not_verified(resolver: DnsResolver) -> None:
    # dkimpy looks through every field for each name of h=: 1,000 names no field has, over
    # 1,000 fields, cost 50 ms a signature (twice for one that passes).
    absent = [b"x-absent-%d" % i for i in range(100)]
    verdict, signatures = verify(resolver, signed_by(MESSAGE, 1, SIGNS + absent, b"simple"))
    assert verdict.result == "permerror"
    assert [s.result for s in signatures] == ["permerror"]
    assert "h= lists 105 header fields, more than the 100" in signatures[0].reason


def test_signatures_whose_h_names_cost_too_much_to_look_up_are_not_all_verified(resolver: DnsResolver) -> None:
    # 95 names no field has, each looked for through 1,000 fields: ~10 ms a signature.
    absent = [b"x-absent-%d" % i for i in range(90)]
    raw = signed_by(with_fields(990, b" x"), 12, SIGNS + absent, b"simple")

    verdict, signatures = verify(resolver, raw)

    assert verdict.result == "pass"
    passed = [s for s in signatures if s.result == "pass"]
    assert 0 < len(passed) < 12
    assert signatures[: len(passed)] == passed
    assert all("over what is left" in s.reason for s in signatures[len(passed) :]), signatures


def test_the_from_domains_own_signature_is_verified_first_under_a_relays_above_it(resolver: DnsResolver) -> None:
    # Relays sign on top of the owner. Over a large body the budget covers one relaxed
    # signature: it must be the owner's, wherever it stands.
    body = lines_of(b"The change board met today. ", MIB - 16 * 1024)
    owners = sign_relaxed(MESSAGE.replace(b"approve\r\n", body), "good.test", "sel", "good-sel2048.pem")
    relayed = sign_relaxed(owners, "evil.test", "evil", "evil-sel2048.pem")
    check = DkimCheck(resolver, 1024)

    verdict = asyncio.run(check.evaluate(CheckContext(raw=relayed, header_from="alice@good.test")))

    assert verdict.result == "pass"
    assert [(s.domain, s.result) for s in verdict.signatures] == [("evil.test", "permerror"), ("good.test", "pass")]
    assert "over what is left" in verdict.signatures[0].reason


def with_attachment(size: int) -> bytes:
    """MESSAGE as a reply with a base64 attachment of some ``size`` bytes (lines without white space)."""
    data = base64.encodebytes(bytes(range(256)) * (size * 3 // 4 // 256)).replace(b"\n", b"\r\n")
    head = MESSAGE.replace(b"\r\n\r\n", b"\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n")
    return head.replace(
        b"approve\r\n",
        b"--b\r\nContent-Type: text/plain\r\n\r\napprove, logs attached\r\n--b\r\n"
        b"Content-Type: application/gzip\r\nContent-Transfer-Encoding: base64\r\n\r\n" + data + b"--b--\r\n",
    )


def test_the_owners_signature_over_a_reply_larger_than_the_budget_reads_is_verified(resolver: DnsResolver) -> None:
    # An operator who raises max_message_size accepts replies with attachments: reading 5 MiB
    # relaxed once (~130 ms, 26 M steps) is what any verification of them costs; the size
    # limit bounds it, the budget only what is repeated on it.
    owners = sign_relaxed(with_attachment(5 * MIB), "good.test", "sel", "good-sel2048.pem")
    relayed = sign_relaxed(
        sign_relaxed(owners, "evil.test", "evil", "evil-sel2048.pem"), "good.test", "sel", "good-sel2048.pem"
    )
    check = DkimCheck(resolver, 1024)

    alone = asyncio.run(check.evaluate(CheckContext(raw=owners, header_from="alice@good.test")))
    signed_thrice = asyncio.run(check.evaluate(CheckContext(raw=relayed, header_from="alice@good.test")))

    assert alone.result == "pass", alone
    assert [(s.domain, s.result) for s in alone.signatures] == [("good.test", "pass")]
    assert signed_thrice.result == "pass", signed_thrice
    results = [(s.domain, s.result) for s in signed_thrice.signatures]
    assert results == [("good.test", "pass"), ("evil.test", "permerror"), ("good.test", "permerror")]
    for repeat in signed_thrice.signatures[1:]:
        assert "over what is left" in repeat.reason and "only the first verified reads the body free" in repeat.reason


def test_a_signature_field_too_long_to_be_real_is_not_verified(resolver: DnsResolver) -> None:
    signed = sign(MESSAGE, "good.test", "sel", "good-sel2048.pem")
    padded = signed.replace(b"DKIM-Signature: ", b"DKIM-Signature: z=" + b"a" * 5000 + b"; ", 1)
    verdict, signatures = verify(resolver, padded)
    assert verdict.result == "permerror"
    assert "over 4096 bytes" in signatures[0].reason


def test_the_message_is_split_once_exactly_as_dkimpy_splits_it() -> None:
    signed = sign(MESSAGE, "good.test", "sel", "good-sel2048.pem")
    for raw in (
        signed,
        signed + b"\r\n\r\n",
        b"\r\nno header at all\r\n",
        b"From: a@good.test\r\nSubject: no body\r\n",
        b"From: a@good.test\r\nSubject: folded\r\n\tline\r\n\r\nbody\rwith a bare CR\r\n",
        b"From: a@good.test\nSubject: bare LF\n\nbody\r\nmixed\n",
        b"From: a@good.test\r\n\r\n" + b"\r\n" * 1000,
    ):
        assert parse(raw) == tuple(dkim.rfc822_parse(raw)), raw


# On the loop (a light message) and in the reading pool: the same verdicts -------------------


def test_verifying_on_the_loop_agrees_with_the_pool_for_every_kind_of_signature(resolver: DnsResolver) -> None:
    good = sign(MESSAGE, "good.test", "sel", "good-sel2048.pem")
    cases = {
        "pass": good,
        "body changed": good.replace(b"approve\r\n", b"reject\r\n"),
        "header changed": good.replace(b"Subject: Re: Approve", b"Subject: Re: Reject"),
        "unsigned": MESSAGE,
        "no key published": sign(MESSAGE, "good.test", "gone", "good-sel2048.pem"),
        "unparseable": b"DKIM-Signature: v=1; a=rsa-sha256; d=good.test; s=sel\r\n" + MESSAGE,
        "two domains": sign(good, "evil.test", "evil", "evil-sel2048.pem"),
        "short key": sign(MESSAGE, "good.test", "small", "good-small1024.pem"),
        "relaxed": sign_relaxed(MESSAGE, "good.test", "sel", "good-sel2048.pem"),
    }
    for name, raw in cases.items():
        for bits in (1024, 2048):
            in_pool = asyncio.run(check_dkim(resolver, raw, min_key_bits=bits))
            on_loop = asyncio.run(check_dkim(resolver, raw, min_key_bits=bits, on_loop=True))
            assert on_loop == in_pool, name


def test_a_key_not_looked_up_ahead_sends_the_verification_to_the_pool(resolver: DnsResolver) -> None:
    raw = sign(MESSAGE, "good.test", "sel", "good-sel2048.pem")
    # On the loop nothing may wait for DNS: without the key at hand, verification moves.
    with pytest.raises(NeedsThread):
        _verify_one(resolver, parse(raw), 0, 1024, {}, on_loop=True)
    # In the pool the same call asks DNS itself and verifies.
    assert _verify_one(resolver, parse(raw), 0, 1024, {}).result == "pass"


# Keys a sender publishes to make verification cost seconds -----------------------------------


def _der(tag: int, body: bytes) -> bytes:
    size = len(body)
    length = (
        bytes([size])
        if size < 128
        else bytes([0x80 | ((size.bit_length() + 7) // 8)]) + size.to_bytes((size.bit_length() + 7) // 8, "big")
    )
    return bytes([tag]) + length + body


def rsa_record(modulus_bits: int, exponent: int) -> bytes:
    """A DKIM key record for an RSA key of that size and exponent (any odd numbers: it is
    refused, or its signatures fail, before anything else matters)."""

    def integer(value: int) -> bytes:
        return _der(0x02, value.to_bytes((value.bit_length() + 8) // 8, "big"))

    modulus = (1 << (modulus_bits - 1)) | 1
    key = _der(0x30, integer(modulus) + integer(exponent))
    algorithm = _der(0x30, _der(0x06, bytes.fromhex("2a864886f70d010101")) + b"\x05\x00")
    return b"v=DKIM1; k=rsa; p=" + base64.b64encode(_der(0x30, algorithm + _der(0x03, b"\x00" + key)))


def test_a_key_too_large_or_with_a_huge_exponent_is_refused_before_use(resolver: DnsResolver) -> None:
    assert unreasonable_key(rsa_record(2048, 65537)) is None
    assert unreasonable_key(rsa_record(16384, 65537)) == "a 16384-bit key, over the 8192 bits verified here"
    assert unreasonable_key(rsa_record(2048, (1 << 2047) | 1)) == "a public exponent over 2^32 (real keys use 65537)"
    raw = sign(MESSAGE, "good.test", "sel", "good-sel2048.pem").replace(b"s=sel", b"s=huge", 1)
    keys = {"huge._domainkey.good.test": rsa_record(4096, (1 << 4095) | 1)}

    signature = _verify_one(resolver, parse(raw), 0, 1024, keys)

    assert (signature.result, signature.reason) == (
        "permerror",
        "unusable key at huge._domainkey.good.test: a public exponent over 2^32 (real keys use 65537)",
    )


# OpenSSL's RSA (dkim_rsa.py) gives dkimpy's own answers ---------------------------------


def _rsa_cases() -> list[tuple[str, object, bytes, dict[str, int]]]:
    """(name, hash, signature, public key as dkimpy parses it): good, forged and malformed."""
    cases: list[tuple[str, object, bytes, dict[str, int]]] = []
    for bits, exponent in ((1024, 65537), (2048, 65537), (2048, 3)):
        private = rsa.generate_private_key(public_exponent=exponent, key_size=bits)
        numbers = private.public_key().public_numbers()
        key = {"modulus": numbers.n, "publicExponent": numbers.e}
        for algorithm, name in ((hashes.SHA256(), "sha256"), (hashes.SHA1(), "sha1")):
            message = f"{bits}-bit {name} body".encode()
            signature = private.sign(message, padding.PKCS1v15(), algorithm)
            digest = hashlib.new(name, message)
            value = int.from_bytes(signature, "big")
            cases += [
                (f"{bits}/{exponent} {name}: genuine", digest, signature, key),
                (f"{bits}/{exponent} {name}: one bit flipped", digest, bytes([signature[0] ^ 1]) + signature[1:], key),
                (f"{bits}/{exponent} {name}: other message", hashlib.new(name, b"other"), signature, key),
                (
                    f"{bits}/{exponent} {name}: plus the modulus",
                    digest,
                    (value + numbers.n).to_bytes(len(signature) + 1, "big"),
                    key,
                ),
                (f"{bits}/{exponent} {name}: leading zeros", digest, b"\x00\x00" + signature, key),
                (f"{bits}/{exponent} {name}: truncated", digest, signature[1:], key),
                (f"{bits}/{exponent} {name}: empty", digest, b"", key),
                (f"{bits}/{exponent} {name}: all ones", digest, b"\xff" * len(signature), key),
            ]
    return cases


@pytest.mark.parametrize("case", _rsa_cases(), ids=lambda case: case[0])
def test_openssl_rsa_check_answers_as_dkimpy_own(case: tuple[str, object, bytes, dict[str, int]]) -> None:
    name, digest, signature, key = case
    expected = dkim.crypto.RSASSA_PKCS1_v1_5_verify(digest, signature, key)
    assert dkim_rsa.verify_pkcs1_v1_5(digest, signature, key) == expected  # type: ignore[arg-type]
    assert expected == name.endswith(("genuine", "plus the modulus", "leading zeros"))


@pytest.mark.parametrize("pem", ["good-sel2048.pem", "good-small1024.pem", "sealer-arc2048.pem"])
@pytest.mark.parametrize("name", ["sha256", "sha1"])
def test_openssl_rsa_signature_is_dkimpy_own_byte_for_byte(pem: str, name: str) -> None:
    private_key = dkim.crypto.parse_pem_private_key((KEYS / pem).read_bytes())
    digest = hashlib.new(name, f"a request mail signed with {pem}".encode())
    assert dkim_rsa.sign_pkcs1_v1_5(digest, private_key) == bytes(
        dkim.crypto.RSASSA_PKCS1_v1_5_sign(digest, private_key)
    )


def test_openssl_rsa_check_keeps_dkimpys_answer_for_keys_openssl_will_not_take() -> None:
    # Above 3072 bits OpenSSL takes no exponent over 64 bits, and says so only as "invalid".
    numbers = rsa.generate_private_key(public_exponent=65537, key_size=4096).private_numbers()
    p, q = numbers.p, numbers.q
    totient = (p - 1) * (q - 1)
    exponent = next(e for e in range(2**65 + 1, 2**65 + 1000, 2) if math.gcd(e, totient) == 1)
    modulus, private = p * q, pow(exponent, -1, totient)
    digest = hashlib.sha256(b"a key with a large exponent")
    encoded = dkim.crypto.EMSA_PKCS1_v1_5_encode(digest, 512)
    signature = pow(int.from_bytes(encoded, "big"), private, modulus).to_bytes(512, "big")
    key = {"modulus": modulus, "publicExponent": exponent}

    assert dkim.crypto.RSASSA_PKCS1_v1_5_verify(digest, signature, key)
    assert dkim_rsa.verify_pkcs1_v1_5(digest, signature, key)  # type: ignore[arg-type]
