"""Generated docs stay in step with the code and the tests: a stale page fails here."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"
sys.path.insert(0, str(DOCS))

import gen_api  # noqa: E402
import gen_models  # noqa: E402


def test_api_reference_is_current():
    assert gen_api.OUT.read_text() == gen_api.render(), "docs/api.md is stale: run python docs/gen_api.py"


def test_api_reference_covers_every_public_name():
    import surgeon

    text = gen_api.OUT.read_text()
    for name in surgeon.__all__:
        assert f"`surgeon.{name}`" in text, name


def test_models_table_is_current():
    numbers = json.loads(gen_models.NUMBERS.read_text())
    assert gen_models.DOC.read_text() == gen_models.render(gen_models.DOC.read_text(), numbers), \
        "docs/models.md is stale: run python docs/gen_models.py"


def test_models_table_lists_every_swept_model():
    names, _ = gen_models.sweep(*gen_models.CNN_TEST)
    assert len(names) == 68 and set(names) <= set(json.loads(gen_models.NUMBERS.read_text()))
    assert "llama-gqa" in gen_models.DOC.read_text() and "maxvit_t" in gen_models.DOC.read_text()


def test_cli_page_names_every_command_and_option():
    from surgeon.cli.args import parser

    text = (DOCS / "cli.md").read_text()
    commands = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in commands.choices.items():
        assert f"surgeon {name}" in text, name
        for action in sub._actions:
            for option in action.option_strings:
                assert option in text or option in ("-h", "-q"), f"surgeon {name} {option}"
