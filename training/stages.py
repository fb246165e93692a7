"""DreamLLM's three training stages as presets of what trains.

- Stage I (alignment): only the vision projector, the dream queries and the dream projector train.
- Stage II (I-GPT pretraining): the language model and its head train too.
- Stage III (supervised fine-tuning): as stage II, on conversations (`{"messages": ...}` records).

The vision tower, and the UNet and VAE (never part of the model), stay frozen in every stage.
"""

from dataclasses import dataclass

from torch import nn

PROJECTOR_MODULES = ("model.vision_projector", "model.dream_queries", "model.dream_projector")
LANGUAGE_MODEL_MODULES = ("model.language_model", "lm_head")


@dataclass(frozen=True)
class TrainingStage:
    """
    A training-stage preset.

    Args:
        number (`int`): 1, 2 or 3.
        description (`str`): What the stage is for.
        trainable_modules (`tuple[str, ...]`): Names of the submodules of [`DreamLLMForCausalLM`] that train.
        learning_rate (`float`): Default peak learning rate of full training.
        expects_chat_data (`bool`): Whether the stage is meant for conversations.
    """

    number: int
    description: str
    trainable_modules: tuple[str, ...]
    learning_rate: float
    expects_chat_data: bool = False

    @property
    def trains_language_model(self) -> bool:
        return "model.language_model" in self.trainable_modules


STAGES = {
    1: TrainingStage(1, "alignment: projectors and dream queries", PROJECTOR_MODULES, learning_rate=1e-3),
    2: TrainingStage(2, "pretraining: + language model", PROJECTOR_MODULES + LANGUAGE_MODEL_MODULES, learning_rate=2e-5),
    3: TrainingStage(
        3, "instruction tuning on conversations", PROJECTOR_MODULES + LANGUAGE_MODEL_MODULES, learning_rate=2e-5,
        expects_chat_data=True,
    ),
}


def get_stage(stage: int | TrainingStage) -> TrainingStage:
    """The preset of stage 1, 2 or 3 (a [`TrainingStage`] is returned as is)."""
    if isinstance(stage, TrainingStage):
        return stage
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {sorted(STAGES)}, got {stage!r}")
    return STAGES[stage]


def apply_stage(model: nn.Module, stage: int | TrainingStage) -> TrainingStage:
    """Freezes `model` (a [`DreamLLMForCausalLM`]) except the stage's trainable modules; returns the stage."""
    stage = get_stage(stage)
    model.requires_grad_(False)
    for name in stage.trainable_modules:
        model.get_submodule(name).requires_grad_(True)
    return stage


__all__ = ["STAGES", "TrainingStage", "apply_stage", "get_stage"]
