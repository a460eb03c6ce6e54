"""What a person's own words decide, as a table: the intent grammar of rc_mta.reading.intent.

Each row is a comment (the words left once quotes and signatures are gone) and what it
decides: "complete", "fail", or None (refused with 550 5.6.0, never guessed).
"""

from __future__ import annotations

import time

import pytest
from conftest import RcMta
from mailclient import reply_message, send_smtp

from rc_mta.reading import DEFAULT_COMPLETE_WORDS, DEFAULT_FAIL_WORDS, contradicts, intent, interpret_action

NEGATION = [
    # The misreadings: a leading "No" must not win over an approval.
    ("No problem, approved", "complete"),
    ("No objections", "complete"),
    ("No objections from my side.", "complete"),
    ("No issues, ship it", "complete"),
    ("Not a problem - go ahead", "complete"),
    ("Not approved", "fail"),
    ("Not OK, the numbers are wrong", "fail"),
    ("I do not approve this", "fail"),
    ("I can't approve this yet", "fail"),
    ("We won't proceed", "fail"),
    ("That's not ok", "fail"),
    ("Please don't proceed", "fail"),
    # Negated doubt is no refusal, and a negated refusal is no approval.
    ("I'm not sure", None),
    ("Not done yet", None),
    ("Don't reject it", None),
    ("No doubt", None),
    ("not now", None),
]

# A negation after the decision, as German and the Nordic languages place it and English
# answers with it, may turn the decision around: refused, never read as the decision.
NEGATION_AFTER = [
    ("Absolutely not", None),
    ("Of course not.", None),
    ("Approve it? Absolutely not.", None),
    ("OK not yet", None),
    ("Approved... not", None),
    ("Ich genehmige das nicht", None),
    ("Passt nicht", None),
    ("Einverstanden bin ich nicht.", None),
    ("Jag godk\u00e4nner inte", None),
    ("Jeg godkender det ikke", None),
    ("Jeg godkjenner ikke dette", None),
    # A negated word of the same decision is the same decision.
    ("Rejected, the numbers are not ok", "fail"),
    # A refusal said as what one is doing.
    ("I'm declining this one.", "fail"),
    ("Fine, but I'm rejecting it", None),
    ("Sure. Rejecting.", None),
    # A sentence wrapped onto the next line is one sentence (a plain-text client wraps at 72-78).
    ("After looking at the budget again I cannot\napprove it this quarter.", None),
    ("Please do not\nreject", None),
    ("I would say this is\nrejected", "fail"),
    ("Approved\nNo changes needed", "complete"),
    # A signature's phone number is no "+1".
    ("Let me check with finance first.\n\nAlice Example\n+1 555 010 0100", None),
    ("Alice\nTel. +1 (555) 010-0100", None),
    ("Rejected.\n\nAlice\n+1-555-010-0100", "fail"),
    ("+1, ship it", "complete"),
    # An acknowledgment beside a "no" it does not read as a decision approves nothing.
    ("Yes, but I cannot sign off on this", None),
    ("Ja, aber ich kann das nicht freigeben", None),
    ("OK, das kann ich nicht genehmigen", None),
    ("Oui, mais je ne peux pas valider", None),
    ("S\u00ed, pero no lo puedo aprobar", None),
    ("Nein, noch nicht", "fail"),
    ("Oui, pas de souci", "complete"),
    # Asked for in the infinitive, as German and French write it.
    ("Bitte freigeben.", "complete"),
    ("Bitte nicht freigeben.", "fail"),
    ("Nicht genehmigen", "fail"),
    ("Merci de ne pas valider", None),
    ("Ne pas valider.", "fail"),
]

PLAIN_ENGLISH = [
    ("Complete", "complete"),
    ("COMPLETE.", "complete"),
    ("Fail", "fail"),
    ("Approved, go ahead", "complete"),
    ("I approve", "complete"),
    ("Looks good to me", "complete"),
    ("Sure, go ahead", "complete"),
    ("Fine by me", "complete"),
    ("This looks fine to me.", "complete"),
    ("It's fine", "complete"),
    ("This is approved", "complete"),
    ("Please proceed", "complete"),
    ("okay then", "complete"),
    ("Ship it!", "complete"),
    ("ship   it", "complete"),
    ('"Done."', "complete"),
    ("**LGTM**", "complete"),
    ("Thanks, looks good", "complete"),
    ("Good morning, approved", "complete"),
    ("Hi Bob,\n\nApproved.\n\nThanks,\nAlice", "complete"),
    ("Nope", "fail"),
    ("Nah", "fail"),
    ("No.", "fail"),
    ("No thanks", "fail"),
    ("Rejected: numbers are wrong", "fail"),
    ("- declined -", "fail"),
    ("Rejected \u2013 budget not signed off yet.\n\nBob", "fail"),
    ("Rejected because the numbers are not ok", "fail"),
    ("\N{THUMBS UP SIGN}", "complete"),
    ("\N{THUMBS UP SIGN}\N{EMOJI MODIFIER FITZPATRICK TYPE-1-2}", "complete"),
    ("\N{WHITE HEAVY CHECK MARK} Approved", "complete"),
    ("+1", "complete"),
    ("\N{CROSS MARK}", "fail"),
    ("\uff2f\uff2b", "complete"),  # full-width "OK"
    ("Approuve\u0301", "complete"),  # decomposed accent, as macOS may send it
]

# Words that also mean something else decide only alone, and what is no decision stays none.
NOT_DECISIONS = [
    ("no changes needed", None),
    ("Let me think about it", None),
    ("notable changes first", None),
    ("Okaying this later", None),
    ("maybe yes", None),
    ("yesterday was fine", None),
    ("Good morning", None),
    ("", None),
    ("   \n  ", None),
    ("Si puedes revisar antes", None),  # Spanish "si" = if
    ("Tak for info", None),  # Danish "tak" = thanks
    ("Nie wiem", None),  # Polish "I don't know"
    ("Ja nie wiem", None),
    ("Non so ancora", None),  # Italian "I don't know yet"
    ("\u041d\u0435\u0442 \u0432\u0440\u0435\u043c\u0435\u043d\u0438", None),  # Russian "no time"
]

# A reply holding two readings in the person's own words is refused.
CONFLICTS = [
    ("OK to reject", None),
    ("Yes\nNo", None),
    ("\n\n  yes\nno", None),
    ("Yes and no", None),
    ("No, approved", None),
    ("Approved. Rejected.", None),
    ("If the numbers add up, approve. If not, reject.", None),
    ("Yes, but I don't approve the budget", None),
    ("Done, thanks. Not approved for prod though.", None),
    ("Ja nie", None),
]

# "But" starts a new clause, in any language; "and" does not ("not" may reach past it).
CONTRASTS = [
    ("I'm out of office tomorrow but approved.", "complete"),
    ("Not tested but approved", "complete"),
    # A deferral right after "but" is a condition on the decision: refused, never guessed.
    ("Looks good, but wait for Bob", None),
    ("Yes, but let me check first", None),
    ("Ja, aber warte noch auf Bob", None),
    ("Approved but not deployed", "complete"),
    ("Not tested and approved", None),
    ("Je suis absente demain mais c'est valid\u00e9.", "complete"),
    ("Sono fuori ufficio ma approvato.", "complete"),
    ("\u6211\u5728\u4f11\u5047\uff0c\u4f46\u540c\u610f\u3002", "complete"),  # "on leave, but agreed"
    ("\ud734\uac00 \uc911\uc774\uc9c0\ub9cc \uc2b9\uc778\ud569\ub2c8\ub2e4.", "complete"),  # Korean -지만
]

# Questions decide nothing; the answer after one does.
QUESTIONS = [
    ("Approved?", None),
    ("Approved? No.", "fail"),
    ("\u00bfAprobado?", None),
    ("Approved. I'm not sure about the date though.", "complete"),
]

# A bare yes or no next to a clause that puts the decision off decides nothing.
DEFERRALS = [
    ("OK, I will check tomorrow", None),
    ("Sure, let me check first", None),
    ("OK thanks, will review", None),
    ("No, let me check first", None),
    ("D'accord, je regarde demain", None),
    ("Ja, ich schaue morgen", None),
    ("Let me check", None),
    ("OK", "complete"),
    ("OK, go ahead", "complete"),
    ("OK. Let me know if anything breaks.", "complete"),
    ("OK, let's do it", "complete"),
    ("OK, let me see", None),
    ("Approved. I will check the deploy tomorrow.", "complete"),
    ("Rejected, let me know when QA has signed off.", "fail"),
]

LANGUAGES = [
    ("Ja, passt.", "complete"),  # German
    ("Ich bin einverstanden", "complete"),
    ("Kein Problem, freigegeben", "complete"),
    ("Nein, bitte noch nicht freigeben.", "fail"),
    ("Nicht genehmigt", "fail"),
    ("Ich bin nicht einverstanden", "fail"),
    ("Oui, c'est bon", "complete"),  # French
    ("Pas de probl\u00e8me", "complete"),
    ("Non merci", "fail"),
    ("Je ne suis pas d'accord", "fail"),
    ("Pas d'accord", "fail"),
    ("S\u00ed, aprobado", "complete"),  # Spanish
    ("Sin problema", "complete"),
    ("No aprobado", "fail"),
    ("No estoy de acuerdo", "fail"),
    ("S\u00ec, va bene", "complete"),  # Italian
    ("Nessun problema", "complete"),
    ("Non approvato", "fail"),
    ("Sim, aprovado", "complete"),  # Portuguese
    ("N\u00e3o aprovado", "fail"),
    ("N\u00e3o", "fail"),
    ("Ja, akkoord", "complete"),  # Dutch
    ("Geen bezwaar", "complete"),
    ("Nee, afgekeurd", "fail"),
    ("Niet akkoord", "fail"),
    ("Ja, godk\u00e4nd", "complete"),  # Swedish
    ("Inte godk\u00e4nd", "fail"),
    ("Nej", "fail"),
    ("Godkendt", "complete"),  # Danish
    ("Ikke godkendt", "fail"),
    ("Godkjent", "complete"),  # Norwegian
    ("Nei", "fail"),
    ("Zatwierdzam", "complete"),  # Polish
    ("Tak", "complete"),
    ("Nie zgadzam si\u0119", "fail"),
    ("Ja nie akceptuj\u0119", "fail"),
    ("\u0421\u043e\u0433\u043b\u0430\u0441\u043e\u0432\u0430\u043d\u043e", "complete"),  # Russian
    ("\u041d\u0435\u0442, \u043d\u0435 \u0441\u043e\u0433\u043b\u0430\u0441\u043e\u0432\u0430\u043d\u043e", "fail"),
    ("\u041d\u0435 \u0441\u043e\u0433\u043b\u0430\u0441\u0435\u043d", "fail"),
    ("Hyv\u00e4ksytty", "complete"),  # Finnish
    ("Ei", "fail"),
    ("\u627f\u8a8d\u3057\u307e\u3059\u3002", "complete"),  # Japanese
    ("\u554f\u984c\u3042\u308a\u307e\u305b\u3093", "complete"),
    ("\u627f\u8a8d\u3067\u304d\u307e\u305b\u3093\u3002", "fail"),
    ("\u540c\u610f", "complete"),  # Chinese
    ("\u6ca1\u95ee\u9898", "complete"),
    ("\u4e0d\u540c\u610f", "fail"),
    ("\uc2b9\uc778\ud569\ub2c8\ub2e4", "complete"),  # Korean
    ("Evet", "complete"),  # Turkish
    ("Hay\u0131r", "fail"),
]

# A decision word further on in a sentence decides nothing here (the clause does not start
# with it), but a negated one, or one beside words of the other side, is never read as the
# decision at its start either: refused.
FURTHER_ON = [
    ("Approved, no errors", "complete"),
    ("Genehmigt, keine Fehler", "complete"),
    ("No, errors everywhere", "fail"),
    ("After looking at the budget I cannot approve it", None),
    ("Ich kann das leider nicht freigeben", None),
    ("I do not think we should approve this", None),
    ("I would approve this if not for the budget", None),
    ("The tests are not done yet", None),
    ("The CAB rejected it", None),
    ("Approved. After looking at the budget I cannot approve it.", None),
    ("Rejected. I cannot approve it.", "fail"),
    # A decision word beside words of the other side, in one sentence.
    ("Complete failure of the build", None),
    ("Confirmed: the build is broken", None),
    ("Confirmed: the build failed", None),
    ("OK, this is broken", None),
    ("OK. This is broken.", None),
    ("Approved, the broken test is fixed.", None),
    ("Bestätigt, der Build ist kaputt.", None),
    ("Validé : le build est cassé.", None),
    ("Confirmed, it doesn't work", None),
    ("Complete disaster", None),
    ("Confirmed: this is a bug", None),
    # A negation said as a word of its own ("unable", "impossible") reaches a decision too.
    ("I am unable to approve this", None),
    ("Not sure I can approve this", None),
    ("Unable to approve.", None),
    ("Hardly approved", None),  # doubt right before the decision: neither way
    ("Approved, unable to attend the call though.", "complete"),
    # Trouble in a sentence of its own beside a decision that is no acknowledgment, and
    # trouble only foreseen, change nothing.
    ("Approved. The old build was broken.", "complete"),
    ("Rejected, the build is broken.", "fail"),
    # A legal disclaimer's "accepted" and "not accept" are no one's decision.
    ("Rejected.\n\nNo liability is accepted for viruses.", "fail"),
    ("Approved.\n\nThe company does not accept responsibility for errors.", "complete"),
]

# Doubt said after a decision takes it back; doubt that names a detail does not.
DOUBT_AFTER = [
    ("Approved. Not sure.", None),
    ("Approved. Not really.", None),
    ("Approved. Wait.", None),
    ("Approved. Hold on.", None),
    ("Approved. Hmm.", None),
    ("Approved, not sure.", None),
    ("Approved - not sure about it though.", None),
    ("Approved. On second thought\u2026", None),
    ("Approved. Or not.", None),
    ("Approved... or not?", None),
    ("Approved. Not yet.", None),
    ("OK. Not sure.", None),
    ("Rejected. Not sure.", None),
    ("Rejected. Wait.", None),
    ("Genehmigt. Nicht sicher.", None),
    ("Genehmigt. Noch nicht.", None),
    ("Approuv\u00e9. Pas s\u00fbr.", None),
    ("Valid\u00e9. Je ne suis pas s\u00fbre.", None),
    ("Aprobado. No estoy seguro.", None),
    ("Aprobado. Espera.", None),
    ("Godk\u00e4nd. Inte s\u00e4ker.", None),
    ("Godk\u00e4nd. V\u00e4nta.", None),
    # A correction after a decision, whichever way it goes.
    ("Approved. Actually, no.", None),
    ("Rejected. Actually, no.", None),
    ("Rejected. Wait, no.", None),
    ("Rejected. On second thought, no.", None),
    ("No, wait", None),
    # A decision after the doubt stands; doubt about a detail leaves the decision standing;
    # "not yet" after a no agrees with it.
    ("Hmm. Approved.", "complete"),
    ("Not sure at first, but approved.", "complete"),
    ("Approved. Not sure about the date.", "complete"),
    ("Approved. Wait for the deploy window.", "complete"),
    ("Approved. Actually, the date is wrong in the ticket.", "complete"),
    ("Approved. Wait for the window, then go ahead.", "complete"),
    ("Approved. Wait until the backup is done.", "complete"),
    ("Actually, no.", "fail"),
    ("No, not yet.", "fail"),
    ("Rejected. Hold off on approving anything until QA signs off.", "fail"),
    # A hold on the decision itself, or one asked for, decides nothing.
    ("Please hold off on approving", None),
    ("Warte mit der Freigabe", None),
    ("Approve or not?", None),
    ("Approved? Yes.", "complete"),
    # Chinese, Japanese and Korean: a negated decision word inside a run is no decision,
    # and never the decision word.
    ("\u6211\u4e0d\u80fd\u6279\u51c6", None),  # 我不能批准: I cannot approve
    ("\u627f\u8a8d\u3057\u306a\u3044", None),  # 承認しない: (I) do not approve
    ("\uc2b9\uc778 \uc548 \ud569\ub2c8\ub2e4", None),  # 승인 안 합니다: I do not approve
    ("\uc2b9\uc778 \ubabb \ud569\ub2c8\ub2e4", None),  # 승인 못 합니다: I cannot approve
    ("\u4e0d\u540c\u610f\uff0c\u6d4b\u8bd5\u8fd8\u6ca1\u6709\u5b8c\u6210\u3002", "fail"),  # disagree, tests not done
    ("\u540c\u610f\u3002\u7b49\u4e00\u4e0b\u3002", None),  # 同意。等一下。: agreed. Wait.
    ("\u7b49\u4e00\u4e0b\u3002\u540c\u610f\u3002", "complete"),  # 等一下。同意。: wait... agreed.
]

# The owner takes the approval back or puts it off: never acted on.
TAKEN_BACK = [
    # Taken back in the same sentence, after a correction's opener or none.
    ("Approve, rather not.", None),
    ("Approve, better not.", None),
    ("Approve, then again maybe not.", None),
    ("Approve, or rather wait.", None),
    ("Approve, I mean wait.", None),
    ("Genehmigt, oder doch lieber warten.", None),
    ("\u540c\u610f\uff0c\u7b97\u4e86", None),  # 同意，算了: agreed, forget it
    ("\u540c\u610f\uff0c\u8fd8\u662f\u7b97\u4e86", None),  # 同意，还是算了: agreed, rather forget it
    ("\u627f\u8a8d\u3001\u3084\u3063\u3071\u308a\u3084\u3081\u307e\u3059", None),  # 承認、やっぱりやめます
    # A wait with no punctuation before it.
    ("Approved wait", None),
    ("Approved hold on", None),
    ("approved hmm wait", None),
    # A hold that names no decision, or a time right after the decision word.
    ("Approve. On hold.", None),
    ("Approved. Pending.", None),
    ("Approve later", None),
    ("Approve tomorrow", None),
    ("Approve it next week", None),
    ("Approved (hold until Monday)", None),
    ("Approved, but not until Monday", None),
    ("Genehmigt, aber erst n\u00e4chste Woche.", None),
    ("Genehmigt, aber noch nicht umsetzen.", None),
    # Waits in Dutch, Italian and Korean.
    ("Goedgekeurd, maar wacht nog even.", None),
    ("Approvato, ma aspetta.", None),
    ("\uc2b9\uc778, \ud558\uc9c0\ub9cc \uc544\uc9c1", None),  # 승인, 하지만 아직: approved, but not yet
    # Doubt before the decision in its own sentence.
    ("Not sure, approve.", None),
    ("\u6211\u4e0d\u786e\u5b9a\uff0c\u6279\u51c6", None),  # 我不确定，批准: not sure, approve
    ("Wait, approved.", None),
    # Guards, which read so before as after: a correction's opener before the other
    # decision, a wait after a no; and what still decides: a time that qualifies something
    # else, a wait for something named, a filler before the decision, doubt in a sentence
    # of its own before it, "rather not" after a no.
    ("Approve, or rather reject.", None),
    ("No wait", None),
    ("Approved and later we deploy", "complete"),
    ("Approved, I'll update the ticket later", "complete"),
    ("Approved. I'll update the ticket tomorrow.", "complete"),
    ("Approved, deploy tomorrow", "complete"),
    ("Approved and I'll deploy it tomorrow", "complete"),
    ("Approved, hold the release for the window", "complete"),
    ("Hmm, approved.", "complete"),
    ("Not sure. Approved.", "complete"),
    ("Hm, approved.", "complete"),
    ("Not yet reviewed by QA, but approved", "complete"),
    ("Noch nicht getestet, aber genehmigt.", "complete"),
    ("Erst einmal danke, genehmigt.", "complete"),
    # "erst" puts off only before a time: "first of all, thanks" and "only seen it now" do not.
    ("Genehmigt, erst einmal danke.", "complete"),
    ("Genehmigt, erst jetzt gesehen, sorry.", "complete"),
    ("Genehmigt, aber erst morgen.", None),
    ("Genehmigt, erst nach dem Audit.", None),
    ("Genehmigt, erst ab Montag.", None),
    ("Rejected, rather not.", "fail"),
    ("Goedgekeurd, wacht op het venster.", "complete"),
]

# When to act, said with the decision, is no decision now: rc-mta acts the moment it reads
# the reply, and completing a gate task starts what it gates at once.
ON_A_DAY = [
    ("Approve on Monday", None),
    ("Approve Monday", None),
    ("Approved, on Monday.", None),
    ("Approve on the 3rd", None),
    ("Approve on 12/3", None),
    ("Approve this afternoon", None),
    ("Approve end of day", None),
    ("Approved for Monday's release", None),  # for that release, or to act on Monday: two readings
    ("Approved, effective Monday", None),
    ("Approve first thing tomorrow", None),
    ("Approved, wait until Monday", None),
    ("Approved. Wait until Monday.", None),
]
AT_A_TIME = [
    ("Approve at 5pm", None),
    ("Approve at 17:00", None),
    ("Approve in an hour", None),
    ("Approve in 2 days", None),
    ("Approve soon", None),
    ("Approve, next sprint.", None),
    ("Approved for the next release", None),
]
WAITING_FOR_SOMETHING = [
    ("Approve after the freeze", None),
    ("Approve once QA passes", None),
    ("Approve when ready", None),
    ("Approve, once QA passes.", None),
    ("Once QA passes, approve.", None),
    ("After the freeze, approve.", None),
    ("Yes, but only after the release", None),
    ("LGTM once CI is green", None),
    ("Ship it after lunch", None),
    ("Approved - go ahead on Friday", None),
    ("Approve after review", None),  # an order: the review is still to come
]
# A condition rc-mta cannot check: completing now would guess that it holds.
ON_A_CONDITION = [
    ("Approved pending QA", None),
    ("Approved if CI is green", None),
    ("Approve if the tests pass", None),
    ("Approved, provided the tests pass", None),
    ("Approved subject to QA sign-off", None),
    ("Approved as long as Bob agrees", None),
    ("LGTM if CI passes", None),
    ("If CI is green, approve.", None),
    ("Genehmigt, sofern die Tests gr\u00fcn sind", None),
    ("Approuv\u00e9 sous r\u00e9serve de la recette", None),
    ("Aprobado siempre que pasen las pruebas", None),
    # An offer or an aside is no condition of the decision.
    ("Approved. If you need anything, let me know.", "complete"),
    ("Approved, if that helps", "complete"),
    ("Approved - if any issues arise, ping me", "complete"),
    ("Approved, the pending changes look fine", "complete"),
    ("Rejected unless Bob agrees", "fail"),  # a no for now stays a no
]
A_REFUSAL_PUT_OFF = [
    ("Reject, but not until Monday", None),
    ("Reject on Monday", None),
    # A no for now stays a no: the yes waits, not the no.
    ("No, not before the audit.", "fail"),
    ("No, next sprint.", "fail"),
    ("Not approved until the tests pass", "fail"),
    ("Rejected until the tests pass", "fail"),
    ("Nein, erst nach dem Lasttest.", "fail"),
]
WHEN_IN_OTHER_LANGUAGES = [
    ("Genehmigt am Montag", None),
    ("Genehmigt ab Montag", None),
    ("Freigegeben, sobald die Tests gr\u00fcn sind.", None),
    ("Ja, n\u00e4chste Woche", None),
    ("Approuv\u00e9 lundi", None),
    ("Valid\u00e9 \u00e0 partir de lundi", None),
    ("Oui, la semaine prochaine", None),
    ("Aprobado el lunes", None),
    ("Aprobado cuando est\u00e9 listo", None),
    ("Approvato luned\u00ec", None),
    ("S\u00ec, luned\u00ec prossimo", None),
    ("Aprovado na segunda-feira", None),
    ("Goedgekeurd op maandag", None),
    ("Goedgekeurd zodra QA klaar is", None),
    ("Godk\u00e4nt p\u00e5 m\u00e5ndag", None),
    ("\u6708\u66dc\u65e5\u306b\u627f\u8a8d", None),  # 月曜日に承認: approve on Monday
    ("\u660e\u65e5\u627f\u8a8d\u3057\u307e\u3059", None),  # 明日承認します: I will approve tomorrow
    ("\u627f\u8a8d\u3057\u307e\u3059\u3001\u6708\u66dc\u65e5\u306b", None),  # 承認します、月曜日に
    ("\u4e0b\u5468\u6279\u51c6", None),  # 下周批准: approve next week
    ("\u540c\u610f\uff0c\u660e\u5929", None),  # 同意，明天: agreed, tomorrow
    ("\ub0b4\uc77c \uc2b9\uc778\ud569\ub2c8\ub2e4", None),  # 내일 승인합니다: I will approve tomorrow
]
# A decision now beside a time or a wait that is about something else still decides.
DECIDED_NOW = [
    ("Approved. Will check the logs tomorrow.", "complete"),
    ("Approved, see you Monday", "complete"),
    ("Approved, thanks. Have a nice weekend!", "complete"),
    ("Approved. The release goes out on Monday.", "complete"),
    ("Approved, go live Monday", "complete"),
    ("Approved. After the deploy, please update the wiki.", "complete"),
    ("Approved. When you deploy, tell ops.", "complete"),
    ("Approved, when you get a chance update the docs", "complete"),
    ("Approved after review", "complete"),
    ("After careful review, approved.", "complete"),
    ("Approved after discussion with Bob", "complete"),
    ("Genehmigt nach R\u00fccksprache mit Bob", "complete"),
    ("Approuv\u00e9 apr\u00e8s v\u00e9rification", "complete"),
    ("Approved after all", "complete"),
    ("Approved once again, thanks", "complete"),
    ("Approve as soon as possible", "complete"),
    ("Approve by Friday", "complete"),  # a deadline: now is before it
    ("Approve today", "complete"),
    ("Approved, effective immediately", "complete"),
    ("Approved for now", "complete"),
    ("Approved for production", "complete"),
    ("Approved in the CAB meeting", "complete"),
    ("Approved, next please", "complete"),
    ("Approved as discussed on Monday", "complete"),
    ("Valid\u00e9, \u00e0 demain", "complete"),  # see you tomorrow
    ("Approvato, a domani", "complete"),
    # 承認します。明日から休暇です: approved; on leave from tomorrow
    ("\u627f\u8a8d\u3057\u307e\u3059\u3002\u660e\u65e5\u304b\u3089\u4f11\u6687\u3067\u3059", "complete"),
    ("\u6279\u51c6\uff0c\u5468\u4e00\u4e0a\u7ebf", "complete"),  # 批准，周一上线: approved, live on Monday
    # 승인합니다. 내일 배포합니다.: approved. Deploying tomorrow
    ("\uc2b9\uc778\ud569\ub2c8\ub2e4. \ub0b4\uc77c \ubc30\ud3ec\ud569\ub2c8\ub2e4.", "complete"),
]

TABLE = (
    NEGATION
    + NEGATION_AFTER
    + PLAIN_ENGLISH
    + NOT_DECISIONS
    + CONFLICTS
    + CONTRASTS
    + QUESTIONS
    + DEFERRALS
    + LANGUAGES
    + FURTHER_ON
    + DOUBT_AFTER
    + TAKEN_BACK
    + ON_A_DAY
    + AT_A_TIME
    + WAITING_FOR_SOMETHING
    + ON_A_CONDITION
    + A_REFUSAL_PUT_OFF
    + WHEN_IN_OTHER_LANGUAGES
    + DECIDED_NOW
)


@pytest.mark.parametrize(("comment", "expected"), TABLE, ids=[repr(comment) for comment, _ in TABLE])
def test_words_decide(comment: str, expected: str | None) -> None:
    assert interpret_action(comment, DEFAULT_COMPLETE_WORDS, DEFAULT_FAIL_WORDS) == expected


# What a Complete or Fail button's reply may say: True where it is refused (550 5.6.0).
BUTTONS = [
    # A hold or a time alone is no answer to the Complete button ("Later" never completes).
    ("Not just yet", "complete", True),
    ("Not today.", "complete", True),
    ("Later", "complete", True),
    ("Tomorrow", "complete", True),
    ("Hold for now", "complete", True),
    ("Put it on hold", "complete", True),
    ("I'd rather wait", "complete", True),
    ("Need more time", "complete", True),
    ("Pas tout de suite", "complete", True),
    ("Plus tard", "complete", True),
    ("Heute nicht", "complete", True),
    ("Später", "complete", True),
    ("Mañana", "complete", True),
    ("Nog even niet", "complete", True),
    ("Inte idag", "complete", True),
    ("Later, approved", "complete", False),
    ("Morgen, genehmigt", "complete", False),
    ("No, not today", "fail", False),
    # A negated decision word anywhere reads against the Complete button.
    ("After looking at the budget I cannot approve it", "complete", True),
    ("We should not go ahead with this", "complete", True),
    ("Ich kann das leider nicht freigeben", "complete", True),
    ("Thanks.\n\nSadly I cannot approve it this quarter.", "complete", True),
    ("Yes, but I cannot sign off on this", "complete", True),
    ("OK. This is broken.", "complete", True),
    ("The CAB rejected it", "complete", True),
    ("The tests are not done yet", "complete", True),
    # ... and agrees with the Fail button, unless its reach is a guess.
    ("After looking at the budget I cannot approve it", "fail", False),
    ("Ich kann das leider nicht freigeben", "fail", False),
    ("I do not think we should approve this", "fail", True),
    # An acknowledgment beside a "no" the grammar does not read is an answer to neither button.
    ("Yes, but I cannot sign off on this", "fail", True),
    ("Sure, why not", "fail", True),
    ("Sure, why not", "complete", True),
    ("I don't think we should reject it", "fail", True),
    ("I am unable to approve this", "complete", True),
    # Doubt is no answer to either button.
    ("Not sure.", "complete", True),
    ("Not sure.", "fail", True),
    ("Not sure I can approve this", "complete", True),
    ("Approved. I'm not sure about the date though.", "complete", False),
    ("Not done yet, but approved", "complete", False),
    # Words of both sides in one sentence read against either button.
    ("Complete failure of the build", "complete", True),
    ("Confirmed: the build is broken", "complete", True),
    ("OK, this is broken", "complete", True),
    ("Complete failure of the build", "fail", True),
    ("The build is fine", "fail", True),
    # What a button's reply says in agreement, or not at all, still acts.
    ("Looks good, ship it", "complete", False),
    ("Approved, no changes needed", "complete", False),
    # Trouble a negator just before takes back is none: all is well.
    ("Approved, no errors", "complete", False),
    ("Genehmigt, keine Fehler", "complete", False),
    ("No, errors everywhere", "complete", True),
    ("Approved, no errors here but the window is wrong", "complete", True),
    ("Tests are red", "fail", False),
    ("Approved.\n\nNo liability is accepted for viruses.", "complete", False),
    ("Rejected.\n\nThe company does not accept responsibility for errors.", "fail", False),
    ("", "complete", False),
    # Doubt, a wait, a hold on the decision or a question is no answer to a button.
    ("Approved. Not sure.", "complete", True),
    ("Rejected. Not sure.", "fail", True),
    ("Not really.", "complete", True),
    ("Wait.", "complete", True),
    ("Hold off", "complete", True),
    ("Hold on.", "fail", True),
    ("Not yet.", "complete", True),
    ("Please hold off on approving", "complete", True),
    ("Please wait before you approve", "complete", True),
    ("Don't approve yet", "complete", True),
    ("Approved?", "complete", True),
    ("Wait, no.", "complete", True),
    ("No, let me check first", "complete", True),
    ("OK, I will check tomorrow", "fail", True),
    ("Approved. Not sure about the date.", "complete", False),
    ("Approved. Wait for the deploy window.", "complete", False),
    ("OK, could you also update the docs?", "complete", False),
    # Chinese, Japanese and Korean "I cannot approve" reads against the Complete button;
    # a Chinese negation right before the word agrees with the Fail button.
    ("\u6211\u4e0d\u80fd\u6279\u51c6", "complete", True),  # 我不能批准
    ("\u6211\u4e0d\u80fd\u6279\u51c6", "fail", False),
    ("\u6211\u5b8c\u5168\u4e0d\u540c\u610f", "complete", True),  # 我完全不同意: I fully disagree
    ("\u627f\u8a8d\u3067\u304d\u306a\u3044", "complete", True),  # 承認できない
    ("\uc2b9\uc778\ud560 \uc218 \uc5c6\uc2b5\ub2c8\ub2e4", "complete", True),  # 승인할 수 없습니다
    ("\u7b49\u4e00\u4e0b", "complete", True),  # 等一下: wait a moment
    ("\u627f\u8a8d\u306f\u4fdd\u7559\u3057\u307e\u3059", "complete", True),  # 承認は保留します: on hold
    ("\uc7a0\uae50\ub9cc\uc694", "complete", True),  # 잠깐만요: just a moment
    # Taken back or put off: no answer to the Complete button.
    ("Approve, rather not.", "complete", True),
    ("Approved wait", "complete", True),
    ("Approve later", "complete", True),
    ("Approved (hold until Monday)", "complete", True),
    ("Approvato, ma aspetta.", "complete", True),
    ("Not sure, approve.", "complete", True),
    ("\u540c\u610f\uff0c\u7b97\u4e86", "complete", True),  # 同意，算了
    ("Approved, I'll update the ticket later", "complete", False),
    ("\u6211\u540c\u610f\u4e86", "complete", False),  # 我同意了: I agreed
    ("\u6211\u6ca1\u95ee\u9898", "complete", False),  # 我没问题: no problem for me
    ("\u4f60\u597d\uff0c\u6d4b\u8bd5\u5931\u8d25\u4e86", "fail", False),  # hello, the tests failed
    # When to act is no answer to a button now: not to Complete, nor to Fail for a no put off.
    ("Approve on Monday", "complete", True),
    ("Approve once QA passes", "complete", True),
    ("Yes, but only after the release", "complete", True),
    ("On Monday", "complete", True),
    ("Monday.", "complete", True),
    ("Once QA passes, approve.", "complete", True),
    ("\u6708\u66dc\u65e5\u306b\u627f\u8a8d", "complete", True),  # 月曜日に承認
    ("Reject, but not until Monday", "fail", True),
    ("Reject on Monday", "fail", True),
    ("No, not before the audit.", "fail", False),
    ("Rejected until the tests pass", "fail", False),
    ("Approved after review", "complete", False),
    ("Approved. Will check the logs tomorrow.", "complete", False),
]


@pytest.mark.parametrize(
    ("comment", "button", "refused"), BUTTONS, ids=[f"{button}: {comment!r}" for comment, button, _ in BUTTONS]
)
def test_words_a_button_may_not_carry(comment: str, button: str, refused: bool) -> None:
    assert contradicts(comment, button, DEFAULT_COMPLETE_WORDS, DEFAULT_FAIL_WORDS) is refused


def test_no_reading_in_the_table_is_the_opposite_of_another_rows() -> None:
    # The table itself must not contradict: the same comment never expects two actions.
    seen: dict[str, str | None] = {}
    for comment, expected in TABLE:
        assert seen.setdefault(comment, expected) == expected, comment


def test_longer_phrase_wins_over_shorter_word() -> None:
    assert interpret_action("no problem, go", ["no problem"], ["no"]) == "complete"
    assert interpret_action("no", ["no problem"], ["no"]) == "fail"


def test_a_word_in_both_lists_decides_nothing() -> None:
    assert interpret_action("same", ["Same"], ["same"]) is None
    assert interpret_action("approved. same", ["approved", "same"], ["same"]) is None


def test_configured_word_lists_replace_the_defaults_and_ignore_case() -> None:
    assert interpret_action("Freigegeben.", ["FREIGEGEBEN"], []) == "complete"
    assert interpret_action("approved", [], ["nicht ok"]) is None
    assert interpret_action("nicht ok", [], ["nicht ok"]) == "fail"
    # The grammar still applies to configured words: negation and conflicts.
    assert interpret_action("nicht freigegeben", ["freigegeben"], ["abgelehnt"]) == "fail"
    assert interpret_action("freigegeben. abgelehnt.", ["freigegeben"], ["abgelehnt"]) is None


def test_default_word_lists_do_not_overlap() -> None:
    assert not set(DEFAULT_COMPLETE_WORDS) & set(DEFAULT_FAIL_WORDS)
    assert {"complete", "approved", "ship it", "ja", "oui", "s\u00ed", "no problem"} <= set(DEFAULT_COMPLETE_WORDS)
    assert {"fail", "rejected", "no", "nope", "nein", "non", "rechazar"} <= set(DEFAULT_FAIL_WORDS)


@pytest.mark.parametrize(
    "make",
    [
        lambda n: "no " * (n // 3),
        lambda n: "ja " * (n // 3),
        lambda n: "not " * (n // 4),
        lambda n: "approved, " * (n // 10),
        lambda n: "i " * (n // 2),
        lambda n: "?" * n,
        lambda n: "- " * (n // 2),
        lambda n: "a" * n,
        lambda n: "not\nok " * (n // 7),
        lambda n: "the cannot approve " * (n // 19),
        lambda n: "the not build approved " * (n // 23),
        lambda n: "the build is broken ok " * (n // 23),
        lambda n: "ok: broken, " * (n // 12),
        lambda n: "approved hold the " * (n // 18),
        lambda n: "not sure, or rather " * (n // 20),
        lambda n: "approve on the next " * (n // 20),
        lambda n: "once monday approve " * (n // 20),
        lambda n: "in a a 5 " * (n // 9),
        lambda n: "approved, once qa passes, " * (n // 26),
        lambda n: "\u660e\u65e5\u627f\u8a8d" * (n // 4),
    ],
    ids=[
        *("no runs", "ja runs", "not runs", "clauses", "leading words", "question marks", "dashes", "one word"),
        *("wraps", "negated further on", "negation far off", "trouble", "trouble in clauses"),
        *("holds after a decision", "doubts before one", "times after a decision", "times before one"),
        *("numbers of units", "conditions in clauses", "CJK times"),
    ],
)
def test_reading_hostile_comments_takes_linear_time(make: object) -> None:
    assert callable(make)

    def seconds(size: int) -> float:
        text = make(size)
        best = float("inf")
        for _ in range(5):
            intent._readings.cache_clear()  # kept for the last few comments: read afresh
            start = time.thread_time()
            interpret_action(text, DEFAULT_COMPLETE_WORDS, DEFAULT_FAIL_WORDS)
            best = min(best, time.thread_time() - start)
        return best

    small, large = seconds(8 * 1024), seconds(64 * 1024)
    assert large < 16 * max(small, 0.005)  # eight times the input; quadratic would be 64


# [replies] in the configuration ------------------------------------------------------------


def test_configured_words_that_cannot_match_are_a_one_line_error(fresh_rc: RcMta) -> None:
    fresh_rc.settings["replies"] = {"complete_words": ["freigegeben", "!!!"]}
    fresh_rc.write_config()

    result = fresh_rc.cli("check-config", check=False)

    assert result.returncode != 0
    assert "replies.complete_words" in result.stderr
    assert "'!!!' has no letter, digit or symbol" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_word_configured_as_both_complete_and_fail_is_refused(fresh_rc: RcMta) -> None:
    fresh_rc.settings["replies"] = {"complete_words": ["OK"], "fail_words": ["ok", "nein"]}
    fresh_rc.write_config()

    result = fresh_rc.cli("check-config", check=False)

    assert result.returncode != 0
    assert "'ok' is both a complete word and a fail word" in result.stderr


def answered(
    server: RcMta, bodies: tuple[str, ...], below: str = "", to: str = "reply_to"
) -> dict[str, tuple[int, str, str]]:
    """Each body (with ``below`` under it) as a reply to a task's request of its own, sent
    to its ``to`` address ("reply_to", "complete_address", "fail_address"): the SMTP code,
    the enhanced code and the task's status after it."""
    outcomes = {}
    for body in bodies:
        task_id = server.add_task()
        address = server.request(task_id)[to]
        outcome = send_smtp(server.smtp_port, reply_message(address, body + below), address)
        outcomes[body] = (outcome.code, outcome.enhanced, server.task(task_id)["status"])
    return outcomes


def test_configured_words_replace_the_built_in_ones_in_a_running_rc_mta(fresh_rc: RcMta) -> None:
    fresh_rc.settings["replies"] = {"complete_words": ["Freigegeben"], "fail_words": ["Abgelehnt"]}
    fresh_rc.start()

    outcomes = answered(fresh_rc, ("Freigegeben, danke.", "Approved", "Nicht freigegeben."))

    assert outcomes == {
        "Freigegeben, danke.": (250, "2.0.0", "completed"),
        "Approved": (550, "5.6.0", "in_progress"),  # not a configured word any more
        "Nicht freigegeben.": (250, "2.0.0", "failed"),  # the grammar applies to configured words
    }


def test_a_no_said_after_the_approval_word_is_never_taken_for_an_approval(rc: RcMta) -> None:
    bodies = (
        "Absolutely not.",
        "Ich genehmige das nicht.",
        "Jag godk\u00e4nner inte",
        "Fine, but I'm rejecting it",
        "Yes, but I cannot sign off on this.",
        # Gmail's plain-text mode wraps the sentence at 78 characters: "approve" starts a line.
        "Thanks for the numbers. After looking at the budget again with Bob, I cannot\napprove it this quarter.",
    )

    assert answered(rc, bodies) == dict.fromkeys(bodies, (550, "5.6.0", "in_progress"))


def test_a_phone_number_in_a_signature_is_not_a_plus_one(rc: RcMta) -> None:
    # Outlook's signatures have no "-- " line above them, so they stay in the comment.
    signature = "\n\nAlice Example\nDirector, Finance\n+1 (555) 010-0100"

    outcomes = answered(rc, ("Let me check with finance first.", "Rejected, the numbers are wrong."), signature)

    assert outcomes == {
        "Let me check with finance first.": (550, "5.6.0", "in_progress"),
        "Rejected, the numbers are wrong.": (250, "2.0.0", "failed"),
    }


def test_a_request_in_the_infinitive_decides(rc: RcMta) -> None:
    outcomes = answered(rc, ("Bitte freigeben.", "Bitte nicht freigeben.", "Ne pas valider, merci."))

    assert outcomes == {
        "Bitte freigeben.": (250, "2.0.0", "completed"),
        "Bitte nicht freigeben.": (250, "2.0.0", "failed"),
        "Ne pas valider, merci.": (250, "2.0.0", "failed"),
    }


def test_a_negated_decision_further_on_never_completes_the_task(rc: RcMta) -> None:
    bodies = (
        "After looking at the budget I cannot approve it.",
        "Thanks for the numbers.\n\nSadly I cannot approve it this quarter.",
        "Ich kann das leider nicht freigeben.",
    )

    # Pressed Complete, then wrote the opposite: refused, the task untouched.
    assert answered(rc, bodies, to="complete_address") == dict.fromkeys(bodies, (550, "5.6.0", "in_progress"))
    # Read for its words alone it decides nothing either (a guess would be "fail").
    assert answered(rc, bodies) == dict.fromkeys(bodies, (550, "5.6.0", "in_progress"))
    # Sent to the Fail button, the words agree with it.
    assert answered(rc, bodies[:1], to="fail_address") == {bodies[0]: (250, "2.0.0", "failed")}


def test_a_decision_word_beside_words_of_the_other_side_decides_nothing(rc: RcMta) -> None:
    bodies = ("Complete failure of the build.", "Confirmed: the build is broken.", "OK, this is broken.")

    assert answered(rc, bodies) == dict.fromkeys(bodies, (550, "5.6.0", "in_progress"))
    assert answered(rc, bodies, to="complete_address") == dict.fromkeys(bodies, (550, "5.6.0", "in_progress"))
    # A clear answer keeps deciding, a disclaimer below it too.
    clear = ("Approved. The old build was broken.", "Approved.\n\nNo liability is accepted for viruses.")
    assert answered(rc, clear) == dict.fromkeys(clear, (250, "2.0.0", "completed"))
    # Trouble taken back by the negator just before it is none, at either address.
    well = ("Approved, no errors.", "Genehmigt, keine Fehler.")
    assert answered(rc, well) == dict.fromkeys(well, (250, "2.0.0", "completed"))
    assert answered(rc, well, to="complete_address") == dict.fromkeys(well, (250, "2.0.0", "completed"))


def test_doubt_said_after_the_decision_leaves_the_task_untouched(rc: RcMta) -> None:
    bodies = ("Approved. Not sure.", "Approved. Not really.", "Approved. Wait.", "Rejected. Not sure.")

    assert answered(rc, bodies) == dict.fromkeys(bodies, (550, "5.6.0", "in_progress"))
    # Doubt about a detail leaves the decision standing.
    detail = ("Approved. I'm not sure about the date though.",)
    assert answered(rc, detail) == dict.fromkeys(detail, (250, "2.0.0", "completed"))


def test_a_hold_or_a_negated_approval_sent_to_the_complete_button_completes_nothing(rc: RcMta) -> None:
    bodies = (
        "Please hold off on approving",
        "Hold off",
        "Don't approve yet",
        "Approved?",
        "\u6211\u4e0d\u80fd\u6279\u51c6",  # 我不能批准: I cannot approve
        "\u4e0d\u6279\u51c6",  # 不批准: not approved
        "\u627f\u8a8d\u3067\u304d\u307e\u305b\u3093",  # 承認できません: cannot approve
        "\u627f\u8a8d\u3057\u307e\u305b\u3093",  # 承認しません: do not approve
        "\uc2b9\uc778 \uc548 \ud569\ub2c8\ub2e4",  # 승인 안 합니다: I do not approve
    )

    assert answered(rc, bodies, to="complete_address") == dict.fromkeys(bodies, (550, "5.6.0", "in_progress"))
    # The Fail button's own "I cannot approve" still fails.
    agreeing = bodies[4:5]
    assert answered(rc, agreeing, to="fail_address") == dict.fromkeys(agreeing, (250, "2.0.0", "failed"))


def test_an_approval_taken_back_or_put_off_leaves_the_task_untouched(rc: RcMta) -> None:
    bodies = (
        "Approve, or rather wait.",
        "Approved wait",
        "Approve later",
        "Approved, but not until Monday",
        "Not sure, approve.",
        "Approvato, ma aspetta.",
        "\u540c\u610f\uff0c\u7b97\u4e86",  # 同意，算了: agreed, forget it
    )

    assert answered(rc, bodies) == dict.fromkeys(bodies, (550, "5.6.0", "in_progress"))
    assert answered(rc, bodies, to="complete_address") == dict.fromkeys(bodies, (550, "5.6.0", "in_progress"))
    # A time that qualifies something else leaves the approval standing.
    standing = ("Approved, I'll update the ticket later.",)
    assert answered(rc, standing) == dict.fromkeys(standing, (250, "2.0.0", "completed"))


def test_a_decision_for_later_leaves_the_task_untouched(rc: RcMta) -> None:
    bodies = (
        "Approve on Monday",
        "Approve at 5pm",
        "Approve once QA passes",
        "Yes, but only after the release",
        "Approved - go ahead on Friday",
        "Genehmigt am Montag",
        "\u6708\u66dc\u65e5\u306b\u627f\u8a8d",  # 月曜日に承認: approve on Monday
    )

    # Read for their words, or sent to the Complete button: refused (550 5.6.0), untouched.
    assert answered(rc, bodies) == dict.fromkeys(bodies, (550, "5.6.0", "in_progress"))
    assert answered(rc, bodies, to="complete_address") == dict.fromkeys(bodies, (550, "5.6.0", "in_progress"))
    # A refusal put off is no refusal now either, at the Fail button too.
    later_no = ("Reject, but not until Monday",)
    assert answered(rc, later_no) == dict.fromkeys(later_no, (550, "5.6.0", "in_progress"))
    assert answered(rc, later_no, to="fail_address") == dict.fromkeys(later_no, (550, "5.6.0", "in_progress"))
    # A decision now with a remark about later still acts; a no for now is still a no.
    assert answered(rc, ("Approved. Will check the logs tomorrow.", "No, not before the audit.")) == {
        "Approved. Will check the logs tomorrow.": (250, "2.0.0", "completed"),
        "No, not before the audit.": (250, "2.0.0", "failed"),
    }
