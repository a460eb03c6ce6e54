"""The words replies are read with, as data in one place.

The decision words (``DEFAULT_COMPLETE_WORDS``, ``DEFAULT_FAIL_WORDS``) can be replaced
in ``[replies]``; the rest is the grammar around them (negation, the words that may come
before a decision, client layouts) and is built in.  Everything is compared after NFKC
normalisation and case folding, so "ＯＫ", "OK" and "ok" are one word.
"""

from __future__ import annotations

__all__ = [
    "ATTRIBUTION_INTROS",
    "ATTRIBUTION_VERBS",
    "BANNER_CONTINUATION",
    "BANNER_LABELS",
    "BANNER_SENTENCES",
    "BANNER_WORDS",
    "BARE_NOS",
    "CJK_CONTRASTS",
    "CJK_DOUBTS",
    "CJK_DOUBT_RUNS",
    "CJK_LATER",
    "CJK_NEGATIONS",
    "CJK_NEGATORS",
    "CLOCK_MARKS",
    "CONDITIONS",
    "CONTINGENCIES",
    "CONTRASTS",
    "CORRECTIONS",
    "DECISION_NAMES",
    "DEFAULT_COMPLETE_WORDS",
    "DEFAULT_FAIL_WORDS",
    "DEFERRALS",
    "DELIBERATIONS",
    "DOUBTS",
    "DOUBT_TRAILERS",
    "HEADER_LABELS",
    "HEDGES",
    "HOLDS",
    "LATER",
    "LATER_OBJECTS",
    "LEADING_WORDS",
    "MOBILE_SIGNATURES",
    "NEGATORS",
    "NEXT",
    "NOTHING_WORDS",
    "NOT_CONDITIONS",
    "NOT_YET",
    "NUMBER_LEADS",
    "ORDERS",
    "POLITE_WORDS",
    "PUT_OFF",
    "QUANTITIES",
    "SEE_YOU",
    "STANDALONE_ONLY",
    "TIME_LEADS",
    "TIME_UNITS",
    "TIME_WORDS",
    "TROUBLE",
    "UNIT_LEADS",
    "UNTIL",
    "WEAK_WORDS",
]

#: Words or phrases that, where a sentence starts, complete the task.
DEFAULT_COMPLETE_WORDS: tuple[str, ...] = (
    # English
    *("complete", "completed", "approve", "approved", "done", "yes", "yep", "yeah", "yup", "ok", "okay"),
    *("lgtm", "accept", "accepted", "agree", "agreed", "confirm", "confirmed", "go ahead", "go for it"),
    *("ship it", "proceed", "sure", "of course", "absolutely", "fine", "fine by me", "fine with me"),
    *("looks good", "looks good to me", "look good", "sounds good", "all good", "good to go", "looks fine"),
    *("looks fine to me", "seems fine", "sounds fine", "nothing against it"),
    *("works for me", "all set", "authorised", "authorized", "granted", "approval granted", "affirmative"),
    *("no problem", "no problems", "not a problem", "no objection", "no objections", "no issue"),
    *("no issues", "no concerns", "no worries", "no complaints"),
    *("+1", "\N{THUMBS UP SIGN}", "\N{WHITE HEAVY CHECK MARK}", "\N{HEAVY CHECK MARK}"),
    *("\N{BALLOT BOX WITH CHECK}", "\N{OK HAND SIGN}"),
    # German
    *("ja", "jawohl", "genehmigt", "genehmige", "freigegeben", "erledigt", "akzeptiert", "akzeptiere"),
    *("einverstanden", "bestätigt", "bestätige", "passt", "in ordnung", "alles klar", "gerne", "geht klar"),
    *("kein problem", "keine probleme", "keine einwände", "keine bedenken", "nichts dagegen"),
    *("freigeben", "genehmigen"),  # "Bitte freigeben", and so "Bitte nicht freigeben" fails
    # French
    *("oui", "approuvé", "approuvée", "j'approuve", "validé", "validée", "je valide", "accepté", "acceptée"),
    *("j'accepte", "d'accord", "je suis d'accord", "c'est bon", "c'est ok", "ça marche", "ça me va"),
    *("parfait", "fait", "bon pour moi", "je confirme", "confirmé", "allez-y", "feu vert", "bien sûr"),
    *("pas de problème", "aucun problème", "aucune objection", "pas d'objection", "sans problème"),
    *("pas de souci", "pas de soucis", "aucun souci", "valider", "approuver"),
    # Spanish
    *("sí", "si", "aprobado", "aprobada", "apruebo", "de acuerdo", "estoy de acuerdo", "adelante", "hecho"),
    *("listo", "conforme", "claro", "por supuesto", "confirmado", "acepto", "aceptado", "perfecto"),
    *("sin problema", "sin problemas", "ningún problema", "no hay problema", "sin objeciones"),
    *("ninguna objeción",),
    # Italian
    *("sì", "approvato", "approvata", "approvo", "va bene", "d'accordo", "fatto", "confermo", "confermato"),
    *("procedi", "procedete", "accetto", "accettato", "certo", "perfetto", "nessun problema"),
    *("nessuna obiezione",),
    # Portuguese
    *("sim", "aprovado", "aprovada", "aprovo", "de acordo", "pode seguir", "pode avançar", "feito"),
    *("concluído", "aceito", "sem problema", "sem problemas", "nenhum problema", "sem objeções"),
    *("não há problema",),
    # Dutch
    *("akkoord", "accoord", "goedgekeurd", "gedaan", "prima", "oké", "klaar", "in orde", "bevestigd"),
    *("ga je gang", "ga maar door", "geen probleem", "geen bezwaar", "geen bezwaren"),
    # Swedish, Danish, Norwegian
    *("godkänd", "godkänt", "godkänner", "godkänns", "okej", "klart", "det går bra", "går bra"),
    *("inga problem", "inget problem", "inga invändningar", "bekräftat"),
    *("godkendt", "godkender", "fint", "det er fint", "helt fint", "intet problem", "ingen problemer"),
    *("ingen indvendinger", "bekræftet"),
    *("godkjent", "godkjenner", "greit", "det er greit", "ikke noe problem", "ingen problem"),
    *("ingen innvendinger", "bekreftet", "kjør på"),
    # Polish
    *("tak", "zatwierdzam", "zatwierdzone", "zatwierdzony", "akceptuję", "akceptuje", "zaakceptowane"),
    *("zgoda", "zgadzam się", "w porządku", "gotowe", "potwierdzam", "jasne", "oczywiście"),
    *("bez problemu", "nie ma problemu", "brak zastrzeżeń", "bez zastrzeżeń"),
    # Russian
    *("да", "согласовано", "согласен", "согласна", "согласны", "одобрено", "одобряю", "утверждаю"),
    *("утверждено", "принято", "готово", "ок", "хорошо", "подтверждаю", "конечно", "выполнено"),
    *("без проблем", "нет проблем", "нет возражений", "возражений нет"),
    # Finnish
    *("kyllä", "hyväksytty", "hyväksyn", "selvä", "valmis", "sopii", "vahvistettu", "ei ongelmaa"),
    *("ei ongelmia", "ei vastalauseita"),
    # Turkish
    *("evet", "onaylandı", "onaylıyorum", "onayladım", "tamam", "kabul", "kabul ediyorum", "sorun yok"),
    *("itirazım yok",),
    # Japanese
    *("はい", "承認", "承認します", "承認しました", "承認いたします", "承認です", "了解", "了解です"),
    *("了解しました", "承知しました", "完了", "完了しました", "完了です", "okです", "問題ありません"),
    *("問題ないです", "問題なし", "異議なし", "異論ありません", "大丈夫です", "進めてください"),
    # Chinese
    *("是的", "好", "好的", "同意", "我同意", "同意了", "批准", "已批准", "通过", "通過", "可以"),
    *("完成", "已完成", "确认", "確認", "没问题", "沒問題", "没有问题", "無異議", "无异议"),
    # Korean
    *("네", "예", "승인", "승인합니다", "승인했습니다", "좋습니다", "확인했습니다", "완료했습니다"),
    *("문제 없습니다", "문제없습니다"),
)

#: Words or phrases that, where a sentence starts, fail the task.
DEFAULT_FAIL_WORDS: tuple[str, ...] = (
    # English
    *("fail", "failed", "reject", "rejected", "no", "nope", "nah", "deny", "denied", "decline"),
    *("declined", "abort", "refuse", "refused", "disapprove", "disapproved", "veto", "vetoed", "no way"),
    # "I'm rejecting it" (not "failing": "failing tests fixed" is no decision)
    *("rejecting", "declining", "refusing", "denying", "vetoing", "aborting"),
    *("no go", "\N{THUMBS DOWN SIGN}", "\N{CROSS MARK}", "\N{HEAVY MULTIPLICATION X}", "\N{NO ENTRY}"),
    *("\N{NO ENTRY SIGN}",),
    # German
    *("nein", "abgelehnt", "ablehnen", "lehne ab", "abgewiesen", "verweigert", "auf keinen fall"),
    # French
    *("non", "refusé", "refusée", "je refuse", "rejeté", "rejetée", "je rejette", "pas d'accord"),
    *("je ne suis pas d'accord", "hors de question"),
    # Spanish
    *("rechazar", "rechazado", "rechazada", "rechazo", "denegado", "denegada", "no estoy de acuerdo"),
    *("de ninguna manera",),
    # Italian
    *("rifiutato", "rifiutata", "rifiuto", "respinto", "respinta"),
    # Portuguese
    *("não", "rejeitado", "rejeitada", "recusado", "recusada", "reprovado", "reprovada"),
    # Dutch
    *("nee", "afgewezen", "afgekeurd"),
    # Swedish, Danish, Norwegian
    *("nej", "avslås", "avslaget", "avslagen", "avvisad", "avvisat", "nekad", "nekas"),
    *("afvist", "afviser", "nei", "avvist", "avviser", "avslått"),
    # Polish
    *("nie", "odrzucam", "odrzucone", "odrzucony", "odmawiam"),
    # Russian
    *("нет", "отклонено", "отклоняю", "отказано", "отказываю"),
    # Finnish
    *("ei", "hylätty", "hylkään", "en hyväksy"),
    # Turkish
    *("hayır", "reddedildi", "reddediyorum", "kabul etmiyorum", "onaylamıyorum"),
    # Japanese
    *("いいえ", "却下", "却下します", "却下いたします", "承認しません", "承認できません", "否認"),
    *("否認します", "不可", "差し戻します", "拒否", "拒否します"),
    # Chinese
    *("不", "不同意", "我不同意", "不批准", "拒绝", "拒絕", "驳回", "駁回", "不行", "不可以", "否决", "否決"),
    # Korean
    *("아니요", "아니오", "거절", "거절합니다", "반려", "반려합니다", "승인하지 않습니다"),
)

#: Decision words that also mean something else ("no changes", Polish "ja" = "I", Spanish
#: "si" = "if", Danish "tak" = "thanks", Italian "nei" = "in the"): they decide only alone
#: in their clause, before a word of ``POLITE_WORDS``, or before another decision.
STANDALONE_ONLY: frozenset[str] = frozenset(
    {"no", "non", "nie", "ne", "nei", "ei", "нет", "não", "nao", "ja", "si", "tak", "不", "好", "예"}
)

#: Words after a standalone decision word that keep it one: "No thanks", "Non merci".
POLITE_WORDS: frozenset[str] = frozenset(
    """thanks thank thx sorry please way go danke bitte merci gracias grazie obrigado obrigada bedankt dank
    tack takk tak dziękuję dzięki спасибо kiitos teşekkürler""".split()
)

#: Bare yes and no, more acknowledgments than decisions: they decide only when nothing
#: in the reply defers the decision ("OK, I'll check tomorrow" and "No, let me check
#: first" decide nothing; "OK" and "No" alone do).
WEAK_WORDS: frozenset[str] = frozenset(
    """ok okay okej oké ок окей sure fine alright yes yeah yep yup ja oui sí si sì sim tak да kyllä evet
    tamam はい 好 好的 네 예 了解 了解です 了解しました 承知しました d'accord va bene de acuerdo
    alles klar klar no nope nah nein non nee nej nei nie нет não ei いいえ 不 아니요 hayır""".split()
)

#: How a clause puts the decision off ("let me check", "I'll look tomorrow", "je regarde").
DEFERRALS: tuple[str, ...] = (
    *("check", "review", "look", "verify", "think", "discuss", "talk", "get back", "let me see"),
    *("let's wait", "let us wait", "let me ask", "let me confirm"),
    *("come back", "wait", "hold on", "hold off", "give me", "checking", "looking", "reviewing", "need to"),
    *("have to", "must check", "later", "tomorrow", "will check", "will look", "will review", "have a look"),
    *("take a look", "look into", "next week", "first"),
    *("ich schaue", "schaue", "ich prüfe", "prüfe", "ich melde mich", "melde mich", "warte", "morgen"),
    *("später", "je regarde", "regarde", "je vérifie", "vérifie", "je reviens", "reviens", "attends"),
    *("plus tard", "demain", "lo reviso", "reviso", "lo miro", "miro", "espera", "mañana", "luego"),
    *("más tarde", "controllo", "verifico", "guardo", "ne parliamo", "domani", "dopo", "vou verificar"),
    *("vou ver", "amanhã", "depois", "ik kijk", "kijk", "ik kom terug", "kom terug", "jag återkommer"),
    *("återkommer", "jag kollar", "kollar", "imorgon", "jeg vender tilbage", "vender tilbage"),
    *("jeg kigger", "kigger", "i morgen", "jeg ser på", "ser på", "kommer tilbake", "sprawdzę", "zobaczę"),
    *("wrócę", "jutro", "później", "посмотрю", "проверю", "вернусь", "завтра", "позже", "tarkistan"),
    *("katson", "palaan", "huomenna", "bakacağım", "yarın", "kontrol edeceğim", "確認します"),
    *("明日確認します", "検討します", "後で確認します", "我看一下", "我明天再看", "稍后", "我再看看"),
    *("我确认一下", "확인하겠습니다", "내일", "검토하겠습니다"),
)

#: A sentence (or clause) that is nothing but doubt or a wait: said after a decision, it
#: takes the decision back ("Approved. Not sure.", "Rejected. Wait."); said alone, it is
#: no answer to a button either. Only alone, after the leading words, perhaps with a few
#: of ``DOUBT_TRAILERS``: doubt about something named ("not sure about the date") is no
#: doubt about the decision.
DOUBTS: tuple[str, ...] = (
    # English
    *("not sure", "not so sure", "not too sure", "not really", "not certain", "unsure", "uncertain"),
    *("not really sure", "not quite sure", "not entirely sure", "not fully sure"),
    *("maybe", "maybe not", "perhaps", "perhaps not", "probably", "probably not", "or not", "hmm", "hm"),
    *("wait", "wait a moment", "wait a minute", "wait a sec", "wait a second", "hold on", "hold off"),
    *("hang on", "one moment", "one sec", "one second", "just a moment", "on second thought"),
    *("on second thoughts", "second thoughts", "on reflection", "never mind", "nevermind", "scratch that"),
    *("don't know", "do not know", "dunno", "no idea", "let me think", "let me think about it"),
    *("need to think", "need to think about it", "have to think about it"),
    *("on hold", "hold", "pending", "still pending", "hold for now", "put it on hold", "let's hold off"),
    *("hold off for now", "i'd rather wait", "i would rather wait", "better wait", "need more time"),
    *("give me a minute", "give me a moment", "just a sec", "just a second", "hang on a sec"),
    *("hold on a sec", "hold on a second", "hold on a moment", "not so fast"),
    # German
    *("nicht sicher", "bin nicht sicher", "mir nicht sicher", "bin mir nicht sicher", "unsicher"),
    *("weiß nicht", "weiss nicht", "keine ahnung", "vielleicht", "warte", "wartet", "warten sie"),
    *("moment", "einen moment", "augenblick", "halt", "doch nicht", "warten", "lieber warten"),
    *("abwarten", "lieber abwarten"),
    # French
    *("pas sûr", "pas sûre", "pas certain", "pas certaine", "ne suis pas sûr", "ne suis pas sûre"),
    *("sais pas", "ne sais pas", "aucune idée", "peut-être", "peut être", "attends", "attendez"),
    *("un instant", "un moment", "à la réflexion", "réflexion faite"),
    # Spanish
    *("no estoy seguro", "no estoy segura", "no seguro", "no segura", "no sé", "ni idea", "quizás"),
    *("quizá", "tal vez", "espera", "espere", "esperad", "un momento", "pensándolo bien"),
    # Swedish
    *("inte säker", "osäker", "inte riktigt", "vet inte", "ingen aning", "kanske", "vänta"),
    *("ett ögonblick", "vänta lite"),
    # Dutch, Italian, Portuguese
    *("niet zeker", "weet niet", "weet ik niet", "misschien", "wacht", "wacht even", "wacht nog even"),
    *("wacht nog", "even wachten", "momentje", "een moment", "non sono sicuro", "non sono sicura"),
    *("forse", "aspetta", "aspetti", "aspettate", "un attimo", "não tenho certeza", "talvez"),
    *("aguarde", "aguarda", "um momento"),
)

#: The same, only against a completion: "not yet" after a "no" agrees with it ("No, not
#: yet" fails), after a "yes" takes it back ("Approved. Not yet.").
NOT_YET: tuple[str, ...] = (
    *("not yet", "not now", "noch nicht", "jetzt nicht", "pas encore", "pas maintenant", "todavía no"),
    *("aún no", "aun no", "ahora no", "inte än", "inte ännu", "inte nu"),
    *("nog niet", "nu niet", "non ancora", "ancora no", "non adesso", "ainda não", "agora não"),
    *("아직", "아직요", "아직은"),
    *("not today", "not right now", "not for now", "not just yet", "just not yet", "not this week"),
    *("pas tout de suite", "pas aujourd'hui", "heute nicht", "nicht heute", "gerade nicht", "hoy no"),
    *("oggi no", "non oggi", "niet vandaag", "nog even niet", "inte idag", "inte i dag"),
    # Rather not: after a "no" it agrees ("Rejected, rather not"), after a "yes" takes it back.
    *("rather not", "better not", "i'd rather not", "maybe better not", "lieber nicht", "besser nicht"),
    *("doch lieber nicht", "plutôt pas", "mieux vaut pas", "mejor no", "meglio di no", "liever niet"),
)

#: Words that put the decision off to a time, whatever follows them, when they open a
#: clause after it: "Approved, but *not until* Monday", "Approved (*hold until* Monday)",
#: "Genehmigt, aber *erst* nächste Woche", "Genehmigt, aber *noch nicht* umsetzen". Against
#: a completion only, as ``NOT_YET`` is ("No, not until the audit" stays a no).
PUT_OFF: tuple[str, ...] = (
    *("not until", "not till", "not before", "no earlier than", "hold until", "hold till", "not yet"),
    *("on hold until", "nicht vor", "noch nicht", "pas avant", "pas encore"),
    # "erst" puts off only before a time ("erst nächste Woche"): "erst einmal danke" (first
    # of all, thanks) and "erst jetzt gesehen" (only seen now) put off nothing.
    *("erst ab", "erst am", "erst im", "erst in", "erst nach", "erst wenn", "erst morgen", "erst später"),
    *("erst übermorgen", "erst nächste", "erst nächsten", "erst nächstes", "erst kommende", "erst kommenden"),
    *("erst montag", "erst dienstag", "erst mittwoch", "erst donnerstag", "erst freitag", "erst heute abend"),
    *("no antes de", "todavía no", "aún no", "non prima", "non ancora", "só depois", "ainda não"),
    *("pas maintenant", "nog niet", "niet voor", "inte förrän", "inte än", "inte ännu"),
    # "Yes, but *only after* the release": only then, so not now.
    *("only after", "only once", "only when", "only on", "only at", "only from", "only in", "only next"),
    *("only tomorrow", "only later", "only as of", "nur nach", "nur wenn", "seulement après"),
    *("uniquement après", "qu'après", "seulement quand", "seulement lundi", "solo después", "sólo después"),
    *("solamente después", "solo cuando", "sólo cuando", "solo dopo", "soltanto dopo", "solo quando"),
    *("somente depois", "apenas depois", "só quando", "somente quando", "pas na", "pas als", "pas op"),
    *("pas morgen", "pas volgende", "först efter", "först när", "först på", "først efter", "først etter"),
)

#: Times that put the decision off when they stand right after its word, perhaps after
#: one of ``LATER_OBJECTS`` ("Approve later", "Approve it tomorrow", "Genehmige morgen"). A
#: time anywhere else qualifies something else: "Approved, I'll update the ticket later",
#: "Approved and later we deploy".
LATER: tuple[str, ...] = (
    *("later", "tomorrow", "next week", "next month", "tonight", "another time", "some other time"),
    *("in a bit", "in a while", "after the weekend", "später", "morgen", "nächste woche"),
    *("übermorgen", "plus tard", "demain", "la semaine prochaine", "más tarde", "mañana"),
    *("la semana que viene", "la próxima semana", "più tardi", "domani", "mais tarde"),
    *("amanhã", "straks", "volgende week", "senare", "imorgon", "i morgon", "nästa vecka"),
    *("end of day", "end of the day", "end of week", "end of the week", "close of business"),
)

#: When to act, said right after the decision word ("Approve *on Monday*", "Approve *at 5
#: pm*", "Approve *in an hour*", "Approved *for Monday's release*", "Genehmigt *am Montag*",
#: "Approuvé *lundi*", "Aprobado *el lunes*") or as a clause of its own after it ("Approve,
#: *next sprint*."): a time is ``TIME_LEADS`` (at most three) before one of ``TIME_WORDS``, a
#: clock time or date ("at 5", "5 pm", "17 h", "on the 3rd"), "in" a number of
#: ``TIME_UNITS`` ("in an hour", "in 2 days"), or one of ``NEXT`` before or after a word
#: ("next sprint", "lundi prochain"). Not "by Friday" (a deadline: now is before it), "now",
#: "today", "for now", nor "for production" (no time).
TIME_LEADS: frozenset[str] = frozenset(
    """on at in for from around after the this a an starting of until till effective valid first thing
    am um ab an im für zum le la les à au dès pour ce del el los las a para desde il lo l alle per
    dal da o os na no em op om voor vanaf på till för kl klo""".split()
)

#: Words that are a time to act by themselves (behind ``TIME_LEADS``, or alone in a clause
#: after the decision): weekdays, "tomorrow", "tonight", "soon", "afternoon", a month's name.
#: Not "may", "mai", "march" (other words too), "pronto" (Portuguese "done"), nor "Mon",
#: "Fri" (the dates of quoted headers: "On Mon, Jun 3, 2024").
TIME_WORDS: frozenset[str] = frozenset(
    """monday tuesday wednesday thursday friday saturday sunday weekend tomorrow tonight soon shortly
    afternoon evening midnight noon eod eow cob
    january february april june july august september october november december
    montag dienstag mittwoch donnerstag freitag samstag sonnabend sonntag wochenende morgen übermorgen
    bald nachmittag abend mittag januar februar märz juni juli oktober dezember
    lundi mardi mercredi jeudi vendredi samedi dimanche demain bientôt soir
    janvier février mars avril juin juillet août septembre octobre novembre décembre
    lunes martes miércoles miercoles jueves viernes sábado sabado domingo mañana tarde noche
    enero febrero marzo abril mayo junio julio agosto septiembre setiembre octubre noviembre diciembre
    lunedì lunedi martedì martedi mercoledì mercoledi giovedì giovedi venerdì venerdi sabato domenica
    domani stasera pomeriggio gennaio febbraio aprile maggio giugno luglio settembre ottobre dicembre
    segunda terça terca quarta quinta sexta amanhã amanha janeiro fevereiro março junho julho
    maandag dinsdag woensdag donderdag vrijdag zaterdag zondag morgenavond vanavond straks binnenkort
    måndag tisdag onsdag torsdag fredag lördag söndag imorgon ikväll snart mandag tirsdag
    lørdag søndag""".split()
)

#: "Next", which makes a time of the word beside it: "next sprint", "nächste Woche",
#: "la semaine prochaine", "lunes próximo".
NEXT: frozenset[str] = frozenset(
    """next coming following upcoming nächste nächsten nächster nächstes kommende kommenden kommender
    prochain prochaine próximo próxima proximo proxima prossimo prossima volgende komende nästa
    kommande næste neste 다음""".split()
)

#: Units after "in" and a number: "in an hour", "in 2 days", "in ein paar Tagen", "dans une heure".
TIME_UNITS: frozenset[str] = frozenset(
    """minute minutes min mins hour hours hr hrs h day days week weeks month months sprint sprints
    minuten stunde stunden tag tagen tage woche wochen monat monaten minuto minutos minuti heure
    heures jour jours semaine semaines mois hora horas día días dia dias semana semanas mes meses
    ora ore giorno giorni settimana settimane mese mesi uur dag dagen weken maand maanden timme
    timmar dagar veckor time timer uge uger""".split()
)

#: Words before a number of ``TIME_UNITS``: "*in* an hour", "*within* two days", "*dans* une heure".
UNIT_LEADS: frozenset[str] = frozenset("""in within dans en dentro entro tra fra binnen over om inom""".split())

#: What follows a number to make it a time or date: "5 *pm*", "17 *h*", "the 3*rd*".
CLOCK_MARKS: frozenset[str] = frozenset("""am pm h uhr hs o'clock st nd rd th er e""".split())

#: Words that before a time say goodbye ("Validé, *à* demain", "Approvato, *a* domani", "bis
#: Montag", "hasta mañana", "tot morgen"): a time after them only when it is a clock time
#: ("à 17 h").
SEE_YOU: frozenset[str] = frozenset("""à a bis hasta até tot""".split())

#: Words before a bare number that make it a clock time: "*at* 5", "*um* 17", "*à* 14".
NUMBER_LEADS: frozenset[str] = frozenset("""at um à a las alle om kl klo""".split())

#: How many of a unit: "in *a few* days", "in *an* hour", "dans *une* heure"; or a number.
QUANTITIES: frozenset[str] = frozenset(
    """a an one two three few couple of several ein eine einer einem einen paar un une deux quelques
    una uno dos unos unas pocos due tre qualche um uma dois duas een twee en ett två några""".split()
)

#: Words that make the decision wait for something, right after the decision word ("Approve
#: *once* QA passes", "Approve *when* ready", "Approve *after* the freeze") or opening a
#: clause in its sentence ("Approved, once the tests pass"; "Once QA passes, approve"). An
#: "if" is a condition too, but no time: left to the words around it.
CONDITIONS: tuple[str, ...] = (
    *("once", "when", "as soon as", "after", "afterwards", "until", "till", "not until", "not before"),
    *("sobald", "wenn", "nach", "nachdem", "danach", "dès que", "une fois que", "quand", "lorsque"),
    *("après", "cuando", "una vez que", "en cuanto", "tan pronto como", "después de", "después", "tras"),
    *("quando", "appena", "non appena", "una volta che", "dopo", "dopo che", "assim que", "logo que"),
    *("depois de", "depois", "após", "zodra", "wanneer", "nadat", "daarna", "na de", "na het", "när"),
    *("så snart", "efter", "etter", "når"),
    # "from" with a time after it is a lead of ``TIME_LEADS``; these say it with more words.
    *("à partir de", "à partir du", "a partir de", "a partire da", "a partire dal", "starting from"),
    *("as of", "with effect from"),
    # A condition rc-mta cannot check: acting now would guess it holds ("Approved if CI is
    # green", "Approve pending QA", "Genehmigt, sofern die Tests grün sind"). Not the one-
    # letter words of other languages ("si", "se", "als", "om"): they mean too much else.
    *("if", "only if", "pending", "provided", "provided that", "providing", "subject to", "as long as"),
    *("assuming", "on condition", "conditional on", "contingent on", "falls", "sofern", "vorausgesetzt"),
    *("vorbehaltlich", "unter vorbehalt", "à condition", "sous réserve", "pourvu que", "siempre que"),
    *("siempre y cuando", "sujeto a", "a condición de", "purché", "a condizione", "desde que"),
    *("contanto que", "mits", "op voorwaarde", "onder voorbehoud", "förutsatt att"),
)

#: What follows a condition word without making it one: "approved *once again*", "after
#: all", "as soon as possible" (now), "when I saw it"; ``DELIBERATIONS`` after "after".
NOT_CONDITIONS: tuple[str, ...] = (
    *("once again", "once more", "after all", "as soon as possible", "as soon as you can"),
    *("après tout", "dès que possible", "sobald wie möglich", "nach allem"),
    *("después de todo", "dopo tutto", "depois de tudo", "så snart som möjligt", "nach plan"),
    # A courtesy for what is asked next: "Approved, when you get a chance update the docs".
    *("when you have a minute", "when you have a moment", "when you have a chance", "when you have time"),
    *("when you get a chance", "when you get a minute", "when you get a moment", "when you can"),
    *("when you find time", "when you find the time", "when possible", "once you have a minute"),
    # An offer or an aside, not a condition of the decision: "Approved, if you need anything
    # let me know", "Approved, if that helps".
    *("if you need", "if you have", "if you want", "if you like", "if you wish", "if needed", "if necessary"),
    *("if any", "if anything", "if that helps", "if it helps", "if there are", "if there is", "if so"),
    *("if possible", "if you can", "if you are not", "if you have received", "if you received"),
)

#: What was done before deciding: "Approved *after review*", "Genehmigt nach Rücksprache",
#: "Goedgekeurd na overleg". After one of ``ORDERS`` it is still to come ("Approve after
#: review"), so there the decision waits.
DELIBERATIONS: frozenset[str] = frozenset(
    """review reviewing reviews discussion discussions discussing checking talking speaking
    consulting consultation consideration considering careful thought looking reading testing
    rücksprache absprache prüfung durchsicht überprüfung abstimmung vérification discussion réflexion
    examen relecture revisión revision discusión consulta revisar hablar verificar comprobar verifica
    revisione discussione revisão
    análise analise conversa overleg controle granskning""".split()
)

#: Conditions that agree with a refusal: "Rejected until the tests pass" is a no for now.
UNTIL: frozenset[str] = frozenset("""until till not bis jusqu'à hasta finché até tot tills""".split())

#: Decision words said as an order, whose "after …" is still to come: "Approve after review".
ORDERS: frozenset[str] = frozenset(
    """approve accept confirm complete proceed reject decline deny refuse abort veto fail disapprove
    freigeben genehmigen valider approuver""".split()
)

#: Times inside a run of Chinese, Japanese or Korean ("明日承認します", "月曜日に承認",
#: "下周批准", "내일 승인"): with a decision word in the clause, or alone after it, the
#: decision waits, as "Approve tomorrow" does.
CJK_LATER: tuple[str, ...] = (
    *("明日", "明後日", "あした", "来週", "来月", "後で", "あとで", "後ほど", "のちほど", "週明け", "次回"),
    *("月曜", "火曜", "水曜", "木曜", "金曜", "土曜", "日曜", "以降", "次第", "終わったら", "終了後"),
    *("明天", "后天", "後天", "下周", "下週", "下星期", "下个月", "下個月", "以后", "以後", "之后", "之後"),
    *("稍后", "稍後", "晚点", "晚點", "晚些", "下次", "星期一", "星期二", "星期三", "星期四", "星期五"),
    *("月曜日", "火曜日", "水曜日", "木曜日", "金曜日", "土曜日", "日曜日"),
    *("星期六", "星期日", "星期天", "周一", "周二", "周三", "周四", "周五", "週一", "週二", "週三"),
    *("週四", "週五", "礼拜一", "禮拜一"),
    *("내일", "모레", "다음주", "나중에", "월요일", "화요일", "수요일", "목요일", "금요일"),
    *("이후", "후에"),
)

#: Words after a doubt that leave it a doubt about the decision: "Not sure about it though".
DOUBT_TRAILERS: frozenset[str] = frozenset(
    """about on it this that one though yet actually really now then either anymore sorry please
    thanks so bitte doch noch mal darüber dabei encore merci todavía gracias ändå tack""".split()
)

#: What may stand between a decision word and ``LATER``: "Approve *it* tomorrow".
LATER_OBJECTS: frozenset[str] = frozenset(
    """it this that them all es das sie ihn le la les ça cela lo los las het dit dat den det""".split()
)

#: Words that open a correction of what was said before: a decision after one of these in
#: its sentence, when an earlier one was made, makes the reply unclear ("Rejected. Actually,
#: no.", "Rejected. Wait, no.", "Approved. On second thought, no.").
CORRECTIONS: tuple[str, ...] = (
    *("actually", "wait", "on second thought", "on second thoughts", "second thoughts", "on reflection"),
    *("scratch that", "never mind", "nevermind", "correction", "then again", "or rather", "rather"),
    *("or", "i mean", "oder", "beziehungsweise", "ou plutôt", "o mejor", "o meglio", "of liever"),
    *("moment", "warte", "eigentlich", "à la réflexion", "réflexion faite", "en fait", "attends"),
    *("pensándolo bien", "espera", "en realidad", "vänta", "förresten"),
)

#: Words that ask to hold what a clause names: "Please hold off on approving", "Wait with
#: the approval", "Warte mit der Freigabe": against a completion when the clause names the
#: decision (``DECISION_NAMES`` or a decision word); "Wait for the window" names none.
HOLDS: tuple[str, ...] = (
    *("hold", "hold off", "hold on", "hang on", "wait", "let's wait", "let us wait", "pause", "postpone"),
    *("delay", "warte", "wartet", "warten", "attends", "attendez", "attendre", "espera", "espere"),
    *("esperad", "esperar", "vänta", "avvakta"),
)

#: Words naming the decision itself (not in the decision lists): "hold off on *approving*".
DECISION_NAMES: tuple[str, ...] = (
    *("approving", "approval", "approvals", "completing", "completion", "sign off", "signing off"),
    *("sign-off", "signoff", "rejecting", "rejection", "decision", "deciding", "go-ahead", "green light"),
    *("freigabe", "genehmigung", "zustimmung", "entscheidung", "approbation", "validation", "décision"),
    *("aprobar", "aprobación", "aprobacion", "decisión", "godkännande", "godkännandet", "godkänna"),
    *("beslut", "beslutet"),
)

#: Doubt and waits inside a run of Chinese, Japanese or Korean (read as ``DOUBTS`` are):
#: "等一下" (wait a moment), "不确定" (not sure), "承認は保留します" (approval on hold), "잠깐만요".
CJK_DOUBTS: tuple[str, ...] = (
    *("等一下", "等等", "稍等", "暂缓", "暫緩", "先别", "先別", "先不要", "不确定", "不確定", "再说", "再說"),
    *("保留します", "保留で", "保留中", "待って", "ちょっと待", "検討中", "分かりません", "わかりません"),
    *("还是算了", "還是算了", "算了吧", "やっぱりやめ", "やっぱり止め", "やめておきます", "やめときます"),
    *("잠깐", "잠시만", "보류", "모르겠"),
)

#: Runs that are nothing but a take-back (Chinese "forget it"): only as the whole run, since
#: "算了" is also the end of other words ("计算了", calculated).
CJK_DOUBT_RUNS: frozenset[str] = frozenset({"算了", "那算了", "那就算了", "就算了"})

#: Chinese negations right before a decision word in the same run: "我*不能*批准" (I cannot
#: approve), "测试还*没有*完成" (the tests are not complete) read as "not approved" does.
CJK_NEGATORS: tuple[str, ...] = (
    *("不", "没", "沒", "未", "别", "別", "勿", "无", "無", "没有", "沒有", "不能", "不会", "不會", "不可"),
    *("不要", "不想", "无法", "無法", "还没", "還沒", "尚未"),
)

#: Marks of a "not" anywhere else inside a run of Chinese, Japanese or Korean, which is one
#: word to the grammar (no spaces): "承認しない", "승인할 수 없습니다" put it after the word.
CJK_NEGATIONS: tuple[str, ...] = (
    *("不", "没", "沒", "未", "别", "別", "勿", "无", "無", "否"),
    *("ない", "ません", "せず", "できず"),
    *("않", "못", "없"),
)

#: "But" in many languages: a new clause starts after it ("out tomorrow but approved").
#: Not "and": "not tested and approved" leaves the reach of "not" unclear.
CONTRASTS: tuple[str, ...] = (
    *("but", "however", "aber", "jedoch", "doch", "mais", "pero", "ma", "però", "mas", "porém", "maar"),
    *("men", "ale", "но", "однако", "mutta", "ama", "fakat", "ancak", "하지만"),
)
#: The same, written before the next word without a space (Chinese).
CJK_CONTRASTS: tuple[str, ...] = ("但是", "但", "不过", "不過", "可是")

#: Words that say something is wrong without deciding: a complete word in the same sentence
#: reads either way ("Complete failure of the build", "Confirmed: the build is broken",
#: "OK, this is broken"), and an acknowledgment elsewhere approves nothing. Not what may
#: go wrong ("let me know if anything breaks"), nor "failing" ("failing tests fixed").
TROUBLE: tuple[str, ...] = (
    # English
    *("failure", "failures", "broken", "broke", "crashed", "crashes", "crashing", "wrong", "fails"),
    *("error", "errors", "bug", "bugs", "regression", "disaster", "mess", "fiasco"),
    *("doesn't work", "does not work", "don't work", "didn't work", "did not work", "isn't working"),
    *("is not working", "not working", "won't work", "will not work"),
    # German, French, Spanish, Italian, Portuguese, Dutch
    *("kaputt", "defekt", "fehler", "fehlerhaft", "fehlgeschlagen", "funktioniert nicht", "geht nicht"),
    *("cassé", "cassée", "échec", "échoué", "erreur", "en panne", "ne marche pas", "ne fonctionne pas"),
    *("roto", "rota", "falló", "fracaso", "no funciona", "rotto", "rotta", "fallito", "fallita", "guasto"),
    *("errore", "non funziona", "quebrado", "quebrada", "falhou", "erro", "não funciona", "kapot"),
    *("mislukt", "werkt niet"),
    # Swedish, Danish, Norwegian, Polish, Russian, Finnish, Turkish
    *("trasig", "trasigt", "misslyckades", "fungerar inte", "i stykker", "mislykkedes", "virker ikke"),
    *("ødelagt", "mislyktes", "fungerer ikke", "zepsute", "zepsuty", "nie działa", "сломано", "сломан"),
    *("не работает", "rikki", "epäonnistui", "ei toimi", "bozuk", "başarısız", "çalışmıyor"),
)

#: Words of the legal disclaimers servers add below every message ("No liability is
#: accepted for viruses", "does not accept responsibility for…"): decision words further
#: on in a clause holding one of these are not read as the person's.
DISCLAIMER_WORDS: frozenset[str] = frozenset(
    """liability liable responsibility haftung responsabilité responsabilidad responsabilità responsabilidade
    aansprakelijkheid ansvar odpowiedzialności ответственности""".split()
)

#: Negators that say doubt, never a decision, even right before a decision word: "Hardly
#: approved" fails nothing (it is refused), "unable to approve" neither.
DOUBTING_NEGATORS: tuple[str, ...] = ("unable", "unwilling", "impossible", "hardly")

#: Words that turn the decision after them around: "not approved", "nicht genehmigt".
NEGATORS: tuple[str, ...] = (
    *("not", "don't", "dont", "do not", "doesn't", "does not", "didn't", "did not", "can't", "cant"),
    *("cannot", "can not", "couldn't", "could not", "won't", "will not", "wouldn't", "would not"),
    *("shouldn't", "should not", "isn't", "is not", "aren't", "are not", "wasn't", "was not", "never"),
    *("no", "nicht", "kein", "keine", "nie", "niemals", "pas", "ne", "ne pas", "non", "niet", "geen", "inte", "ej"),
    *("ikke", "не", "não", "nao", "ei"),
    # Korean writes "not" as a word of its own before the verb: "승인 안 합니다" (I do not approve)
    *("안", "못"),
    # "I am unable to approve this": a negation that stands before the decision, not right
    # before it, so it is read as doubt, never as a decision
    *DOUBTING_NEGATORS,
)

#: Decision words whose negation is doubt, not a refusal: "not sure", "not done yet".
HEDGES: frozenset[str] = frozenset(
    """sure done complete completed finished ready yet fertig erledigt sûr fait seguro hecho listo sicuro
    fatto klaar gedaan klart valmis готово""".split()
)

#: Words that may come before the decision without changing it: greetings, "I", "this is",
#: "so", "please" (at most a few of them are skipped).
LEADING_WORDS: tuple[str, ...] = (
    # English
    *("i", "we", "i'm", "im", "we're", "i am", "we are", "it's", "it is", "this is", "that's", "that is"),
    *("this", "that", "it", "so", "and", "but", "then", "also", "well", "please", "hereby", "i'll"),
    *("i will", "we'll", "we will", "i'd say", "i would say", "i think", "i guess", "for me"),
    *("from my side", "from our side", "all", "hi", "hello", "hey", "thanks", "thank you", "totally"),
    *("fully", "definitely", "certainly", "happily", "gladly", "actually", "oh", "hmm", "hm", "sorry", "um"),
    # German
    *("ich", "wir", "ich bin", "wir sind", "das ist", "es ist", "ist", "also", "dann", "und", "aber"),
    *("bitte", "hiermit", "von mir", "von meiner seite", "hallo", "danke", "für mich", "ja"),
    # French
    *("je", "nous", "je suis", "nous sommes", "c'est", "et", "mais", "alors", "donc", "svp", "merci"),
    *("bonjour", "pour moi", "de mon côté"),
    # Spanish, Italian, Portuguese
    *("yo", "estoy", "estamos", "está", "es", "y", "pero", "entonces", "pues", "por favor", "gracias"),
    *("hola", "por mi parte", "para mí", "si", "io", "sono", "è", "e", "ma", "allora", "quindi"),
    *("per favore", "grazie", "ciao", "per me", "eu", "estou", "é", "mas", "então", "obrigado"),
    *("obrigada", "olá", "para mim", "da minha parte"),
    # Dutch, Scandinavian
    *("ik", "wij", "ik ben", "het is", "dat is", "is", "en", "maar", "dan", "dus", "graag", "bedankt"),
    *("voor mij", "van mijn kant", "jag", "vi", "det är", "är", "och", "men", "så", "tack", "hej"),
    *("för mig", "jeg", "det er", "er", "og", "takk", "hei", "for meg", "for mig"),
    # Polish, Russian, Finnish, Turkish
    *("my", "to jest", "jest", "ale", "więc", "proszę", "dziękuję", "dzięki", "cześć", "dla mnie"),
    *("z mojej strony", "tak", "я", "мы", "это", "и", "но", "так", "тогда", "пожалуйста", "спасибо"),
    *("здравствуйте", "привет", "для меня", "с моей стороны", "minä", "me", "se on", "on", "ja"),
    *("mutta", "joten", "kiitos", "minulle", "ben", "biz", "bu", "ve", "ama", "lütfen", "teşekkürler"),
    *("merhaba", "benim için"),
)

#: Verbs of reply attribution lines ("On … Bob wrote:"), in the forms clients write them.
ATTRIBUTION_VERBS: tuple[str, ...] = (
    *("wrote", "writes", "schrieb", "hat geschrieben", "a écrit", "escribió", "escribio", "ha scritto"),
    *("scrisse", "schreef", "heeft geschreven", "escreveu", "skrev", "napisał", "napisała", "napisał(a)"),
    *(
        "napisana",
        "pisze",
        "geschreven",
        "napsal",
        "napsala",
        "napsal(a)",
        "пишет",
        "написал",
        "написала",
        "написал(а)",
        "kirjoitti",
    ),
    *("yazdı", "写道", "寫道", "書きました", "のメッセージ", "のメール", "작성", "쓴 글", "írta"),
)

#: Words that open a reply attribution, so a wrapped one is recognised from its first line.
ATTRIBUTION_INTROS: tuple[str, ...] = (
    *("on", "le", "am", "el", "il", "il giorno", "op", "em", "den", "dne", "w dniu", "в", "在", "på"),
)

#: Labels of the header block that Outlook and webmails put above the quoted original,
#: by the field they name.
HEADER_LABELS: dict[str, tuple[str, ...]] = {
    "from": (
        *("from", "von", "de", "van", "da", "från", "fra", "od", "от", "от кого", "lähettäjä", "差出人"),
        *("送信者", "发件人", "寄件者", "寄件人", "kimden", "보낸 사람", "odesílatel", "feladó", "dari"),
    ),
    "date": (
        *("date", "sent", "datum", "gesendet", "envoyé", "envoyé le", "enviado", "enviado el", "enviada"),
        *("fecha", "verzonden", "inviato", "data", "skickat", "sendt", "wysłano", "wysłane", "отправлено"),
        *("дата", "lähetetty", "päivämäärä", "送信日時", "日付", "发送时间", "發送時間", "日期", "寄件日期"),
        *("时间", "時間", "tarih", "gönderildi", "gönderilme tarihi", "보낸 날짜", "odesláno", "elküldve"),
    ),
    "to": (
        *("to", "an", "à", "a", "para", "aan", "till", "til", "do", "кому", "vastaanottaja", "宛先"),
        *("收件人", "收件者", "kime", "받는 사람", "komu", "címzett", "per"),
    ),
    "cc": ("cc", "kopie", "kopia", "kopi", "копия", "抄送", "副本", "bilgi", "참조", "másolat"),
    "subject": (
        *("subject", "betreff", "objet", "asunto", "oggetto", "assunto", "onderwerp", "ämne", "emne"),
        *("temat", "тема", "aihe", "件名", "主题", "主旨", "konu", "제목", "předmět", "tárgy"),
    ),
    "reply-to": (
        *("reply-to", "reply to", "antwort an", "répondre à", "responder a", "rispondi a"),
        *("antwoorden aan", "svara till", "odpowiedz do", "ответить"),
    ),
}

#: Lines mobile clients and webmails add below the reply instead of a "-- " signature
#: (regular expressions, matched against a whole line of at most 120 characters).
MOBILE_SIGNATURES: tuple[str, ...] = (
    r"sent (?:from|with|via|using) .{1,60}",
    r"get outlook for (?:ios|android)",
    r"(?:von|gesendet von) meinem .{1,40}(?: gesendet)?",
    r"gesendet (?:von|mit) .{1,40}",
    r"holen sie sich outlook für (?:ios|android)",
    r"outlook für (?:ios|android) (?:beziehen|herunterladen)",
    r"envoyé (?:de|depuis|à partir de|avec) .{1,50}",
    r"télécharger outlook pour (?:ios|android)",
    r"enviado (?:desde|do|com|con|a partir de) .{1,50}",
    r"obtener outlook para (?:ios|android)",
    r"obter o outlook para (?:ios|android)",
    r"inviato (?:da|dal|dal mio|con) .{1,50}",
    r"scarica outlook per (?:ios|android)",
    r"(?:verzonden|verstuurd) (?:vanaf|van|met) .{1,50}",
    r"outlook voor (?:ios|android) downloaden",
    r"skickat från .{1,50}",
    r"hämta outlook för (?:ios|android)",
    r"sendt fra .{1,50}",
    r"hent outlook (?:til|for) (?:ios|android)",
    r"wysłane (?:z|ze|przy użyciu) .{1,50}",
    r"pobierz (?:aplikację )?outlook dla (?:systemu )?(?:ios|android)",
    r"отправлено (?:с|из|со) .{1,50}",
    r"получите outlook для (?:ios|android)",
    r"lähetetty .{1,50}",
    r"odesláno z .{1,50}",
    r".{1,40}(?:'|’)?(?:dan|den|tan|ten) gönderildi",
    r".{1,30}から送信",
    r"(?:ios|android) 用 outlook を入手",
    r"发自我的.{1,30}",
    r"發自我的.{1,30}",
    r"从我的.{1,30}发送",
    r".{1,30}에서 보냄",
)

#: How mail gateways' warnings start: a label and a colon ("CAUTION: This email
#: originated from outside…", "EXTERNAL EMAIL:", "ACHTUNG:", "注意:")…
BANNER_LABELS: tuple[str, ...] = (
    *("caution", "warning", "attention", "external", "external email", "external sender", "notice"),
    *("important", "achtung", "vorsicht", "warnung", "externe e-mail", "hinweis", "avertissement"),
    *("précaution", "precaución", "atención", "advertencia", "aviso", "correo externo", "attenzione"),
    *("avviso", "let op", "waarschuwing", "varning", "obs", "advarsel", "uwaga", "ostrzeżenie"),
    *("внимание", "предупреждение", "внешнее письмо", "注意", "警告", "huomio", "varoitus", "atenção"),
    *("dikkat", "uyarı", "주의", "경고"),
)

#: …or a sentence of their own.
BANNER_SENTENCES: tuple[str, ...] = (
    *("you don't often get email from", "this email originated", "this message originated"),
    *("this message came from outside", "this email came from outside", "this email is from an external"),
    *("this message is from an external", "diese e-mail stammt von außerhalb", "diese nachricht stammt von"),
    *("ce message provient de l'extérieur", "ce courriel provient de l'extérieur"),
    *("este correo se originó fuera", "este mensaje se originó fuera", "questa email proviene dall'esterno"),
    *("deze e-mail is afkomstig van buiten",),
)

#: Words one of those warnings contains, so a person's own "Caution: …" is not taken for one.
BANNER_WORDS: tuple[str, ...] = (
    *("originated", "outside", "external", "extern", "externe", "externa", "externo", "esterno"),
    *("esterna", "außerhalb", "ausserhalb", "extérieur", "exterieur", "fuera", "buiten", "utanför"),
    *("udenfor", "utenfor", "spoza", "zewnętrz", "извне", "внешн", "за пределами", "外部", "組織外"),
    *("组织外", "ulkopuol", "ulkoinen", "fora da", "dışından", "harici", "외부", "ekstern"),
    *("don't often get email", "do not click", "unless you recognize", "unless you recognise"),
)

#: Words of a warning's later lines ("Do not click links or open attachments…").
BANNER_CONTINUATION: tuple[str, ...] = (
    *BANNER_WORDS,
    *("click", "links", "attachment", "sender", "content is safe", "liens", "pièces jointes", "enlaces"),
    *("adjunto", "collegament", "allegat", "anhänge", "anhang", "absender", "bijlage", "bilag", "vedhæft"),
    *("vedlegg", "załącz", "nadawc", "вложени", "ссылк", "отправител", "リンク", "添付", "链接", "附件"),
    *("liitte", "linkk", "lähettäj", "anexo", "ekler", "bağlantı", "링크", "첨부", "afsender", "avsender"),
    *("avsändare", "expéditeur", "remitente", "mittente", "afzender", "remetente", "gönderen"),
)

# --- What a Complete or Fail button's reply may not say (``intent._against_button``) ---------
# Words that decide nothing in the grammar above, but say which way the person leans: a
# "Definitely not" or "Do not deploy" to the Complete address, a "Deploy it" to the Fail one.

#: A clause that is all of one of these (after the leading words, perhaps with a few
#: ``DOUBT_TRAILERS``) is a no: "Definitely not", "I'm afraid not", "Keinesfalls".
BUTTON_NO_ANSWERS: tuple[str, ...] = (
    # English ("Definitely not", "Certainly not": the adverb is a leading word)
    *("not", "not at all", "afraid not", "i fear not", "don't think so", "do not think so", "hope not"),
    *("think not", "surely not", "no chance", "not a chance", "not happening", "never", "never ever"),
    *("over my dead body", "out of the question", "nothing doing", "negative", "no can do", "forget it"),
    # German
    *("keinesfalls", "keineswegs", "niemals", "nie", "nicht", "auf gar keinen fall", "ganz und gar nicht"),
    *("gar nicht", "bestimmt nicht", "sicher nicht", "eher nicht", "kommt nicht in frage"),
    *("kommt nicht infrage", "glaube nicht", "denke nicht"),
    # French, Spanish, Italian, Portuguese
    *("pas du tout", "absolument pas", "certainement pas", "sûrement pas", "jamais", "en aucun cas"),
    *("pas question", "je ne pense pas", "je ne crois pas", "je crois pas", "para nada", "en absoluto"),
    *("ni hablar", "nunca", "jamás", "de ningún modo", "claro que no", "creo que no", "per niente"),
    *("niente affatto", "assolutamente no", "mai", "in nessun caso", "nemmeno per sogno", "credo di no"),
    *("direi di no", "de jeito nenhum", "nem pensar", "de forma alguma", "acho que não", "claro que não"),
    # Dutch, Scandinavian, Polish, Russian, Finnish, Turkish
    *("absoluut niet", "zeker niet", "geenszins", "nooit", "helemaal niet", "geen sprake van"),
    *("ik denk het niet", "absolut inte", "aldrig", "inte alls", "absolut ikke", "aldri", "slet ikke"),
    *("overhovedet ikke", "ikke tale om", "w żadnym wypadku", "absolutnie nie", "nigdy", "wykluczone"),
    *("raczej nie", "ни в коем случае", "никогда", "ни за что", "исключено", "конечно нет", "точно нет"),
    *("ei missään nimessä", "ei ikinä", "ei todellakaan", "ehdottomasti ei", "ei käy", "asla"),
    *("kesinlikle hayır", "kesinlikle olmaz", "olmaz"),
    # A no with regret ("Unfortunately not", "Leider nicht"), and a no in other words
    *("unfortunately not", "sadly not", "regrettably not", "under no circumstances", "by no means"),
    *("let's not", "let us not", "leider nicht", "leider nein", "helaas niet", "helaas nee", "tyvärr inte"),
    *("tyvärr nej", "surtout pas", "malheureusement pas", "malheureusement non", "lamentablemente no"),
    *("por desgracia no", "purtroppo no", "infelizmente não", "niestety nie"),
    # Japanese, Korean
    *("だめ", "ダメ", "駄目", "だめです", "ダメです", "駄目です", "안 됩니다", "안됩니다", "안 돼요", "안돼요"),
)

#: Words that, opening a clause (after the leading words), ask to stop or undo, or judge
#: the change unacceptable: "Stop the release", "Cancel the deployment", "Roll back",
#: "Unacceptable", "Abbrechen", "Annulez".
BUTTON_NO_OPENERS: tuple[str, ...] = (
    # English
    *("stop", "stop it", "cancel", "halt", "roll back", "roll it back", "rollback", "revert", "back out"),
    *("back it out", "undo", "kill it", "scrap it", "scrap", "call it off", "pull the plug", "withdraw"),
    *("terminate", "block it", "shut it down", "unacceptable", "not acceptable", "bad idea", "a bad idea"),
    *("terrible idea", "a terrible idea", "too risky", "too dangerous", "premature", "a non-starter"),
    *("non-starter", "dangerous", "risky", "let's not do", "let's not ship", "let's not deploy"),
    *("let's not release", "let's not merge", "postponed", "cancelled", "canceled", "changes requested"),
    *("needs changes", "needs more work", "needs work", "nack"),
    # German
    *("stopp", "stoppen", "stoppt", "abbrechen", "brich ab", "brecht ab", "anhalten", "zurückrollen"),
    *("zurücksetzen", "rückgängig", "absagen", "stornieren", "inakzeptabel", "unannehmbar", "nicht akzeptabel"),
    *("schlechte idee", "zu riskant", "zu gefährlich"),
    # French
    *("arrête", "arrêtez", "arrêter", "stoppe", "stoppez", "annule", "annulez", "annuler", "inacceptable"),
    *("revenir en arrière", "reviens en arrière", "revenez en arrière", "mauvaise idée", "trop risqué"),
    # Spanish, Italian, Portuguese
    *("detén", "deténgalo", "detener", "detened", "cancela", "cancele", "cancelar", "revierte", "revertir"),
    *("deshaz", "inaceptable", "mala idea", "demasiado arriesgado", "ferma", "fermate", "fermare", "annulla"),
    *("annullare", "interrompi", "interrompere", "inaccettabile", "pessima idea", "troppo rischioso"),
    *("pare", "parar", "cancele", "reverter", "reverta", "interrompa", "inaceitável", "inaceitavel", "má ideia"),
    # Dutch, Scandinavian
    *("stoppen", "annuleer", "annuleren", "terugdraaien", "draai terug", "afbreken", "onaanvaardbaar"),
    *("onacceptabel", "slecht idee", "stoppa", "avbryt", "avbryta", "ställ in", "rulla tillbaka"),
    *("oacceptabelt", "oacceptabel", "annuller", "afbryd", "rul tilbage", "uacceptabelt", "uacceptabel"),
    *("rull tilbake", "uakseptabelt", "uakseptabel"),
    # Polish, Russian, Finnish, Turkish
    *("zatrzymaj", "zatrzymajcie", "anuluj", "anulujcie", "wycofaj", "wycofajcie", "przerwij"),
    *("nie do przyjęcia", "niedopuszczalne", "стоп", "остановите", "остановить", "отмена", "отменить"),
    *("отмените", "откатить", "откатите", "прекратите", "неприемлемо", "недопустимо", "pysäytä"),
    *("peruuta", "keskeytä", "seis", "mahdotonta", "durdur", "durdurun", "iptal", "geri al"),
    *("kabul edilemez",),
    # Korean (written with spaces)
    *("중지", "중지해 주세요", "취소", "취소해 주세요", "중단", "롤백"),
)

#: Marks of stopping or undoing inside a run of Chinese or Japanese (one word to the
#: grammar): "中止してください", "停止发布", "回滚", "キャンセル".
BUTTON_CJK_NO_MARKS: tuple[str, ...] = (
    *("中止", "停止", "取消", "取り消", "回滚", "回滾", "撤销", "撤銷", "キャンセル", "ロールバック"),
    *("やめて", "止めて", "だめ", "ダメ", "駄目", "不可能", "绝对不", "絕對不"),
)

#: What a negator at the opening of a clause may say is not there, without the clause
#: being a no: "Don't worry", "Not bad", "I didn't find any issues", "Don't forget the
#: changelog" (and ``TROUBLE``: "No errors").
BUTTON_NEGATED_BENIGN: frozenset[str] = frozenset(
    """issue issues problem problems concern concerns objection objections blocker blockers blocking complaint
    complaints comment comments remark remarks question questions worry worries worried forget hesitate mind bad
    bother risk risks regression regressions impact impacts affect affects break breaks breaking much anything
    worse urgent sorge sorgen schlecht anmerkungen fragen einwand einwände mal inquiète inquiétez souci soucis
    remarques commentaire commentaires preocupes preocupe preocupéis male preoccuparti preoccupatevi problemi
    slecht zorgen wait uwag uwagi zastrzeżeń
    print printing reply replying respond responding response responses read copy copying distribute
    forward forwarding disclose use intended object objecting opposed against wrong""".split()
)

#: Words skipped after such a negator to find what it negates: "I don't *see any* issues",
#: "I don't *think there are any* problems".
BUTTON_NEGATION_FILLERS: frozenset[str] = frozenset(
    """any a an the see seen saw find found have has had spot spotted notice noticed expect think there are is be
    were was too very really real major big further other more de du des mam""".split()
)

#: Determiners that negate a noun ("No changes needed", "Keine Anmerkungen"): a no only
#: before one of ``BUTTON_ACTIONS`` ("No deploy today", "Kein Release") or a decision's name.
BUTTON_DETERMINERS: frozenset[str] = frozenset(
    """no kein keine keinen keinem geen ingen inga inget aucun aucune ningún ninguna nessun nessuna nenhum
    nenhuma""".split()
)

#: The change a request gates, as verbs and nouns: "Deploy it" to the Fail address, "No
#: release" to the Complete one.
BUTTON_ACTIONS: tuple[str, ...] = (
    *("deploy", "deployment", "deploying", "release", "releasing", "ship", "shipping", "merge", "merging"),
    *("rollout", "roll out", "launch", "launching", "publish", "publishing", "promote", "push", "go live"),
    *("go-live", "deployen", "ausrollen", "veröffentlichen", "déployer", "déployez", "déploie", "livrer"),
    *("livrez", "mettre en production", "desplegar", "despliega", "despliegue", "publicar", "publica"),
    *("rilascia", "rilasciare", "rilascio", "implantar", "implante", "publique", "uitrollen", "rol uit"),
    *("släpp", "driftsätt", "wdrażaj", "wdróż", "wdrożenie", "выкатывайте", "разворачивайте", "выкатить"),
)

#: What may follow one of ``BUTTON_ACTIONS`` opening a clause for it to ask for it: "Deploy
#: *it*", "Ship *now*", "Release *this*" (not "Release notes attached", "Merge conflict").
BUTTON_ACTION_OBJECTS: frozenset[str] = frozenset(
    """it this that them now asap today please away already es das le la lo""".split()
)

#: A clause that is all of one of these (perhaps after leading words and with a few
#: ``DOUBT_TRAILERS``) is a yes: "Definitely.", "Green light", "Let's go".
BUTTON_GO_ANSWERS: tuple[str, ...] = (
    # English
    *("definitely", "certainly", "totally", "gladly", "happily", "indeed", "for sure", "you bet"),
    *("green light", "greenlight", "green lit", "green-lit", "go", "go go go", "let's go", "let's do it"),
    *("do it", "just do it", "make it so", "send it", "let's ship it", "let's ship", "full steam ahead"),
    *("by all means",),
    # German, French, Spanish, Italian, Portuguese
    *("auf jeden fall", "unbedingt", "los", "los geht's", "mach es", "mach das", "leg los", "grünes licht"),
    *("vas-y", "allez", "on y va", "absolument", "tout à fait", "carrément", "dale", "vamos", "sin duda"),
    *("absolutamente", "totalmente", "luz verde", "claro que sí", "vai", "andiamo", "assolutamente"),
    *("certamente", "sicuramente", "via libera", "assolutamente sì", "pode ir", "com certeza"),
    *("sinal verde",),
    # Dutch, Scandinavian, Polish, Russian, Finnish, Turkish
    *("doen", "doe maar", "zeker", "absoluut", "groen licht", "kör", "kör på", "absolut", "självklart"),
    *("visst", "grönt ljus", "kør", "kør bare", "selvfølgelig", "grønt lys", "kjør", "absolutt"),
    *("działaj", "śmiało", "zdecydowanie", "zielone światło", "вперёд", "вперед", "давай", "давайте"),
    *("разумеется", "безусловно", "зелёный свет", "зеленый свет", "ehdottomasti", "tottakai", "totta kai"),
    *("anna mennä", "vihreää valoa", "kesinlikle", "elbette", "tabii ki", "yeşil ışık"),
    # Japanese, Chinese, Korean
    *("ぜひ", "是非", "当然", "當然", "물론", "물론입니다", "진행하세요", "배포하세요"),
)

#: Words that make a sentence a plan for what may happen, not an answer: a stop or an undo
#: in it ("If anything goes wrong, roll back", "Roll back if needed") is no "no" at the
#: Complete address.
CONTINGENCIES: frozenset[str] = frozenset(
    """if unless case should otherwise falls sonst si sinon se als om jeśli если""".split()
)

#: A no that is the whole first clause: "No, I don't have any concerns" then says all is
#: well, and reads both ways (``intent._bare_no_then_all_well``).
BARE_NOS: frozenset[str] = frozenset("no nope nah nein nee non nej nei niet nie".split())
#: "Nothing" and its kin: "nothing blocking", "nichts Neues" negate what follows.
NOTHING_WORDS: frozenset[str] = frozenset("nothing nichts rien nada niente niets inget ingenting".split())
