"""The drill's secrets-and-access scenario, at CI size, and proof that its log scan bites."""

from __future__ import annotations

from service.drill import QUICK, run
from service.drill.access import access
from service.drill.harness import Workspace
from tests.helpers import drill_directory


def test_access_holds() -> None:
    with drill_directory() as root:
        [finding] = run(["access"], QUICK, root=root)
    assert finding.held, finding.broken
    assert finding.bad_inputs >= 16
    assert "none found" in finding.figures


def test_the_log_scan_finds_a_leaked_secret_token_and_body() -> None:
    with drill_directory() as root:
        ws = Workspace(root)
        ws.start()
        try:
            ws.tokens.add("rc_planted-token")
            (root / "leaky.log").write_text(
                f"fine line\nsecret {ws.default.secrets[0]}\nauth rc_planted-token\n"
                '{"event": "AttendeeRegistered", "attendee": {"id": "a-1"}}\n'
            )
            finding = access(ws, QUICK)
        finally:
            ws.close()
    assert not finding.held
    assert any("leaky.log:2 holds a secret" in b for b in finding.broken), finding.broken
    assert any("leaky.log:3 holds a secret or token" in b for b in finding.broken)
    assert any("leaky.log:4 holds a raw body" in b for b in finding.broken)
