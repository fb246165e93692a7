"""Text-to-image: FID and CLIP score, N drawings per caption with the best one chosen by CLIP score.

Each sample draws with one of its captions (caption `index mod #captions`: a fixed pairing, where the original drew a
random caption per process), `num_images_per_caption` times with seeds derived from the sample index; the drawing
whose CLIP score against that caption is highest is kept as `images/{index:06d}.png`. FID compares the kept drawings
with the samples' real pictures, both resized (shorter side) and centre-cropped to `fid_image_size` (256, as the
paper). Both metrics are torchmetrics': the CLIP scorer is any CLIP model (default ViT-L/14, the paper's selector),
the FID features Inception-v3 (torch-fidelity's weights, downloaded on first use), the evaluated model's own CLIP
vision tower (`vision-tower`) or any CLIP vision model folder.
"""

import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path

import PIL.Image
import torch
from torch import nn

from .data import load_image
from .presets import Preset
from .tasks import check_texts, sample_generator

DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


class ClipImageFeatures(nn.Module):
    """A CLIP vision tower as an FID feature extractor: uint8 images `(N, 3, H, W)` to pooled features `(N, D)`."""

    def __init__(self, vision_model: nn.Module, image_size: int, mean=CLIP_MEAN, std=CLIP_STD):
        super().__init__()
        self.vision_model, self.image_size = vision_model.eval(), image_size
        self.num_features = vision_model.config.hidden_size
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = images.float() / 255 if images.dtype == torch.uint8 else images.float()
        pixels = nn.functional.interpolate(pixels, size=(self.image_size, self.image_size), mode="bilinear",
                                           antialias=True, align_corners=False)
        pixel_values = ((pixels - self.mean) / self.std).to(next(self.vision_model.parameters()).dtype)
        return self.vision_model(pixel_values=pixel_values).pooler_output.float()


class ClipEmbeddings(nn.Module):
    """
    A `CLIPModel` whose `get_image_features` / `get_text_features` return the projected embeddings as tensors, as
    torchmetrics' CLIP score expects (transformers 5 returns them as the `pooler_output` of a model output).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.config = model.eval(), model.config

    def get_image_features(self, *args, **kwargs) -> torch.Tensor:
        return embeddings(self.model.get_image_features(*args, **kwargs))

    def get_text_features(self, *args, **kwargs) -> torch.Tensor:
        return embeddings(self.model.get_text_features(*args, **kwargs))


def embeddings(output) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def clip_vision_features(name: str) -> ClipImageFeatures:
    """The vision tower of a CLIP model folder or repo (a `CLIPModel` or a `CLIPVisionModel`)."""
    from transformers import AutoConfig, CLIPModel, CLIPVisionModel

    config = AutoConfig.from_pretrained(name)
    if config.model_type == "clip":
        vision = CLIPModel.from_pretrained(name).vision_model
        return ClipImageFeatures(vision, config.vision_config.image_size)
    return ClipImageFeatures(CLIPVisionModel.from_pretrained(name).vision_model, config.image_size)


def pipeline_vision_features(pipe) -> ClipImageFeatures:
    """The evaluated DreamLLM's own CLIP vision tower, with its image processor's normalisation."""
    processor = pipe.processor.image_processor
    tower = pipe.model.model.vision_tower
    return ClipImageFeatures(tower.vision_model if hasattr(tower, "vision_model") else tower,
                             tower.config.image_size, processor.image_mean, processor.image_std)


def fid_metric(feature):
    """torchmetrics' FID on `feature` (2048: Inception-v3 pool3, which needs torch-fidelity)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    return FrechetInceptionDistance(feature=feature, reset_real_features=True)


def fid_tensor(image: PIL.Image.Image, size: int) -> torch.Tensor:
    """`image` resized bilinearly (shorter side `size`) and centre-cropped to `size` x `size`, as uint8 (3, H, W)."""
    width, height = image.size
    scale = size / min(width, height)
    resized = image.convert("RGB").resize((max(size, round(width * scale)), max(size, round(height * scale))),
                                          PIL.Image.BILINEAR)
    left, top = (resized.width - size) // 2, (resized.height - size) // 2
    cropped = resized.crop((left, top, left + size, top + size))
    return torch.frombuffer(bytearray(cropped.tobytes()), dtype=torch.uint8).view(size, size, 3).permute(2, 0, 1)


class TextToImageTask:
    """Draws each sample's caption N times, keeps the best drawing by CLIP score, then scores FID and CLIP score."""

    name = "text-to-image"

    def __init__(self):
        self.clip_model, self.fid_features, self._clip = DEFAULT_CLIP_MODEL, "inception", None
        self._pipe, self.output, self.fid_image_size, self._fid_feature = None, None, 256, None

    def prepare(self, pipe, preset: Preset, output: Path):
        """Where the drawings go and at what size FID compares them."""
        if not self.uses_clip and preset.num_images_per_caption > 1:
            raise ValueError("choosing the best of several drawings needs a CLIP model: --clip-model is none")
        if self.fid_features == "inception" and importlib.util.find_spec("torch_fidelity") is None:
            raise ValueError(
                "FID on Inception-v3 needs torch-fidelity: pip install torch-fidelity (its weights download on first "
                "use), or pass --fid-features vision-tower or a CLIP model folder"
            )
        self._pipe, self.output, self.fid_image_size = pipe, output, preset.fid_image_size
        self._fid_feature = self.fid_feature()  # load the scorers now: a bad name fails before any drawing
        if self.uses_clip:
            self.clip_scorer()

    @property
    def uses_clip(self) -> bool:
        return self.clip_model != "none"

    def configure(self, pipe, clip_model: str | None = None, fid_features: str | None = None):
        self.clip_model = clip_model or self.clip_model
        self.fid_features = fid_features or self.fid_features

    def units(self, samples: list[dict], circular: bool = False) -> list[dict]:
        if circular:
            raise ValueError("--circular is for the multiple-choice task, not text-to-image")
        for sample in samples:
            check_texts(sample, "captions")
        return [{**s, "caption": s["captions"][s["index"] % len(s["captions"])]} for s in samples]

    def clip_scorer(self):
        if self._clip is None:
            from torchmetrics.multimodal.clip_score import CLIPScore
            from transformers import CLIPModel, CLIPProcessor

            if not Path(self.clip_model).is_dir():
                print(f"text-to-image: CLIP scorer {self.clip_model} (downloaded by transformers on first use)",
                      file=sys.stderr)
            name = self.clip_model
            self._clip = CLIPScore(model_name_or_path=lambda: (ClipEmbeddings(CLIPModel.from_pretrained(name)),
                                                               CLIPProcessor.from_pretrained(name)))
        return self._clip

    def clip_score(self, image: PIL.Image.Image, caption: str) -> float:
        scorer = self.clip_scorer()
        pixels = torch.frombuffer(bytearray(image.convert("RGB").tobytes()), dtype=torch.uint8)
        score = scorer(pixels.view(image.height, image.width, 3).permute(2, 0, 1), caption).item()
        scorer.reset()
        return score

    def predict(self, pipe, units: Sequence[dict], preset: Preset, seed: int) -> list[dict]:
        """
        Draws, selects and saves each unit's picture; a unit whose real picture does not load or whose drawing fails
        gets an `error` record.
        """
        records, ready = [], []
        for unit in units:
            try:
                load_image(unit["image"])
                ready.append(unit)
            except OSError as error:
                records.append(self.failure(unit, error))
        records.extend(self.draw_and_select(pipe, ready, preset, seed))
        return sorted(records, key=lambda record: record["index"])

    def draw_and_select(self, pipe, units, preset: Preset, seed: int) -> list[dict]:
        if not units:
            return []
        try:
            drawings = self.draw(pipe, units, preset, seed)
        except (ValueError, RuntimeError) as error:
            if len(units) == 1:
                return [self.failure(units[0], error)]
            return [record for unit in units for record in self.draw_and_select(pipe, [unit], preset, seed)]
        (self.output / "images").mkdir(exist_ok=True)
        return [self.select(unit, images, self.output) for unit, images in zip(units, drawings)]

    def failure(self, unit: dict, error: Exception) -> dict:
        return {"index": unit["index"], "id": unit["id"], "caption": unit["caption"], "error": str(error)}

    def draw(self, pipe, units, preset: Preset, seed: int) -> list[list[PIL.Image.Image]]:
        draws = preset.num_images_per_caption
        images = pipe.text_to_image(
            [unit["caption"] for unit in units for _ in range(draws)],
            num_inference_steps=preset.num_inference_steps, guidance_scale=preset.guidance_scale,
            generator=[sample_generator(seed, unit["index"], draw) for unit in units for draw in range(draws)],
        ).images
        return [images[i * draws:(i + 1) * draws] for i in range(len(units))]

    def select(self, unit: dict, images: list[PIL.Image.Image], output: Path) -> dict:
        scores = [self.clip_score(image, unit["caption"]) for image in images] if self.uses_clip else [None]
        best = max(range(len(images)), key=scores.__getitem__) if self.uses_clip else 0
        relative = f"images/{unit['index']:06d}.png"
        partial = output / (relative + ".partial.png")
        images[best].save(partial)
        partial.replace(output / relative)
        return {"index": unit["index"], "id": unit["id"], "caption": unit["caption"], "image": relative,
                "clip_scores": scores, "chosen": best}

    def fid_feature(self):
        if self.fid_features == "inception":
            print("text-to-image: FID on Inception-v3 (torch-fidelity downloads its weights on first use)",
                  file=sys.stderr)
            return 2048
        if self.fid_features == "vision-tower":
            return pipeline_vision_features(self._pipe)
        return clip_vision_features(self.fid_features)

    def score(self, units: list[dict], records: list[dict]) -> dict:
        """FID of the kept drawings against the real pictures, and their mean CLIP score (a failed sample scores 0)."""
        size, output = self.fid_image_size, self.output
        fid = fid_metric(self._fid_feature)
        drawn = [(u, r) for u, r in zip(units, records) if "error" not in r]
        for unit, record in drawn:
            fid.update(fid_tensor(load_image(unit["image"]), size).unsqueeze(0), real=True)
            fid.update(fid_tensor(load_image(output / record["image"]), size).unsqueeze(0), real=False)
        scores = {"fid_num_images": len(drawn)}
        if self.uses_clip:
            chosen = [max(r["clip_scores"]) if "error" not in r else 0.0 for r in records]
            scores["clip_score"] = sum(chosen) / len(chosen)
        if len(drawn) >= 2:
            scores["fid"] = fid.compute().item()
        return scores
