"""Every `dreamllm` subcommand's --help ends with examples that use its own name."""

import pytest

from dreamllm.cli import SUBCOMMANDS, build_parser


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_every_subcommand_help_shows_examples(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command, "--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    examples = help_text.split("examples:", 1)
    assert len(examples) == 2, f"dreamllm {command} --help shows no examples"
    assert f"dreamllm {command}" in examples[1] or f"dreamllm.cli {command}" in examples[1]
