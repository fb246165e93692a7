"""`dreamllm generate`: write a document of text and images from a prompt, as `index.html`, `document.md` and PNGs.

The text is printed as it is written and a line per image as it is saved (`--quiet` prints nothing but errors).
"""

import argparse
import html
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import diffusers.utils.logging
import PIL.Image
import torch
import transformers.utils.logging

from dreamllm.file_utils import write_file_atomically
from dreamllm.processing.images import open_image

from .pipeline_dreamllm import DreamLLMPipeline
from .streaming import DocumentDone, ImageDone, ImageStarted, TextDelta

EXAMPLES = """examples:
  dreamllm generate "Show me a red circle and then a blue triangle."
  dreamllm generate --image photo.png "What colour is the shape?" --max-images 0
  dreamllm generate "Draw a green square." --model ./my-dreamllm --seed 0 --steps 50 --output square/
"""
LIBRARY_LOGGING = (transformers.utils.logging, diffusers.utils.logging)
PAGE_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem;line-height:1.5;"
    "color:#222}h1{font-size:1.3rem}.prompt{background:#f3f3f3;padding:.6rem .9rem;border-radius:.4rem}"
    "img{display:block;max-width:100%;width:256px;image-rendering:pixelated;margin:1rem 0}"
    "table{border-collapse:collapse;font-size:.9rem;margin-top:2rem}td,th{border:1px solid #ccc;"
    "padding:.25rem .6rem;text-align:left}"
)

DTYPES = {"auto": None, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def add_arguments(parser: argparse.ArgumentParser):
    """Declares the arguments of `dreamllm generate`."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EXAMPLES
    parser.add_argument("prompt", metavar="PROMPT", help="What to write about; it becomes the user turn of the chat.")
    parser.add_argument(
        "--model", metavar="DIR_OR_REPO",
        help="A saved DreamLLM pipeline: a local folder or a Hub repo id (default: the built-in toy-world model).",
    )
    parser.add_argument(
        "--image", metavar="PATH", dest="images", action="append", type=Path, default=[],
        help="An image for the model to read (repeat for several; before or after PROMPT).",
    )
    parser.add_argument("--output", metavar="DIR", type=Path, default=Path("dreamllm-output"),
                        help="Folder for index.html, document.md and the PNG images (default: %(default)s).")
    parser.add_argument("--seed", metavar="N", type=whole_number(0), help="Seed of all randomness (default: random).")
    parser.add_argument("--steps", metavar="N", type=whole_number(1), default=50,
                        help="Denoising steps per image (default: %(default)s).")
    parser.add_argument("--guidance", metavar="X", type=non_negative_number, default=7.5,
                        help="Classifier-free guidance scale of the images (default: %(default)s).")
    parser.add_argument("--max-new-tokens", metavar="N", type=whole_number(1), default=256,
                        help="Most tokens the model writes (default: %(default)s).")
    parser.add_argument("--max-images", metavar="N", type=whole_number(0), default=4,
                        help="Most images in the document (default: %(default)s).")
    parser.add_argument("--device", type=device_name, default="cuda" if torch.cuda.is_available() else "cpu",
                        help="Where to run: cpu, cuda, cuda:N, mps, ... (default: %(default)s).")
    parser.add_argument("--quiet", action="store_true", help="Print nothing but errors (for scripts).")
    parser.add_argument("--dtype", choices=DTYPES, default="auto",
                        help="dtype of every component (default: auto, the dtype the model was saved in).")
    # A bad argument is reported in one line, like the errors of `run`, rather than after the usage text.
    parser.error = lambda message: parser.exit(2, f"{parser.prog}: error: {message}\n")


@dataclass(frozen=True)
class Settings:
    """What a document was written with, shown at the end of its page."""

    model: str
    seed: int
    steps: int
    guidance: float
    scheduler: str

    def rows(self) -> list[tuple[str, str]]:
        return [("model", self.model), ("seed", str(self.seed)), ("steps", str(self.steps)),
                ("guidance", str(self.guidance)), ("scheduler", self.scheduler)]


def run(args: argparse.Namespace) -> int:
    """Checks the input, loads the pipeline, prints the document as it is written and saves it."""
    say = (lambda *parts, **options: None) if args.quiet else print
    check_output_folder(args.output)
    check_device_available(args.device)
    images = [open_image(path) for path in args.images]
    say(f"Loading {args.model or 'the built-in toy-world model'} ...", flush=True)
    with quiet_libraries(progress_bars=not args.quiet):
        pipe = load_pipeline(args.model, args.device, DTYPES[args.dtype])
    pipe.set_progress_bar_config(disable=True)
    seed = torch.Generator().seed() if args.seed is None else args.seed
    events = pipe.stream(
        args.prompt,
        images=images or None,
        generator=torch.Generator().manual_seed(seed),
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        max_new_tokens=args.max_new_tokens,
        max_images=args.max_images,
    )
    args.output.mkdir(parents=True, exist_ok=True)
    for event in events:
        if isinstance(event, TextDelta):
            say(event.text, end="", flush=True)
        elif isinstance(event, ImageStarted):
            say(f"\n[drawing image {event.index + 1} ...]", flush=True)
        elif isinstance(event, ImageDone):
            path = save_image(event.image, args.output, event.index)
            say(f"[image {event.index + 1} saved to {path}]", flush=True)
        elif isinstance(event, DocumentDone):
            output = event.output
    say()
    settings = Settings(args.model or "built-in toy-world model", seed, args.steps, args.guidance,
                        type(pipe.scheduler).__name__)
    write_pages(output.documents[0], args.output, args.prompt, settings)
    say(f"Wrote {args.output / 'index.html'}, {args.output / 'document.md'} and {len(output.images)} image(s)")
    return 0


def load_pipeline(model: str | None, device: torch.device, dtype: torch.dtype | None = None) -> DreamLLMPipeline:
    """The pipeline of `--model` on `device`, with a one-line error when the folder is missing or damaged."""
    if model is not None and looks_like_path(model) and not Path(model).is_dir():
        raise FileNotFoundError(f"--model {model}: the folder does not exist")
    if model is not None and Path(model).is_dir() and not (Path(model) / "config.json").is_file():
        # Checked here: without it transformers would build the default (7B) configuration before failing.
        raise FileNotFoundError(f"--model {model}: the folder has no config.json, so it holds no saved DreamLLM")
    try:
        return DreamLLMPipeline.from_pretrained(model, dtype=dtype).to(device)
    except (FileNotFoundError, TypeError) as error:
        raise ValueError(f"--model {model}: {first_line(error)}") from error
    except Exception as error:  # damaged weights surface as safetensors, torch or transformers errors
        reason = "weights of the wrong shape for its config" if "mismatch" in str(error) else first_line(error)
        raise ValueError(f"--model {model}: cannot load it, the folder looks damaged ({reason})") from error


@contextmanager
def quiet_libraries(progress_bars: bool):
    """
    Within the block, transformers and diffusers log errors only (a damaged folder is reported in one line, not with
    their loading report) and show progress bars only when `progress_bars`.
    """
    states = [(library, library.get_verbosity(), library.is_progress_bar_enabled()) for library in LIBRARY_LOGGING]
    for library in LIBRARY_LOGGING:
        library.set_verbosity_error()
        if not progress_bars:
            library.disable_progress_bar()
    try:
        yield
    finally:
        for library, verbosity, progress_bar in states:
            library.set_verbosity(verbosity)
            if progress_bar:
                library.enable_progress_bar()


def looks_like_path(name: str) -> bool:
    """Whether `--model` names a local path rather than a Hub repo id (`./x`, `../x`, `/x`, `~/x`, `x/y/z`)."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep in name.replace("/", "")


def first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def check_output_folder(folder: Path):
    """Raises an `OSError` naming `--output` when the folder cannot be written, before anything is generated."""
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"--output {folder}: a file of that name exists; choose a folder")
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(f"--output {folder}: {existing} is a file, so the folder cannot be made")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"--output {folder}: {existing} is not writable")


def device_name(text: str) -> torch.device:
    """An argparse type: a torch device such as `cpu`, `cuda` or `cuda:1`."""
    try:
        return torch.device(text)
    except RuntimeError as error:
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; use cpu, cuda, cuda:N, mps, ...") from error


def check_device_available(device: torch.device):
    """Raises a `ValueError` naming `--device` when this machine cannot run on it."""
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError, NotImplementedError) as error:
        raise ValueError(f"--device {device} is not available on this machine ({first_line(error)})") from error


def save_image(image: PIL.Image.Image, folder: Path, index: int) -> Path:
    """Saves image number `index` of the document as `folder/image_<index>.png`, atomically."""
    path = folder / f"image_{index}.png"
    write_file_atomically(path, lambda temporary: image.save(temporary, format="PNG"))
    return path


def write_pages(document: list, folder: Path, prompt: str, settings: Settings):
    """
    Writes `index.html` (the prompt, the document with its images in place and the settings, with no external
    assets) and `document.md` (the same in Markdown) into `folder`, where the images are saved as `image_<i>.png`.
    """
    html_parts, markdown_parts, num_images = [], [], 0
    for part in document:
        if isinstance(part, str):
            html_parts.append(f"<p>{html.escape(part)}</p>")
            markdown_parts.append(part)
            continue
        name = f"image_{num_images}.png"
        num_images += 1
        html_parts.append(f'<img src="{name}" alt="image {num_images}">')
        markdown_parts.append(f"![image {num_images}]({name})")
    rows = "".join(f"<tr><th>{name}</th><td>{html.escape(value)}</td></tr>" for name, value in settings.rows())
    page = (
        f'<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(prompt)}</title><style>{PAGE_STYLE}</style></head>\n<body>\n"
        f'<h1>Prompt</h1>\n<p class="prompt">{html.escape(prompt)}</p>\n<h1>Document</h1>\n'
        f'<main>\n{chr(10).join(html_parts)}\n</main>\n<table><caption>Settings</caption>{rows}</table>\n'
        f"</body>\n</html>\n"
    )
    write_file_atomically(folder / "index.html", lambda path: path.write_text(page, encoding="utf-8"))
    markdown = "\n\n".join(markdown_parts) + "\n"
    write_file_atomically(folder / "document.md", lambda path: path.write_text(markdown, encoding="utf-8"))


def whole_number(minimum: int):
    """An argparse type: a whole number >= `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}")
        return value

    return parse


def non_negative_number(text: str) -> float:
    """An argparse type: a number >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


__all__ = ["add_arguments", "run", "save_image", "write_pages"]
