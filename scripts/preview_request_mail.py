"""Render the request mail as its owner sees it: docs/request-mail-<lang>.html and a
screenshot of each in headless Chromium (English light, German dark), for review and docs.

Run: .venv/bin/python scripts/preview_request_mail.py
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from rc_mta.config import Settings
from rc_mta.request_mail import LANGUAGES, ReplyAddresses, RequestContext, compose
from rc_mta.store import Request

DOCS = Path(__file__).resolve().parent.parent / "docs"
NOW = datetime(2026, 11, 30, 9, 0, tzinfo=UTC).timestamp()
TITLES = {
    "en": "Approve deploy of billing-service 2.4 to production",
    "de": "Freigabe: billing-service 2.4 in Produktion",
    "fr": "Valider le déploiement de billing-service 2.4 en production",
}


def main() -> int:
    chromium = shutil.which("chromium")
    addresses = ReplyAddresses(
        complete="rc+c7q3example@reply.example.com",
        fail="rc+f7q3example@reply.example.com",
        reply_to="rc+d7q3example@reply.example.com",
        message_id="<d7q3example@reply.example.com>",
    )
    context = RequestContext(
        context_title="Release 2026.12 / Phase: Production",
        link="https://release.example.com/#/tasks/Release1234-Phase2-Task3",
        requested_by="Bob Builder (release manager)",
        due=datetime(2026, 12, 2, 17, 0, tzinfo=UTC),
        description="Deploys billing-service 2.4.0 to the EU and US clusters.\n\nRollback: redeploy 2.3.7.",
    )
    for language in LANGUAGES:
        request = Request(
            id="0123456789abcdef", task_id="t-fe149bf478", owner="alice@example.com", title=TITLES[language],
            created_at=NOW, expires_at=NOW + 7 * 86400, revoked_at=None, message_id=addresses.message_id,
        )  # fmt: skip
        message = compose(Settings(), request, addresses, NOW, context=context, language=language)
        html_part = message.get_body(("html",))
        assert html_part is not None
        page = DOCS / f"request-mail-{language}.html"
        page.write_text(html_part.get_content(), encoding="utf-8")
        if chromium and language in ("en", "de"):
            dark = language == "de"
            png = DOCS / f"request-mail-{language}{'-dark' if dark else ''}.png"
            command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
            command += ["--window-size=680,860", f"--screenshot={png}", *(["--force-dark-mode"] if dark else [])]
            subprocess.run([*command, page.as_uri()], capture_output=True, timeout=120, check=True)
            print(png)
        print(page)
    if not chromium:
        print("no chromium: pages written, no screenshots", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
