"""Turning DreamLLM checkpoints of other shapes into the one-folder layout every entry point loads.

- `convert_original_checkpoint`: an original DreamLLM release (the authors' layout) into the converted layout.
- `build_from_components`: an untrained DreamLLM from a Llama/Vicuna, a CLIP vision tower and a Stable Diffusion 2.x.
- `push_folder_to_hub`: upload a converted folder.
"""

from .components import build_from_components
from .convert import convert_original_checkpoint
from .hub import push_folder_to_hub

__all__ = ["build_from_components", "convert_original_checkpoint", "push_folder_to_hub"]
