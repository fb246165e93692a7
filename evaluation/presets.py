"""The original DreamLLM evaluation prompts and decoding settings, one preset per benchmark.

A comprehension prompt is built as the original `vqa_inference.py` built it (Vicuna v1.1):
`{chat_system} USER: {system_prompt}<image>{question}{prompt} ASSISTANT: {post_prompt}`. The original decoded with
beam search 5 on most benchmarks; the pipeline decodes greedily (it has no beam search), which every preset records.
"""

from dataclasses import asdict, dataclass, field, replace

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


@dataclass(frozen=True)
class Preset:
    """Everything that decides what the model is asked and how it decodes, for one benchmark."""

    task: str
    system_prompt: str = ""
    prompt: str = ""
    post_prompt: str = ""
    max_new_tokens: int = 16
    num_inference_steps: int = 150
    guidance_scale: float = 2.0
    num_images_per_caption: int = 1
    fid_image_size: int = 256
    note: str = ""
    decoding: dict = field(default_factory=lambda: {"do_sample": False})

    def with_overrides(self, **overrides) -> "Preset":
        """This preset with the settings in `overrides` that are not `None` replaced."""
        unknown = set(overrides) - set(asdict(self))
        if unknown:
            raise ValueError(f"unknown preset setting(s): {', '.join(sorted(unknown))}")
        return replace(self, **{name: value for name, value in overrides.items() if value is not None})

    def to_dict(self) -> dict:
        return asdict(self)


GREEDY_NOTE = "the original used beam search 5; the pipeline decodes greedily"
PRESETS: dict[str, Preset] = {
    "coco-caption": Preset(
        "caption", system_prompt="Based on the image, give the image caption briefly.",
        prompt="Please summarize object in one sentence within 10 words.", post_prompt="The image depicts",
        max_new_tokens=32, note=GREEDY_NOTE,
    ),
    "okvqa": Preset(
        "vqa", prompt="Please provide an accurate and brief answer within one word.",
        post_prompt="The short answer '(one word)' is:", max_new_tokens=10, note=GREEDY_NOTE,
    ),
    "vqav2": Preset(
        "vqa", prompt="Please provide an accurate and brief answer within one word.",
        post_prompt="The short answer '(one word)' is:", max_new_tokens=10,
        note=GREEDY_NOTE + "; prompt as the original's OKVQA one",
    ),
    "vizwiz": Preset(
        "vqa", prompt="Please provide an accurate and brief answer within one word.",
        post_prompt="The short answer '(one word)' is:", max_new_tokens=10,
        note=GREEDY_NOTE + "; a first pass asks 'Is the answer can be known?', a 'no' gives 'unanswerable'",
    ),
    "pope": Preset(
        "pope", system_prompt="Based on the image, please objectively and accurately indicate whether the object exists.",
        post_prompt="The answer is:", max_new_tokens=8,
    ),
    "mmbench": Preset(
        "multiple-choice", post_prompt="The answer is:", max_new_tokens=8,
        note=GREEDY_NOTE + "; options are appended to the question",
    ),
    "coco-fid": Preset("text-to-image", num_inference_steps=150, guidance_scale=2.0, num_images_per_caption=8),
    "lncoco-fid": Preset(
        "text-to-image", num_inference_steps=100, guidance_scale=5.0,
        note="the original's LN-COCO settings are unclear (function defaults 5.0 / 100 steps)",
    ),
}
DEFAULT_PRESETS = {"vqa": "vqav2", "caption": "coco-caption", "pope": "pope", "multiple-choice": "mmbench",
                   "text-to-image": "coco-fid"}
TASKS = tuple(DEFAULT_PRESETS)


def get_preset(task: str, name: str | None = None) -> Preset:
    """The preset `name` (default: the task's usual benchmark), which must be one of `task`'s presets."""
    if task not in DEFAULT_PRESETS:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    name = name or DEFAULT_PRESETS[task]
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    if PRESETS[name].task != task:
        raise ValueError(f"preset {name!r} is for the {PRESETS[name].task} task, not {task}")
    return PRESETS[name]


def comprehension_prompt(preset: Preset, question: str) -> str:
    """The full text prompt of one comprehension sample, with one `<image>` placeholder."""
    text = f"{VICUNA_SYSTEM} USER: {preset.system_prompt}<image>{question}{preset.prompt} ASSISTANT:"
    return f"{text} {preset.post_prompt}" if preset.post_prompt else text
