"""The command line's conventions: results on stdout and prose on stderr, --json, one line and
exit 1 for a database down or empty, exit 2 for usage errors, --version, help for every option,
and `rollcall config check`."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from service.cli.main import _parser, main
from tests.helpers import SECRET, RunningService


def parsers(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield parser.prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from parsers(child)


def test_every_option_says_what_it_means() -> None:
    missing = [
        f"{prog} {action.dest}"
        for prog, parser in parsers(_parser())
        for action in parser._actions
        if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction))
        and not action.help
    ]
    assert missing == []


def test_help_shows_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["deliveries", "--help"])
    assert done.value.code == 0
    assert "(default: 50)" in capsys.readouterr().out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("rollcall ")


@pytest.mark.parametrize(
    "argv",
    [["deliveries", "--bogus"], ["deliveries", "--from", "last week"], ["doctor", "--hours", "0"]],
)
def test_usage_errors_exit_2(
    argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(SystemExit) as done:
        code = main(argv)
        raise SystemExit(code)
    assert done.value.code == 2
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("command", [["status"], ["deliveries"], ["doctor"], ["status", "--json"]])
def test_database_down_is_one_line_and_exit_1(
    command: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    assert main(command) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("rollcall: cannot connect")


def test_empty_database_is_one_line_and_exit_1(
    new_database: Callable[[], str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", new_database())
    assert main(["deliveries"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "has no rollcall event store" in err


def test_results_on_stdout_as_json(
    start_service: Callable[..., RunningService],
    database_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    start_service()  # creates the store
    monkeypatch.setenv("DATABASE_URL", database_url)
    assert main(["--log-level", "warning", "rebuild", "roster", "--json"]) == 0
    out, _ = capsys.readouterr()
    assert json.loads(out)["rebuilt"][0]["view"] == "roster"
    assert main(["replay", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["quarantined"] == 0
    assert main(["token", "--revoke", "--name", "never-issued"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "no live token is named 'never-issued'" in err


def test_config_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.toml"
    good.write_text(
        f'[intake]\nbody_limit = 2048\n\n[events.spring]\nmode = "hmac-sha256"\n'
        f'secret = "{SECRET}"\nsignature_header = "x-jte-signature"\n\n[events.autumn]\n'
    )
    assert main(["config", "check", str(good)]) == 0
    out = capsys.readouterr().out
    assert "/webhooks/jte/spring" in out and "x-jte-signature" in out
    assert "body_limit = 2048" in out
    assert SECRET not in out
    assert main(["config", "check", str(good), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert {e["slug"]: e["secrets"] for e in summary["events"]} == {"spring": 1, "autumn": 0}
    bad = tmp_path / "bad.toml"
    bad.write_text('[events.spring]\nmode = "rot13"\n')
    assert main(["config", "check", str(bad)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"rollcall: {bad}:") and err.count("\n") == 1
    assert main(["config", "check", str(tmp_path / "missing.toml")]) == 1
