"""Digital.ai Release as the task backend: over real HTTP against a stand-in that follows
Release's documented API, and end to end through a real rc-mta and real SMTP."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from conftest import RcMta, make_rc_mta
from mailclient import reply_message, send_smtp
from pydantic import SecretStr
from release_server import FakeRelease

from rc_mta import smtp_replies as R
from rc_mta.config import ReleaseConfig
from rc_mta.errors import (
    BackendAuthFailed,
    BackendOutcomeUnknown,
    BackendRefused,
    BackendUnavailable,
    TemporaryFailure,
)
from rc_mta.tasks import ActionContext, TaskNotFound, TaskNotInProgress
from rc_mta.tasks._base import expiry_note
from rc_mta.tasks.release import ReleaseBackend

TASK = "Applications/Folder1/Release1/Phase1/Task1"
TOKEN = "release-personal-token-0123"
ALICE = "alice@example.com"
BOB = "bob@example.com"
CONTEXT = ActionContext("request-1", "<m1@example.com>", "smtp", {"spf": "pass"})
T = TypeVar("T")


@pytest.fixture
def release() -> Iterator[FakeRelease]:
    server = FakeRelease(token=TOKEN).start()
    server.add_task(TASK, owner="alice")
    yield server
    server.stop()


def backend_for(release: FakeRelease, **overrides: Any) -> ReleaseBackend:
    values: dict[str, Any] = {"url": release.url, "token": SecretStr(TOKEN), "timeout": 2.0, "retries": 1}
    values.update(overrides)
    return ReleaseBackend(ReleaseConfig(**values))


def run(backend: ReleaseBackend, call: Callable[[ReleaseBackend], Awaitable[T]]) -> T:
    """One call on a loop of its own, the session closed afterwards (as rc-mta does)."""

    async def go() -> T:
        try:
            return await call(backend)
        finally:
            await backend.close()

    return asyncio.run(go())


# Reading tasks --------------------------------------------------------------------------


def test_get_reports_title_owner_and_in_progress_of_a_task_in_folders(release: FakeRelease) -> None:
    task = run(backend_for(release), lambda b: b.get(TASK))
    assert (task.id, task.title, task.owner, task.status) == (TASK, "Approve deploy to prod", "alice", "in_progress")


@pytest.mark.parametrize("status", ["COMPLETED", "SKIPPED", "PLANNED", "COMPLETED_IN_ADVANCE", "FAILED"])
def test_get_reports_other_release_statuses_in_lower_case(release: FakeRelease, status: str) -> None:
    release.add_task(f"{TASK}-{status}", status=status)
    assert run(backend_for(release), lambda b: b.get(f"{TASK}-{status}")).status == status.lower()


def test_unknown_task_is_not_found(release: FakeRelease) -> None:
    with pytest.raises(TaskNotFound):
        run(backend_for(release), lambda b: b.get("Applications/Folder1/Release1/Phase1/Task404"))


def test_task_id_that_would_climb_out_of_the_tasks_path_is_never_sent(release: FakeRelease) -> None:
    with pytest.raises(TaskNotFound):
        run(backend_for(release), lambda b: b.complete("Applications/../../api/v1/releases", "x", ALICE, CONTEXT))
    assert not release.calls


# Acting ---------------------------------------------------------------------------------


def test_complete_records_the_reply_and_who_answered_by_email(release: FakeRelease) -> None:
    run(backend_for(release), lambda b: b.complete(TASK, "Ship it", ALICE, CONTEXT))
    assert release.status(TASK) == "COMPLETED"
    assert release.comments(TASK)[-1]["text"] == f"Ship it\n\n— answered by email by {ALICE}"
    assert release.calls[TASK, "complete"] == 1


def test_fail_without_words_records_only_who_answered(release: FakeRelease) -> None:
    run(backend_for(release), lambda b: b.fail(TASK, "", ALICE, CONTEXT))
    assert release.status(TASK) == "FAILED"
    assert release.comments(TASK)[-1]["text"] == f"— answered by email by {ALICE}"


def test_basic_authentication_works_too(release: FakeRelease) -> None:
    basic = backend_for(release, token=SecretStr(""), username=release.username, password=SecretStr(release.password))
    run(basic, lambda b: b.complete(TASK, "ok", ALICE, CONTEXT))
    assert release.actions_on(TASK)[0].user == release.username


def test_task_not_in_progress_is_refused_without_posting(release: FakeRelease) -> None:
    release.add_task(f"{TASK}b", status="PLANNED")
    with pytest.raises(TaskNotInProgress) as refused:
        run(backend_for(release), lambda b: b.complete(f"{TASK}b", "Ship it", ALICE, CONTEXT))
    assert refused.value.task.status == "planned"
    assert not release.calls


@pytest.mark.parametrize("conflict_status", [400, 409])
def test_two_answers_racing_act_once_and_the_loser_learns_who_won(release: FakeRelease, conflict_status: int) -> None:
    release.conflict_status = conflict_status
    backend = backend_for(release)

    async def both() -> list[BaseException | None]:
        try:
            return list(
                await asyncio.gather(
                    backend.complete(TASK, "yes", ALICE, CONTEXT),
                    backend.fail(TASK, "no", "bob@example.com", CONTEXT),
                    return_exceptions=True,
                )
            )
        finally:
            await backend.close()

    outcomes = asyncio.run(both())
    assert len(release.actions_on(TASK)) == 1
    winner = release.actions_on(TASK)[0]
    refusals = [o for o in outcomes if isinstance(o, TaskNotInProgress)]
    assert len(refusals) == 1 and outcomes.count(None) == 1
    assert refusals[0].task.status == {"complete": "completed", "fail": "failed"}[winner.action]
    assert refusals[0].task.acted_by == (ALICE if winner.action == "complete" else "bob@example.com")


def test_wrong_token_is_an_auth_failure_logged_without_the_secret(
    release: FakeRelease, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, "rc_mta.tasks.release")
    with pytest.raises(BackendAuthFailed):
        run(backend_for(release, token=SecretStr("wrong-token-xyz")), lambda b: b.complete(TASK, "ok", ALICE, CONTEXT))
    assert "refused our credentials" in caplog.text
    assert "wrong-token-xyz" not in caplog.text
    assert release.status(TASK) == "IN_PROGRESS" and not release.calls


def test_wrong_password_is_an_auth_failure_logged_without_the_password(
    release: FakeRelease, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, "rc_mta.tasks.release")
    basic = backend_for(release, token=SecretStr(""), username="rc-mta", password=SecretStr("guess-1234"))
    with pytest.raises(BackendAuthFailed):
        run(basic, lambda b: b.get(TASK))
    assert "user rc-mta" in caplog.text and "guess-1234" not in caplog.text


def test_missing_permission_on_the_task_is_an_auth_failure(release: FakeRelease) -> None:
    release.forbidden.add(TASK)
    with pytest.raises(BackendAuthFailed):
        run(backend_for(release), lambda b: b.complete(TASK, "ok", ALICE, CONTEXT))


def test_release_not_running_is_temporary_and_works_once_back(release: FakeRelease) -> None:
    release.go_down()
    with pytest.raises(TemporaryFailure):
        run(backend_for(release), lambda b: b.complete(TASK, "ok", ALICE, CONTEXT))
    release.come_back()
    run(backend_for(release), lambda b: b.complete(TASK, "ok", ALICE, CONTEXT))
    assert release.calls[TASK, "complete"] == 1 and release.status(TASK) == "COMPLETED"


def test_release_answering_503_is_temporary(release: FakeRelease) -> None:
    release.unavailable = True
    with pytest.raises(TemporaryFailure):
        run(backend_for(release), lambda b: b.complete(TASK, "ok", ALICE, CONTEXT))
    assert release.status(TASK) == "IN_PROGRESS"


def test_slow_release_times_out_as_temporary(release: FakeRelease) -> None:
    release.delay = 1.0
    with pytest.raises(TemporaryFailure):
        run(backend_for(release, timeout=0.3), lambda b: b.get(TASK))


def test_post_that_timed_out_but_acted_is_recognised_as_ours_on_the_retry(release: FakeRelease) -> None:
    release.action_delay = 1.0
    with pytest.raises(TemporaryFailure):
        run(backend_for(release, timeout=0.3), lambda b: b.complete(TASK, "ok", ALICE, CONTEXT))
    release.action_delay = 0
    with pytest.raises(TaskNotInProgress) as again:  # what the pipeline takes for "already done by us"
        run(backend_for(release), lambda b: b.complete(TASK, "ok", ALICE, CONTEXT))
    assert (again.value.task.status, again.value.task.acted_by) == ("completed", ALICE)
    assert release.calls[TASK, "complete"] == 1


def test_a_post_that_could_not_connect_sent_nothing_and_is_no_unknown_outcome(release: FakeRelease) -> None:
    """Release goes silent between our read and our POST (SYNs dropped without a word: a full
    accept queue here, a firewall in life): the POST never left, so Release is unavailable,
    not 'may have acted', and the POST does not wait out the whole timeout to say so."""
    release.silent_after_read = True
    with pytest.raises(BackendUnavailable) as unsent:
        run(backend_for(release, timeout=1.0, retries=0), lambda b: b.complete(TASK, "ok", ALICE, CONTEXT))
    assert not isinstance(unsent.value, BackendOutcomeUnknown), unsent.value
    assert str(unsent.value) == f"cannot reach Release at {release.url}: connecting timed out"
    assert not release.calls and release.status(TASK) == "IN_PROGRESS"


def test_a_post_that_could_not_connect_is_tried_again_after_reading_the_task_again(release: FakeRelease) -> None:
    """Release is silent for the POST's connect only, then answers again: nothing was sent, so
    after a back-off the task is read again and, still in progress, completed by a second POST."""
    release.silent_after_read, release.silent_connects = True, 1
    run(backend_for(release, timeout=1.0, retries=1), lambda b: b.complete(TASK, "ok", ALICE, CONTEXT))
    read, post = ("GET", f"/api/v1/tasks/{TASK}"), ("POST", f"/api/v1/tasks/{TASK}/complete")
    assert [(m, p) for m, p, _ in release.seen] == [read, read, post] and release.dropped_connects == 1
    assert [(a.action, a.user) for a in release.actions_on(TASK)] == [("complete", "token-user")]
    assert release.status(TASK) == "COMPLETED" and release.calls[TASK, "complete"] == 1


def test_a_post_that_could_not_connect_is_not_tried_again_on_a_task_done_meanwhile(release: FakeRelease) -> None:
    """As above, but someone completes the task in Release's UI during the back-off: the read
    before the second try shows it, so there is no second POST, and the task is not in progress."""
    release.silent_after_read, release.silent_connects = True, 1
    release.meanwhile = lambda: release.set_status(TASK, "COMPLETED")
    with pytest.raises(TaskNotInProgress) as done:
        run(backend_for(release, timeout=1.0, retries=1), lambda b: b.complete(TASK, "ok", ALICE, CONTEXT))
    assert (done.value.task.status, done.value.task.acted_by) == ("completed", None)
    assert [(m, p) for m, p, _ in release.seen] == [("GET", f"/api/v1/tasks/{TASK}")] * 2
    assert release.dropped_connects == 1 and not release.calls and not release.actions_on(TASK)


NOTE, LATER_NOTE = (expiry_note(ALICE, "4f1c0e2a9b7d3e65", t) for t in (1_900_000_000, 1_900_000_060))  # two minutes


@pytest.mark.parametrize("lost", ["drop", "504", "late"])
def test_a_comment_whose_answer_was_lost_is_there_once_after_the_retry(release: FakeRelease, lost: str) -> None:
    """Release added the comment but its answer never came back (the connection dropped, a
    proxy's 504, a timeout once connected): the retry (the next notice round) finds the
    comment there and counts it told, instead of saying it a second time."""
    release.lost_comment_answers = [lost]
    with pytest.raises(BackendUnavailable):
        run(backend_for(release, timeout=1.0), lambda b: b.add_comment(TASK, NOTE))
    run(backend_for(release), lambda b: b.add_comment(TASK, NOTE))
    assert [c["text"] for c in release.comments(TASK)] == [NOTE]
    assert release.calls_by("token-user", "POST", f"/api/v1/tasks/{TASK}/comment") == 1


def test_a_comment_that_never_connected_is_posted_on_the_retry(release: FakeRelease) -> None:
    """Release goes silent between our read and our POST: nothing was sent, so the retry
    posts it (once), and another note is not taken for this one."""
    release.silent_after_read = True
    with pytest.raises(BackendUnavailable) as unsent:
        run(backend_for(release, timeout=1.0, retries=0), lambda b: b.add_comment(TASK, NOTE))
    assert not isinstance(unsent.value, BackendOutcomeUnknown), unsent.value
    assert release.comments(TASK) == []
    release.come_back()
    run(backend_for(release), lambda b: b.add_comment(TASK, NOTE))
    run(backend_for(release), lambda b: b.add_comment(TASK, LATER_NOTE))
    assert [c["text"] for c in release.comments(TASK)] == [NOTE, LATER_NOTE]


def test_bad_gateway_before_release_saw_the_call_is_retried(release: FakeRelease) -> None:
    release.gateway_errors = 1
    run(backend_for(release), lambda b: b.complete(TASK, "ok", ALICE, CONTEXT))
    assert release.calls[TASK, "complete"] == 2 and len(release.actions_on(TASK)) == 1


def test_bad_gateway_after_release_acted_is_not_retried(release: FakeRelease) -> None:
    release.gateway_errors, release.gateway_error_acts = 1, True
    with pytest.raises(TaskNotInProgress) as done:
        run(backend_for(release), lambda b: b.complete(TASK, "ok", ALICE, CONTEXT))
    assert (done.value.task.status, done.value.task.acted_by) == ("completed", ALICE)
    assert release.calls[TASK, "complete"] == 1


def test_an_action_at_its_longest_ends_within_the_worst_case_the_config_checks(release: FakeRelease) -> None:
    """Every call comes late, near its timeout, and every read and POST fails all its tries
    but the last: a read (503, then the task), the POST (503), a back-off, a read, the last
    POST (409), and the read that tells a 409 apart. ``ReleaseConfig.worst_case``, which the
    config checks against the action deadline, counts exactly these calls and back-offs: the
    action ends within it, and no sooner than it less each call's unused time."""
    timeout, late, retries = 1.0, 0.35, 1  # 0.65 s of slack per call on a loaded machine
    read = [(late, 503), (late, None)]
    release.script = [*read, (late, 503), *read, (late, 409), *read]
    calls = len(release.script)
    worst = ReleaseConfig(timeout=timeout, retries=retries).worst_case()

    started = time.monotonic()
    with pytest.raises(BackendRefused, match="scripted 409"):
        run(backend_for(release, timeout=timeout, retries=retries), lambda b: b.complete(TASK, "ok", ALICE, CONTEXT))
    took = time.monotonic() - started

    assert release.script == [] and [(m, p) for m, p, _ in release.seen] == [("GET", f"/api/v1/tasks/{TASK}")] * 3
    assert worst - calls * (timeout - late) <= took <= worst, (took, worst)
    assert release.status(TASK) == "IN_PROGRESS"


def _by(seconds: float) -> ActionContext:
    """The test's context, with an action deadline ``seconds`` from now on the running loop."""
    deadline = asyncio.get_running_loop().time() + seconds
    return ActionContext(CONTEXT.request_id, CONTEXT.message_id, CONTEXT.source, CONTEXT.verdicts, deadline)


def _complete_by(backend: ReleaseBackend, seconds: float) -> None:
    """Complete ``TASK`` with an action deadline ``seconds`` away, and check that however the
    backend ends, it ends before that deadline (the pipeline's own cut falls there)."""

    async def go() -> None:
        context = _by(seconds)
        assert context.deadline is not None
        try:
            await backend.complete(TASK, "ok", ALICE, context)
        finally:
            assert asyncio.get_running_loop().time() < context.deadline
            await backend.close()

    asyncio.run(go())


def test_no_post_is_started_that_could_not_end_before_the_action_deadline(release: FakeRelease) -> None:
    """The first POST meets a proxy's 503 (not sent); after the back-off and a read, less of
    the deadline is left than Release's timeout: a second POST could be cut by the pipeline
    at the deadline, which must then call the outcome unknown. It is not started: nothing
    was sent, said as such (BackendUnavailable, the sender tries again)."""
    late = 0.3
    release.script = [(late, None), (late, 503), (late, None), (late, None)]
    backend = backend_for(release, timeout=1.0, retries=2)

    with pytest.raises(BackendUnavailable, match="nothing was sent"):
        run(backend, lambda b: b.complete(TASK, "ok", ALICE, _by(2.6)))

    # Served as usual: the two reads (the 503 was the script's). Left: the second POST's turn.
    assert [(m, p) for m, p, _ in release.seen] == [("GET", f"/api/v1/tasks/{TASK}")] * 2
    assert release.script == [(late, None)]  # the second POST was never made
    assert release.status(TASK) == "IN_PROGRESS"


def test_a_read_that_would_run_into_the_action_deadline_is_cut_short_of_it(release: FakeRelease) -> None:
    """Release answers the task's read late, within its own timeout but past the action
    deadline: the backend ends the action just short of the deadline with nothing sent
    (BackendUnavailable), before the pipeline's cut at the deadline would have to say
    that whether it acted is unknown."""
    release.script = [(1.5, None)]
    backend = backend_for(release, timeout=2.0, retries=0)
    with pytest.raises(BackendUnavailable, match="before the action deadline; nothing was sent"):
        _complete_by(backend, 1.0)
    assert not [p for m, p, _ in release.seen if m == "POST"]
    assert release.status(TASK) == "IN_PROGRESS"


def test_the_read_after_a_refused_post_is_cut_short_of_the_action_deadline_too(release: FakeRelease) -> None:
    """Release refuses the POST (409) late, and the read that tells why is slower still: it
    is cut just short of the deadline, with nothing changed (BackendUnavailable), rather
    than running into the pipeline's cut, which would call the outcome unknown."""
    release.script = [(0.05, None), (1.0, 409), (1.9, None)]
    backend = backend_for(release, timeout=2.0, retries=0)
    with pytest.raises(BackendUnavailable, match="before the action deadline; nothing was sent, or Release refused"):
        _complete_by(backend, 3.1)
    assert release.status(TASK) == "IN_PROGRESS"


def test_bad_request_on_a_task_still_in_progress_is_a_refusal_with_releases_words(release: FakeRelease) -> None:
    backend = backend_for(release)

    async def post_garbage() -> None:
        try:
            answer = await backend._call("POST", f"/api/v1/tasks/{TASK}/complete", None)
            assert answer.status == 400
            await backend._refused(TASK, f"/api/v1/tasks/{TASK}/complete", answer)
        finally:
            await backend.close()

    with pytest.raises(BackendRefused) as refused:
        asyncio.run(post_garbage())
    assert "Can't parse the following as a JSON object" in str(R.reply_for(refused.value))


def test_check_passes_with_good_credentials_and_fails_with_bad_ones(release: FakeRelease) -> None:
    assert run(backend_for(release), lambda b: b.check()).endswith("answers and accepts our credentials")
    with pytest.raises(BackendAuthFailed):
        run(backend_for(release, token=SecretStr("nope-nope")), lambda b: b.check())
    release.go_down()
    with pytest.raises(TemporaryFailure):
        run(backend_for(release), lambda b: b.check())


# End to end: a reply by email, through rc-mta's SMTP, acts in Release --------------------


@pytest.fixture
def rc_release(tmp_path: Path, release: FakeRelease) -> Iterator[RcMta]:
    server = make_rc_mta(tmp_path)
    server.settings["tasks"] = {
        "backend": "release",
        "release": {"url": release.url, "token": TOKEN, "timeout": "2s", "retries": 1},
    }
    server.start()
    yield server
    server.stop()


def request_for(server: RcMta, task_id: str = TASK) -> dict[str, Any]:
    result: dict[str, Any] = server.cli_json("request", task_id, "--owner", ALICE)
    return result


def test_reply_by_email_completes_the_release_task(rc_release: RcMta, release: FakeRelease) -> None:
    address = request_for(rc_release)["complete_address"]
    outcome = send_smtp(rc_release.smtp_port, reply_message(address, "Ship it"), address)
    assert outcome.code == 250, outcome
    assert release.status(TASK) == "COMPLETED"
    assert release.comments(TASK)[-1]["text"].startswith("Ship it")
    assert release.comments(TASK)[-1]["text"].endswith(f"answered by email by {ALICE}")


def test_fail_button_fails_the_release_task(rc_release: RcMta, release: FakeRelease) -> None:
    address = request_for(rc_release)["fail_address"]
    outcome = send_smtp(rc_release.smtp_port, reply_message(address, "Tests are red"), address)
    assert outcome.code == 250, outcome
    assert release.status(TASK) == "FAILED"
    assert release.calls[TASK, "fail"] == 1


def test_task_no_longer_in_progress_is_refused_with_its_status(rc_release: RcMta, release: FakeRelease) -> None:
    address = request_for(rc_release)["complete_address"]
    release.tasks[TASK]["status"] = "SKIPPED"
    outcome = send_smtp(rc_release.smtp_port, reply_message(address, "Ship it"), address)
    assert (outcome.code, outcome.enhanced) == (550, "5.7.1")
    assert f"Task {TASK} was already skipped" in outcome.text
    assert not release.calls


def test_task_deleted_in_release_is_refused(rc_release: RcMta, release: FakeRelease) -> None:
    address = request_for(rc_release)["complete_address"]
    del release.tasks[TASK]
    outcome = send_smtp(rc_release.smtp_port, reply_message(address, "Ship it"), address)
    assert (outcome.code, outcome.enhanced) == (550, "5.1.1")
    assert "no longer exists" in outcome.text


def test_refused_credentials_answer_451_log_an_error_and_change_nothing(
    rc_release: RcMta, release: FakeRelease
) -> None:
    address = request_for(rc_release)["complete_address"]
    release.token = "rotated-in-release"
    outcome = send_smtp(rc_release.smtp_port, reply_message(address, "Ship it"), address)
    assert (outcome.code, outcome.enhanced) == (451, "4.3.0")
    log = rc_release.log_path.read_text()
    assert any(" ERROR " in line and "Release" in line and "credentials" in line for line in log.splitlines())
    assert TOKEN not in log
    assert release.status(TASK) == "IN_PROGRESS" and not release.calls


def test_release_down_then_back_acts_exactly_once(rc_release: RcMta, release: FakeRelease) -> None:
    address = request_for(rc_release)["complete_address"]
    message = reply_message(address, "Ship it")
    release.go_down()
    first = send_smtp(rc_release.smtp_port, message, address)
    release.come_back()
    retried = send_smtp(rc_release.smtp_port, message, address)
    assert (first.code, retried.code) == (451, 250)
    assert release.calls[TASK, "complete"] == 1 and release.status(TASK) == "COMPLETED"


def test_slow_release_answers_451_and_the_retry_does_not_act_twice(rc_release: RcMta, release: FakeRelease) -> None:
    address = request_for(rc_release)["complete_address"]
    message = reply_message(address, "Ship it")
    release.action_delay = 3.0  # Release completes the task, then answers after our 2s timeout
    first = send_smtp(rc_release.smtp_port, message, address)
    release.action_delay = 0
    retried = send_smtp(rc_release.smtp_port, message, address)
    assert (first.code, first.enhanced) == (451, "4.3.0")
    assert retried.code == 250, retried
    assert release.calls[TASK, "complete"] == 1 and len(release.actions_on(TASK)) == 1


@pytest.mark.parametrize("status", [500, 504])
def test_a_5xx_after_release_acted_is_a_451_its_retry_a_250_and_another_owner_learns_who(
    rc_release: RcMta, release: FakeRelease, status: int
) -> None:
    """Release completed the task, but the answer to the POST was a 5xx (a proxy's 504 after it
    gave up waiting, a 500 after the commit): whether it acted is not known then, so Alice is
    told 451. The task is read before anything else: Bob, answering his own request the other
    way meanwhile, is refused saying Alice completed it (no POST), and Alice's retry finds her
    own completion and gets 250, with nothing done twice."""
    alices = request_for(rc_release)
    bobs: dict[str, Any] = rc_release.cli_json("request", TASK, "--owner", BOB)
    alices_answer = reply_message(alices["complete_address"], "Ship it")
    release.gateway_errors, release.gateway_error_acts, release.gateway_status = 1, True, status

    first = send_smtp(rc_release.smtp_port, alices_answer, alices["complete_address"])
    assert f"{first.code} {first.text}" == str(R.BACKEND_UNAVAILABLE), first
    assert release.status(TASK) == "COMPLETED"

    bobs_answer = reply_message(bobs["fail_address"], "Tests are red", sender=BOB)
    bob = send_smtp(rc_release.smtp_port, bobs_answer, bobs["fail_address"], mail_from=BOB)
    refused = R.TASK_NOT_IN_PROGRESS.with_text(task_id=TASK, status="completed", by=f" by {ALICE}")
    assert f"{bob.code} {bob.text}" == str(refused), bob

    retried = send_smtp(rc_release.smtp_port, alices_answer, alices["complete_address"])
    assert retried.code == 250, retried
    assert release.calls[TASK, "complete"] == 1 and release.calls[TASK, "fail"] == 0
    assert [(a.action, a.comment.endswith(f"answered by email by {ALICE}")) for a in release.actions_on(TASK)] == [
        ("complete", True)
    ]
