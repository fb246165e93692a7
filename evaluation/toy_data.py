"""Local evaluation sets made by the toy world's generator, one per task, to run every task end to end.

    python -m dreamllm.evaluation.toy_data OUTPUT_DIR [--num-samples N]

writes `OUTPUT_DIR/{vqa,caption,pope,multiple-choice,text-to-image}.jsonl` and their pictures under
`OUTPUT_DIR/images/`. The pictures use seeds the toy model's training data does not use.
"""

import argparse
import json
from pathlib import Path

import numpy as np

from dreamllm import toy_world

HELD_OUT_SEED = 20_000


def scenes(num_samples: int, seed: int = HELD_OUT_SEED) -> list:
    return [toy_world.sample_scene(toy_world.sample_rng(seed, index)) for index in range(num_samples)]


def vqa_answers(scene, rng: np.random.Generator) -> list[str]:
    """Ten "human" answers to "What colour is the shape?": mostly the colour, phrased variously, some wrong."""
    others = [c for c in toy_world.COLOUR_NAMES if c != scene.colour]
    phrasings = [scene.colour, f"it is {scene.colour}", f"{scene.colour} {scene.shape}"]
    answers = [phrasings[int(rng.integers(3))] for _ in range(8)]
    return answers + [str(rng.choice(others)) for _ in range(2)]


def task_records(task: str, index: int, scene, image: str, rng: np.random.Generator) -> dict:
    if task == "vqa":
        return {"question": "What colour is the shape?", "answers": vqa_answers(scene, rng)}
    if task in ("caption", "text-to-image"):
        return {"captions": [toy_world.caption(scene, template=t) for t in range(len(toy_world.CAPTION_TEMPLATES))]}
    if task == "pope":
        colour = scene.colour if index % 2 == 0 else str(rng.choice([c for c in toy_world.COLOUR_NAMES if c != scene.colour]))
        return {"question": f"Is there a {colour} shape in the image?", "label": "yes" if index % 2 == 0 else "no"}
    options = [scene.colour, *rng.choice([c for c in toy_world.COLOUR_NAMES if c != scene.colour], 3, replace=False)]
    order = rng.permutation(4)
    letters = "ABCD"
    shuffled = [str(options[i]) for i in order]
    return {"question": "What colour is the shape?", "options": dict(zip(letters, shuffled)),
            "answer": letters[shuffled.index(scene.colour)]}


TOY_TASKS = ("vqa", "caption", "pope", "multiple-choice", "text-to-image")


def write_toy_evaluation_data(output_dir: str | Path, num_samples: int = 12) -> dict[str, Path]:
    """Writes one JSON Lines file per task (same pictures for all) and returns their paths by task."""
    output = Path(output_dir)
    (output / "images").mkdir(parents=True, exist_ok=True)
    pictures = scenes(num_samples)
    for index, scene in enumerate(pictures):
        scene.render().save(output / "images" / f"{index:04d}.png")
    files = {}
    for task in TOY_TASKS:
        rng = np.random.default_rng([HELD_OUT_SEED, TOY_TASKS.index(task)])
        files[task] = output / f"{task}.jsonl"
        with open(files[task], "w", encoding="utf-8") as handle:
            for index, scene in enumerate(pictures):
                image = f"images/{index:04d}.png"
                record = {"id": f"toy-{index}", "image": image, **task_records(task, index, scene, image, rng)}
                handle.write(json.dumps(record) + "\n")
    return files


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir")
    parser.add_argument("--num-samples", type=int, default=12)
    args = parser.parse_args()
    for task, path in write_toy_evaluation_data(args.output_dir, args.num_samples).items():
        print(f"{task}: {path}")


if __name__ == "__main__":
    main()
