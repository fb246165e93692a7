"""`evaluate`: run a task over a data set, sharded across processes, resumable, and write its report.

Units are split across the processes of an `accelerate launch` by index (unit i goes to process i mod N) and every
unit is seeded by its index, so the predictions, and the scores, do not depend on the number of processes. Each
process appends its predictions to `predictions-rank{R}.jsonl` as they come; a rerun with the same settings skips
the units already predicted. The main process then scores all of them and writes `results.json`.
"""

import contextlib
import hashlib
import json
import os
from importlib import metadata
from pathlib import Path

import torch
from accelerate import PartialState
from tqdm.auto import tqdm

from dreamllm.pipelines.pipeline_dreamllm import TOY_MODEL_PATH, DreamLLMPipeline, resolve_pretrained_folder

from .data import load_samples
from .presets import DEFAULT_PRESETS, Preset, get_preset
from .tasks import COMPREHENSION_TASKS, VizWizTask

SETTINGS_FILE, RESULTS_FILE, PREDICTIONS_GLOB = "settings.json", "results.json", "predictions-rank*.jsonl"
VERSIONED_PACKAGES = ("dreamllm", "torch", "transformers", "diffusers", "accelerate", "pycocoevalcap", "torchmetrics")


def make_task(task: str, preset_name: str | None):
    if task == "text-to-image":
        from .text_to_image import TextToImageTask

        return TextToImageTask()
    if task == "vqa" and preset_name == "vizwiz":
        return VizWizTask()
    return COMPREHENSION_TASKS[task]()


def evaluate(
    task: str,
    pipe,
    data: str,
    output_dir: str | os.PathLike,
    preset: str | None = None,
    batch_size: int = 8,
    limit: int | None = None,
    seed: int = 0,
    circular: bool = False,
    model_name: str | None = None,
    data_options: dict | None = None,
    task_options: dict | None = None,
    **overrides,
) -> dict:
    """
    Evaluates `pipe` (a `DreamLLMPipeline`, or a folder / Hub repo / `None` for the toy model, loaded once the data
    and the output folder are checked) on `task` over `data` and returns the report written to
    `output_dir/results.json`: the scores, the number of samples and of failed ones (each listed with its error), and
    every setting (preset and overrides, seed, data, model and its revision, package versions).

    `preset` names one of `PRESETS` (default: the task's usual benchmark); `overrides` replace its settings
    (`system_prompt`, `prompt`, `post_prompt`, `max_new_tokens`, `num_inference_steps`, ...). `data_options` go to
    `load_samples` (`image_root`, `annotations`, `image_template`, `split`); `task_options` to the task (for
    text-to-image: `clip_model`, `fid_features`). Raises `ValueError` on bad data, settings, or an output folder that
    holds a run with other settings.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a whole number >= 1, got {limit!r}")
    chosen = get_preset(task, preset).with_overrides(**overrides)
    runner = make_task(task, preset)
    samples = load_samples(task, data, **(data_options or {}))[:limit]
    units = runner.units(samples, circular=circular)
    output = Path(output_dir)
    to_load = isinstance(pipe, (str, os.PathLike, type(None)))
    if to_load:  # a Hub model is downloaded here (as from_pretrained would), so its commit is known
        model_name = model_name or model_display_name(pipe)
        pipe = resolve_pretrained_folder(pipe or TOY_MODEL_PATH)
    model_source = pipe if to_load else pipe.config._name_or_path
    settings = run_settings(task, preset or DEFAULT_PRESETS[task], chosen, data, limit, seed, circular,
                            model_name, model_source, task_options)
    state = PartialState(cpu=not torch.accelerator.is_available())
    check_output(output, settings)  # on every process, so that each stops with the same error
    state.wait_for_everyone()
    if state.is_main_process and not (output / SETTINGS_FILE).exists():
        output.mkdir(parents=True, exist_ok=True)
        write_json_atomically(output / SETTINGS_FILE, settings)
    state.wait_for_everyone()
    if to_load:
        pipe = DreamLLMPipeline.from_pretrained(pipe).to(state.device)
    runner.configure(pipe, **(task_options or {}))
    runner.prepare(pipe, chosen, output)
    with quiet_progress(pipe):
        predict_shard(runner, pipe, units, chosen, seed, batch_size, output, state)
    state.wait_for_everyone()
    if state.is_main_process:
        run = {"batch_size": batch_size, "num_processes": state.num_processes}
        write_report(output, runner, units, {**settings, "run": run}, len(samples))
    state.wait_for_everyone()
    return json.loads((output / RESULTS_FILE).read_text(encoding="utf-8"))


def run_settings(task, preset_name, preset: Preset, data, limit, seed, circular, model_name, model_source,
                 task_options) -> dict:
    """Everything that decides the predictions: what makes a rerun in the same folder resumable."""
    return {
        "task": task,
        "preset": preset_name,
        "settings": preset.to_dict(),
        "seed": seed,
        "limit": limit,
        "circular": circular,
        "data": {"name": Path(data).name if Path(data).exists() else data, "sha256": data_fingerprint(data)},
        "model": {"name": model_name or model_display_name(model_source), "revision": model_revision(model_source)},
        "task_options": {k: str(v) for k, v in (task_options or {}).items()},
        "versions": package_versions(),
    }


def data_fingerprint(data: str) -> str | None:
    path = Path(data)
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_display_name(source) -> str:
    """A Hub repo id as given, a local folder by its name (no absolute path is recorded)."""
    if source in (None, "None", ""):
        return "built-in toy model"
    return Path(str(source)).name if Path(str(source)).exists() else str(source)


def model_revision(name) -> str | None:
    """
    The Hub commit of a downloaded model (its snapshot folder), or a fingerprint of a local one's files (names,
    sizes and the JSON configs); `None` names the built-in toy model.
    """
    folder = Path(TOY_MODEL_PATH) if name in (None, "None", "") else Path(str(name))
    if not folder.is_dir():
        try:
            folder = resolve_pretrained_folder(str(name), local_files_only=True)
        except (OSError, ValueError):
            return None
    path = folder.resolve()
    if path.parent.name == "snapshots":
        return path.name
    digest = hashlib.sha256()
    for file in sorted(path.rglob("*")):
        if file.is_file():
            digest.update(f"{file.relative_to(path)}:{file.stat().st_size}".encode())
            if file.suffix == ".json":
                digest.update(file.read_bytes())
    return "local-" + digest.hexdigest()[:16]


def package_versions() -> dict:
    versions = {}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def check_output(output: Path, settings: dict):
    """Checks that `output` is new, empty, or holds a run with the same settings (which this run resumes)."""
    settings_file = output / SETTINGS_FILE
    if settings_file.exists():
        previous = json.loads(settings_file.read_text(encoding="utf-8"))
        changed = sorted(key for key in set(previous) | set(settings) if previous.get(key) != settings.get(key))
        if changed:
            raise ValueError(
                f"output folder {output} holds a run with other settings (differing: {', '.join(changed)}); "
                "use a new --output folder"
            )
        return
    if output.exists() and any(output.iterdir()):
        raise ValueError(f"output folder {output} is not empty and holds no evaluation run")


def read_predictions(output: Path) -> dict[int, dict]:
    """The predictions written so far by any process; a last line cut short by an interruption is ignored."""
    records = {}
    for file in sorted(output.glob(PREDICTIONS_GLOB)):
        for line in file.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            records[record["index"]] = record
    return records


def predict_shard(runner, pipe, units, preset, seed, batch_size, output: Path, state: PartialState):
    done = read_predictions(output)
    mine = [u for u in units if u["index"] % state.num_processes == state.process_index and u["index"] not in done]
    progress = tqdm(total=len(mine), desc=f"{runner.name} (process {state.process_index})",
                    disable=not state.is_local_main_process)
    predictions_file = output / f"predictions-rank{state.process_index}.jsonl"
    drop_cut_last_line(predictions_file)
    with open(predictions_file, "a", encoding="utf-8") as handle:
        for start in range(0, len(mine), batch_size):
            batch = mine[start:start + batch_size]
            for record in runner.predict(pipe, batch, preset, seed):
                handle.write(json.dumps(record) + "\n")
            handle.flush()
            progress.update(len(batch))
    progress.close()


def drop_cut_last_line(path: Path):
    """Removes a last line that an interruption left without its newline, so new records start on their own line."""
    if not path.exists():
        return
    content = path.read_bytes()
    if content and not content.endswith(b"\n"):
        path.write_bytes(content[:content.rfind(b"\n") + 1])


@contextlib.contextmanager
def quiet_progress(pipe):
    """Hides the pipeline's per-call progress bars while the run's own bar counts samples; restores them after."""
    previous = dict(getattr(pipe, "_progress_bar_config", {}))
    pipe.set_progress_bar_config(**{**previous, "disable": True})
    try:
        yield
    finally:
        pipe._progress_bar_config = previous


def write_report(output: Path, runner, units: list[dict], settings: dict, num_samples: int):
    predictions = read_predictions(output)
    records = [predictions[u["index"]] for u in units]
    failed = [{"index": r["index"], "id": r["id"], "error": r["error"]} for r in records if "error" in r]
    report = {
        "task": settings["task"],
        "scores": runner.score(units, records),
        "num_samples": num_samples,
        "num_predictions": len(records),
        "num_failed": len(failed),
        "failed": failed,
        **{key: value for key, value in settings.items() if key != "task"},
    }
    write_json_atomically(output / RESULTS_FILE, report)


def write_json_atomically(path: Path, content: dict):
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
    os.replace(partial, path)
