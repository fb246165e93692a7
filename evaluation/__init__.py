"""Benchmarks as the DreamLLM paper ran them: VQA, captions, POPE, multiple choice and text-to-image FID.

```python
from dreamllm import DreamLLMPipeline
from dreamllm.evaluation import evaluate

report = evaluate("vqa", DreamLLMPipeline.from_pretrained(), "vqa.jsonl", "runs/vqa", preset="vqav2")
report["scores"]["accuracy"]
```
"""

from .data import REQUIRED_FIELDS, load_samples
from .presets import PRESETS, TASKS, Preset, get_preset
from .runner import evaluate

__all__ = ["PRESETS", "REQUIRED_FIELDS", "TASKS", "Preset", "evaluate", "get_preset", "load_samples"]
