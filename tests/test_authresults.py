"""Authentication-Results: the header we write, forged copies of it we remove, and the
headers of trusted receivers we read."""

from __future__ import annotations

from rc_mta.authresults import (
    ReceivedAuthResult,
    arc_authentication_results,
    exchange_online_authentication_results,
    format_authentication_results,
    strip_forged_authentication_results,
    trusted_authentication_results,
)

OURS = "mx.reply.example.test"


def test_results_are_formatted_as_one_header_value() -> None:
    value = format_authentication_results(
        OURS,
        [
            ("spf", "pass", {"smtp.mailfrom": "a@good.test"}),
            ("dkim", "pass", {"header.d": "good.test", "header.s": "sel"}),
            ("dmarc", "pass", {"header.from": "good.test"}),
        ],
    )
    assert value == (
        "mx.reply.example.test; spf=pass smtp.mailfrom=a@good.test; "
        "dkim=pass header.d=good.test header.s=sel; dmarc=pass header.from=good.test"
    )


def test_no_results_is_written_as_none() -> None:
    assert format_authentication_results(OURS, []) == "mx.reply.example.test; none"


def test_values_that_are_not_tokens_are_quoted_and_cannot_break_the_header() -> None:
    value = format_authentication_results(
        OURS,
        [("spf", "fail", {"smtp.mailfrom": 'evil "x"@bad.test\r\nX-Injected: 1', "reason": "not permitted"})],
    )
    assert value == (
        'mx.reply.example.test; spf=fail reason="not permitted" smtp.mailfrom="evil \\"x\\"@bad.test X-Injected: 1"'
    )
    assert "\r" not in value and "\n" not in value


def test_formatted_header_reads_back_the_same() -> None:
    results = [
        ("spf", "fail", {"smtp.mailfrom": "odd user@bad.test", "reason": "not permitted; sorry"}),
        ("dkim", "pass", {"header.d": "good.test", "header.s": "sel"}),
    ]
    raw = f"Authentication-Results: {format_authentication_results(OURS, results)}\r\n\r\nbody\r\n".encode()
    assert trusted_authentication_results(raw, [OURS]) == [
        ReceivedAuthResult("spf", "fail", {"reason": "not permitted; sorry", "smtp.mailfrom": "odd user@bad.test"}),
        ReceivedAuthResult("dkim", "pass", {"header.d": "good.test", "header.s": "sel"}),
    ]


def test_arc_comment_cannot_close_itself_and_add_results() -> None:
    # The selector is the sealer's own word: a ")" in it must not end the comment.
    comment = "as.1.d=sealer.test as.1.s=x) dmarc=pass (y\r\nX-Injected: 1"
    results = [("arc", "pass", {"comment": comment}), ("dmarc", "fail", {"header.from": "corp.test"})]
    value = format_authentication_results(OURS, results)
    raw = f"Authentication-Results: {value}\r\n\r\nbody\r\n".encode()

    assert value.startswith(
        "mx.reply.example.test; arc=pass (as.1.d=sealer.test as.1.s=x  dmarc=pass  y X-Injected: 1)"
    )
    assert trusted_authentication_results(raw, [OURS]) == [
        ReceivedAuthResult("arc", "pass", {}),
        ReceivedAuthResult("dmarc", "fail", {"header.from": "corp.test"}),
    ]


def test_arc_authentication_results_are_read_after_their_instance() -> None:
    value = "i=2; gw.sealer.test; dkim=pass header.d=corp.test; dmarc=pass header.from=corp.test"

    assert arc_authentication_results(value) == [
        ReceivedAuthResult("dkim", "pass", {"header.d": "corp.test"}),
        ReceivedAuthResult("dmarc", "pass", {"header.from": "corp.test"}),
    ]
    assert arc_authentication_results("gw.sealer.test; dmarc=pass header.from=corp.test") == []


FORGED = (
    b"Received: from attacker.test by mx.reply.example.test\r\n"
    b"Authentication-Results: MX.Reply.Example.Test (we promise);\r\n"
    b"\tdmarc=pass header.from=bank.test\r\n"
    b"Authentication-Results: mx.upstream.test; spf=pass smtp.mailfrom=a@good.test\r\n"
    b"From: boss@bank.test\r\n"
    b"Subject: Authentication-Results: mx.reply.example.test; dmarc=pass\r\n"
    b"\r\n"
    b"Authentication-Results: mx.reply.example.test; dmarc=pass\r\n"
)


def test_forged_header_with_our_id_is_removed_including_its_folded_line() -> None:
    stripped = strip_forged_authentication_results(FORGED, OURS)
    assert stripped == (
        b"Received: from attacker.test by mx.reply.example.test\r\n"
        b"Authentication-Results: mx.upstream.test; spf=pass smtp.mailfrom=a@good.test\r\n"
        b"From: boss@bank.test\r\n"
        b"Subject: Authentication-Results: mx.reply.example.test; dmarc=pass\r\n"
        b"\r\n"
        b"Authentication-Results: mx.reply.example.test; dmarc=pass\r\n"
    )


def test_forgery_is_found_behind_comments_versions_quotes_and_odd_spacing() -> None:
    raw = (
        b'authentication-results :(c) "mx.reply.example.test" 1; dkim=pass\n'
        b"Authentication-Results:\n (folded (nested) comment)\n  mx.reply.example.test.; spf=pass\n"
        b"Authentication-Results: mx.reply.example.test.evil.test; spf=pass\n"
        b"To: tasks@reply.example.test\n"
        b"\n"
        b"body\n"
    )
    assert strip_forged_authentication_results(raw, OURS) == (
        b"Authentication-Results: mx.reply.example.test.evil.test; spf=pass\nTo: tasks@reply.example.test\n\nbody\n"
    )


def test_message_without_forgeries_is_left_byte_for_byte() -> None:
    raw = b"From: a@good.test\r\nX-Odd:  spaced \r\n folded\r\n\r\nline one\r\n\r\nline three"
    assert strip_forged_authentication_results(raw, OURS) == raw


def test_only_the_topmost_header_of_a_trusted_receiver_is_read() -> None:
    raw = (
        b"Authentication-Results: mx.elsewhere.test; dmarc=pass header.from=bank.test\r\n"
        b"Authentication-Results: gw.corp.test 1; spf=pass (sender is authorized)\r\n"
        b"  smtp.mailfrom=alice@good.test;\r\n"
        b"  dkim=pass (2048-bit key; secure) header.d=good.test header.i=@good.test\r\n"
        b'   header.s=sel header.b="Ab/9+x=";\r\n'
        b"  dmarc=pass (p=reject dis=none) header.from=good.test\r\n"
        b"Authentication-Results: gw.corp.test; dmarc=fail header.from=good.test\r\n"
        b"\r\n"
        b"approve\r\n"
    )
    assert trusted_authentication_results(raw, ["GW.corp.test"]) == [
        ReceivedAuthResult("spf", "pass", {"smtp.mailfrom": "alice@good.test"}),
        ReceivedAuthResult(
            "dkim",
            "pass",
            {"header.d": "good.test", "header.i": "@good.test", "header.s": "sel", "header.b": "Ab/9+x="},
        ),
        ReceivedAuthResult("dmarc", "pass", {"header.from": "good.test"}),
    ]


def test_headers_from_untrusted_receivers_are_ignored() -> None:
    raw = b"Authentication-Results: mx.elsewhere.test; dmarc=pass header.from=bank.test\r\n\r\nbody\r\n"
    assert trusted_authentication_results(raw, ["gw.corp.test"]) == []


def test_trusted_none_header_has_no_results() -> None:
    raw = b"Authentication-Results: gw.corp.test; none\r\n\r\n"
    assert trusted_authentication_results(raw, ["gw.corp.test"]) == []


def test_unquoted_slashes_and_quoted_local_parts_are_read_whole() -> None:
    raw = (
        b'Authentication-Results: gw.corp.test; dkim/1=fail reason="bad sig" header.b=ab/cd+e=;\r\n'
        b' spf=pass smtp.mailfrom="john doe"@good.test\r\n\r\n'
    )
    assert trusted_authentication_results(raw, ["gw.corp.test"]) == [
        ReceivedAuthResult("dkim", "fail", {"reason": "bad sig", "header.b": "ab/cd+e="}),
        ReceivedAuthResult("spf", "pass", {"smtp.mailfrom": "john doe@good.test"}),
    ]


# Exchange Online's field names no authserv-id: only its place tells it (README, "Exchange Online").
EXO_HOPS = (
    b"Received: from BN1PR10CA0002.outlook.office365.com (2603:10b6:408:e0::7) by\r\n"
    b" DM4PR12MB6448.namprd12.prod.outlook.com (2603:10b6:8:8a::7) with Microsoft SMTP Server; Mon, 30 Nov 2026\r\n"
)
EXO_ENTRY = (
    b"Received-SPF: Pass (protection.outlook.com: domain of good.test designates 192.0.2.1 as permitted sender)\r\n"
    b"Received: from mx.good.test (192.0.2.1) by BN1PEPF00004687.mail.protection.outlook.com (10.167.243.132)\r\n"
    b" with Microsoft SMTP Server via Frontend Transport; Mon, 30 Nov 2026\r\n"
)
# Exchange's mark of mail from the Internet, written at the end of the header block.
EXO_MARK = b"X-MS-Exchange-Organization-AuthAs: Anonymous\r\n"
EXO_STAMP = (
    b"Authentication-Results: spf=pass (sender IP is 192.0.2.1) smtp.mailfrom=good.test; dkim=pass (signature\r\n"
    b" was verified) header.d=good.test;dmarc=pass action=none header.from=good.test;compauth=pass reason=100\r\n"
)


def test_exchange_onlines_field_without_authserv_id_is_read_from_its_first_result() -> None:
    raw = EXO_HOPS + EXO_STAMP + EXO_ENTRY + b"From: a@good.test\r\n" + EXO_MARK + b"\r\nbody\r\n"
    results = exchange_online_authentication_results(raw)
    assert results is not None
    assert [(r.method, r.result) for r in results] == [
        ("spf", "pass"),
        ("dkim", "pass"),
        ("dmarc", "pass"),
        ("compauth", "pass"),
    ]
    assert results[0].properties["smtp.mailfrom"] == "good.test"
    assert results[2].properties["header.from"] == "good.test"


def test_exchange_onlines_field_with_its_new_authserv_id_is_read_too() -> None:
    stamp = EXO_STAMP.replace(b"Authentication-Results: ", b"Authentication-Results: mx.microsoft.com 1; ")
    results = exchange_online_authentication_results(EXO_HOPS + stamp + EXO_ENTRY + EXO_MARK + b"\r\n")
    assert results is not None and results[0] == ReceivedAuthResult("spf", "pass", {"smtp.mailfrom": "good.test"})


def test_a_field_with_another_hop_above_it_or_none_is_not_exchange_onlines() -> None:
    """Another receiver's Received above it, no Exchange hop above it (a message appended to
    the mailbox), or another authserv-id: nothing here is Exchange Online's."""
    other_hop = b"Received: from a by mx.other.test; Mon, 30 Nov 2026\r\n"
    assert (
        exchange_online_authentication_results(other_hop + EXO_HOPS + EXO_STAMP + EXO_ENTRY + EXO_MARK + b"\r\n")
        is None
    )
    assert exchange_online_authentication_results(EXO_STAMP + EXO_HOPS + EXO_ENTRY + EXO_MARK + b"\r\n") is None
    named = EXO_STAMP.replace(b"Authentication-Results: ", b"Authentication-Results: mx.good.test; ")
    assert exchange_online_authentication_results(EXO_HOPS + named + EXO_ENTRY + EXO_MARK + b"\r\n") is None


def test_only_exchange_onlines_topmost_field_is_read_not_a_senders_below_its_entry() -> None:
    sender_stamp = b"Authentication-Results: dmarc=pass header.from=bank.test\r\n"
    raw = EXO_HOPS + EXO_STAMP + EXO_ENTRY + sender_stamp + EXO_MARK + b"\r\n"
    results = exchange_online_authentication_results(raw)
    assert results is not None and "bank.test" not in {r.properties.get("header.from") for r in results}
    assert exchange_online_authentication_results(EXO_HOPS + EXO_ENTRY + sender_stamp + EXO_MARK + b"\r\n") is None


def test_exchange_onlines_place_is_read_only_on_mail_it_received_from_outside() -> None:
    """A colleague's message (AuthAs Internal) has only Exchange's inner hops above what its
    author wrote: an Authentication-Results the author put on top is not Exchange's. Two
    marks (one a sender's that the header firewall missed) or none: not read either."""
    authors_stamp = (
        b"Authentication-Results: spf=pass smtp.mailfrom=tenant.test; dmarc=pass header.from=tenant.test\r\n"
    )
    submitted = EXO_HOPS + authors_stamp + b"From: owner@tenant.test\r\nSender: delegate@tenant.test\r\n"
    internal = b"X-MS-Exchange-Organization-AuthAs: Internal\r\n"
    assert exchange_online_authentication_results(submitted + internal + b"\r\n") is None
    outside = EXO_HOPS + EXO_STAMP + EXO_ENTRY
    assert exchange_online_authentication_results(outside + internal + EXO_MARK + b"\r\n") is None
    assert exchange_online_authentication_results(outside + b"\r\n") is None
    partner = b"X-MS-Exchange-Organization-AuthAs: Partner\r\n"
    assert exchange_online_authentication_results(outside + partner + b"\r\n") is not None
