"""What the dashboard tests share: a seeded journal, its figures worked out by hand from the
seed, and the checks a served dashboard must pass over HTTP whatever integration serves it."""

from __future__ import annotations

import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

import requests

from x402gate.dashboard import COOKIE_NAME
from x402gate.stores.journal import JournalRow

TOKEN = "dashboard-token-0123456789abcdef"
PATH = "/x402/dashboard"
NETWORK = "eip155:84532"
ASSET = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
PAYERS = ["0x" + f"{n:02x}" * 20 for n in range(0xA1, 0xAD)]  # 12 payers
ROUTES = ["GET /weather", "POST /v1/chat"]


@dataclass(frozen=True, slots=True)
class Seed:
    """The rows written and what a reader of the dashboard should find."""

    rows: list[JournalRow]
    earned_by_route: dict[str, int]
    earned_by_payer: dict[str, int]
    requests: int
    refused: int
    errors: int

    def top_payers(self, n: int = 10) -> list[tuple[str, int]]:
        """The ``n`` payers who paid most, ties by address."""
        return sorted(self.earned_by_payer.items(), key=lambda item: (-item[1], item[0]))[:n]


def seed_journal(store: Any, *, count: int = 36, payers: int = 3) -> Seed:
    """Write ``count`` rows to ``store``'s journal, one every two hours back from an hour ago
    (36: three days; 359: the 30 days the dashboard shows by default): paid calls on two routes
    by ``payers`` payers at various prices, plus refusals and failures."""
    now = time.time()
    rows: list[JournalRow] = []
    for n in range(count):
        outcome = "refused" if n % 9 == 4 else "error" if n % 12 == 7 else "settled"
        rows.append(
            JournalRow(
                id=f"row-{n}",
                time=now - 3600 - n * 7200,
                route=ROUTES[n % 2],
                payer=PAYERS[n % payers] if outcome == "settled" or n % 2 else "",
                amount=1000 * (1 + n % 5) if outcome == "settled" else 0,
                asset=ASSET,
                network=NETWORK,
                outcome=outcome,
                latency=0.01 * (n + 1),
                scheme="exact",
            )
        )
    for row in rows:
        assert store.journal_append(row)
    earned_route: dict[str, int] = {}
    earned_payer: dict[str, int] = {}
    for row in rows:
        if row.outcome == "settled":
            earned_route[row.route] = earned_route.get(row.route, 0) + row.amount
            earned_payer[row.payer] = earned_payer.get(row.payer, 0) + row.amount
    return Seed(
        rows=rows,
        earned_by_route=earned_route,
        earned_by_payer=earned_payer,
        requests=sum(row.outcome == "settled" for row in rows),
        refused=sum(row.outcome == "refused" for row in rows),
        errors=sum(row.outcome == "error" for row in rows),
    )


def check_served_dashboard(base_url: str, seed: Seed, *, secure: bool = False) -> None:
    """What every integration must do at ``base_url + PATH``: refuse without the token (page,
    JSON and wrong tokens), answer the figures to the bearer, sign a browser in with a cookie
    that is not the token, and refuse a sign-in posted from another site."""
    url = base_url + PATH
    host = urllib.parse.urlsplit(base_url).netloc
    with requests.Session() as http:
        # Without the token: the sign-in form, never a figure; JSON readers get a bearer 401.
        page = http.get(url, headers={"Accept": "text/html"}, timeout=10)
        assert page.status_code == 401
        assert 'name="token"' in page.text and "data-figure" not in page.text
        assert "default-src 'none'" in page.headers["Content-Security-Policy"]
        refused = http.get(url, params={"format": "json"}, timeout=10)
        assert refused.status_code == 401 and refused.json() == {"error": "unauthorized"}
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
        wrong = http.get(url, headers={"Authorization": f"Bearer {TOKEN[:-1]}x"}, timeout=10)
        assert wrong.status_code == 401
        forged = http.get(url, headers={"Cookie": f"{COOKIE_NAME}=9999999999.{'0' * 64}"})
        assert forged.status_code == 401

        # With the bearer token: the report's figures, as JSON.
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        answer = http.get(url, params={"format": "json"}, headers=bearer, timeout=10)
        assert answer.status_code == 200, answer.text
        data = answer.json()
        routes = {line["route"]: int(line["earned"]) for line in data["by_route"]}
        assert routes == seed.earned_by_route
        top = [(line["payer"], int(line["earned"])) for line in data["top_payers"]]
        assert top == seed.top_payers()
        overall = data["overall"]
        assert (overall["requests"], overall["refused"], overall["errors"]) == (
            seed.requests,
            seed.refused,
            seed.errors,
        )
        html = http.get(url, headers=bearer, timeout=10)
        assert html.status_code == 200
        assert html.headers["Content-Type"].startswith("text/html")
        assert f'data-name="{ROUTES[0]}"' in html.text

        # A sign-in posted from another site, or with no origin at all, is refused.
        form = {"token": TOKEN}
        cross = http.post(url, data=form, headers={"Origin": "https://evil.test"}, timeout=10)
        assert cross.status_code == 403 and "Set-Cookie" not in cross.headers
        bare = http.post(url, data=form, timeout=10, allow_redirects=False)
        assert bare.status_code == 403
        bad = http.post(
            url, data={"token": "not-the-token"}, headers={"Origin": f"http://{host}"}, timeout=10
        )
        assert bad.status_code == 401 and "Set-Cookie" not in bad.headers

        # The browser's sign-in: a cookie that opens the page and is not the token.
        signed = http.post(
            url, data=form, headers={"Origin": f"http://{host}"}, allow_redirects=False, timeout=10
        )
        assert signed.status_code == 303, signed.text
        assert urllib.parse.urlsplit(signed.headers["Location"]).path == PATH
        cookie = signed.headers["Set-Cookie"]
        attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
        assert {"httponly", "samesite", "path"} <= attributes
        assert "SameSite=Strict" in cookie
        assert ("secure" in attributes) is secure
        assert TOKEN not in cookie
        value = cookie.split(";")[0]
        opened = requests.get(url, headers={"Cookie": value, "Accept": "text/html"}, timeout=10)
        assert opened.status_code == 200
        assert 'id="overall"' in opened.text
