"""The `mmit` entry point: every verb has --help, and bad input is one clear line, not a traceback."""
import pytest

from mmit_fast.cli import VERBS, build_parser, main


def test_every_verb_has_help(capsys):
    names = list(build_parser()._subparsers._group_actions[0].choices)
    assert len(names) == len(VERBS) >= 7
    for verb in names:
        with pytest.raises(SystemExit) as e:
            main([verb, "--help"])
        assert e.value.code == 0
        assert f"mmit {verb}" in capsys.readouterr().out


def test_missing_input_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MMIT_DEBUG", raising=False)
    missing = tmp_path / "nope.tar"
    assert main(["inspect", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "Traceback" not in err
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run")]) == 2
    assert "no manifest" in capsys.readouterr().err


def test_debug_env_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("MMIT_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        main(["inspect", str(tmp_path / "nope.tar")])
