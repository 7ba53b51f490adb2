"""The `surgeon` command."""
import pytest

from surgeon.cli import main


def test_slim_prints_report_and_table(capsys):
    main(["slim", "resnet18", "--size", "32"])
    out = capsys.readouterr().out
    assert "Report(OK" in out and "params" in out and "keep" in out


def test_analyze(capsys):
    main(["analyze", "squeezenet1_1", "--size", "64"])
    assert "reaches the model output" in capsys.readouterr().out


def test_unknown_model_is_a_clean_error():
    with pytest.raises(SystemExit, match="no model 'nosuch'"):
        main(["slim", "nosuch"])
