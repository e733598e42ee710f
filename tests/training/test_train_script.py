"""scripts/train_router.py refuses bad options before reading any data."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.training import script_main


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--ft-init", "missing-dir", "--ft-init"),
        ("--ft-lr", "0", "--ft-lr"),
        ("--ft-lr", "abc", "--ft-lr"),
        ("--ft-epochs", "-1", "--ft-epochs"),
        ("--ft-mmlu-limit", "-5", "--ft-mmlu-limit"),
        ("--everyday", "-1", "--everyday"),
        ("--source-weight", "chat", "--source-weight"),
        ("--source-weight", "chat=-1", "--source-weight"),
        ("--source-weight", "chat=x", "--source-weight"),
        ("--source-weight", "nosuch=2", "--source-weight"),
    ],
)
def test_bad_training_options_exit_2_naming_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str, message: str
) -> None:
    main = script_main("train_router")
    with pytest.raises(SystemExit) as stopped:
        main(["--data-dir", str(tmp_path), "--out", str(tmp_path / "out"), "--finetune", option, value])
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
