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


def test_help_imports_only_the_cli(tmp_path):
    """`mmit --help` builds stubs from the table: no verb module, no torch, no optional extra."""
    import subprocess
    import sys

    code = ("import sys; from mmit_fast.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'yaml', 'av', 'webdataset')"
            " or m.endswith('command'))\nprint('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60).stdout
    assert "HEAVY []" in out, out[-2000:]


def test_a_verb_builds_only_its_own_parser():
    names = {a.dest: a for a in build_parser(["synth", "x"])._subparsers._group_actions[0]._choices_actions}
    full = build_parser(["synth", "x"])._subparsers._group_actions[0].choices
    assert set(full) == {v for v, _, _ in VERBS}
    assert any(a.option_strings == ["--num-videos"] for a in full["synth"]._actions)
    assert not any(a.option_strings == ["--data"] for a in full["train"]._actions)   # a stub
    assert names["train"].help == next(h for v, _, h in VERBS if v == "train")


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
