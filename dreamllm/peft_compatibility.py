"""transformers' adapter API (`add_adapter`, `set_adapter`, `disable_adapters`, `active_adapters`, ...) with peft 0.21.

transformers 5.24 asks for peft >= 0.22.0 in these methods, a version that is not released: a fresh install (peft 0.21.2)
gets `ValueError: The version of PEFT you are using is not compatible`. Its `integrations/peft.py` is that of
transformers 5.23 (which asks for peft >= 0.20.0) but for that one number, so the code runs on peft 0.21. Importing
`dreamllm` lowers the requirement to the peft floor of this package, only on transformers 5.24 and only while the peft
installed is older than what transformers asks for.
"""

import importlib.metadata

from packaging import version
from transformers.integrations import peft as transformers_peft

PEFT_FLOOR = "0.21.0"
"""The oldest peft this package allows (pyproject.toml) and tests."""
TRANSFORMERS_ASKING_FOR_UNRELEASED_PEFT = "5.24"


def allow_released_peft():
    """Lets transformers 5.24's adapter methods run on peft >= `PEFT_FLOOR` (see the module docstring)."""
    transformers_version = version.parse(importlib.metadata.version("transformers"))
    if f"{transformers_version.major}.{transformers_version.minor}" != TRANSFORMERS_ASKING_FOR_UNRELEASED_PEFT:
        return
    installed = version.parse(importlib.metadata.version("peft"))
    if version.parse(PEFT_FLOOR) <= installed < version.parse(transformers_peft.MIN_PEFT_VERSION):
        transformers_peft.MIN_PEFT_VERSION = PEFT_FLOOR
