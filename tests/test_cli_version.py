from importlib.metadata import version

import pytest

import dreamllm
from dreamllm.cli import main


def test_version_prints_the_installed_package_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"dreamllm {version('dreamllm')}\n"
    assert dreamllm.__version__ == version("dreamllm")
