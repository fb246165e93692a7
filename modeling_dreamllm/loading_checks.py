"""Clear errors for damaged DreamLLM checkpoints: unreadable weight files, tensors of the wrong shape, missing or
unexpected tensors. transformers reports these as a bare `SafetensorError`, a `RuntimeError` pointing at a log, or
only a log line (a missing dream projector would load as random weights)."""

from pathlib import Path

from safetensors import SafetensorError, safe_open


class CheckpointError(ValueError):
    """A checkpoint folder that cannot give a complete DreamLLM model; the message names the file or tensor."""


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a model folder (one file or the shards of an index)."""
    return sorted(folder.glob("*.safetensors"))


def unreadable_weights_error(folder: Path, error: Exception) -> CheckpointError:
    """Names the weight file of `folder` that safetensors cannot read (truncated, or not safetensors at all)."""
    for path in weight_files(folder):
        try:
            with safe_open(path, framework="pt") as weights:
                for name in weights.keys():
                    weights.get_slice(name)
        except (SafetensorError, OSError) as file_error:
            return CheckpointError(f"{path.name} in {folder.name}/ cannot be read ({file_error}): the file is "
                                   "truncated or damaged; download or save it again")
    return CheckpointError(f"The weights in {folder.name}/ cannot be read: {error}")


def shape_mismatch_error(folder: Path, expected_shapes: dict[str, tuple[int, ...]]) -> CheckpointError | None:
    """Names the first tensor of `folder` whose shape differs from the one the model's config asks for, if any."""
    for path in weight_files(folder):
        with safe_open(path, framework="pt") as weights:
            for name in weights.keys():
                expected = expected_shapes.get(name)
                found = tuple(weights.get_slice(name).get_shape())
                if expected is not None and expected != found:
                    return CheckpointError(
                        f"{path.name}: tensor {name} has shape {list(found)}, but config.json describes "
                        f"{list(expected)}; the weights and the config are from different models"
                    )
    return None


def incomplete_checkpoint_error(folder_name: str, missing: list[str], unexpected: list[str]) -> CheckpointError | None:
    """An error naming the tensors a checkpoint lacks or holds beyond the model, if there are any."""
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensor(s): {', '.join(sorted(missing)[:8])}")
    if unexpected:
        problems.append(f"{len(unexpected)} tensor(s) the model does not have: {', '.join(sorted(unexpected)[:8])}")
    if not problems:
        return None
    return CheckpointError(
        f"The checkpoint {folder_name} is not a complete DreamLLM model ({'; '.join(problems)}); pass "
        "output_loading_info=True to load it anyway and inspect the report"
    )
