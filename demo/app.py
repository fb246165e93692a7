"""The Gradio chat app of `dreamllm demo`: a conversation whose answers stream in, images drawn in place.

One pipeline serves every browser tab; requests wait in Gradio's queue and run one at a time, so a second tab waits
its turn. Each turn sends the whole conversation to the model: the user's attached pictures
are read again, and the pictures the assistant drew stand in its turns as the dream blocks it wrote.
"""

import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import PIL.Image
import PIL.ImageDraw
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

from dreamllm.pipelines import DreamLLMPipeline
from dreamllm.pipelines.streaming import DocumentDone, ImageDone, ImagePreview, ImageStarted, TextDelta

logger = logging.getLogger(__name__)

SCHEDULERS = {
    "DDPM (DreamLLM's own)": DDPMScheduler,
    "DDIM": DDIMScheduler,
    "Euler": EulerDiscreteScheduler,
    "DPM-Solver++": DPMSolverMultistepScheduler,
}
DRAWING = "*(drawing an image ...)*"
STOPPED = "*(stopped)*"
CONCURRENCY_LIMIT = 1
TITLE = "DreamLLM: a conversation in text and images"


@dataclass(frozen=True)
class Settings:
    """The settings panel: what every answer is written with."""

    steps: int = 50
    guidance: float = 7.5
    max_images: int = 4
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    scheduler: str = next(iter(SCHEDULERS))
    max_new_tokens: int = 256

    def decoding(self) -> dict:
        """Decoding arguments: greedy at temperature 0, sampling otherwise."""
        if self.temperature <= 0:
            return {"do_sample": False}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p}


@dataclass
class Answer:
    """The assistant turn being written: what the chat shows and what the model will read in later turns."""

    folder: Path
    shown: list = field(default_factory=list)
    items: list = field(default_factory=list)

    def add_text(self, text: str):
        if self.shown and isinstance(self.shown[-1], str) and self.shown[-1] != DRAWING:
            self.shown[-1] += text
            self.items[-1]["text"] += text
        else:
            self.shown.append(text)
            self.items.append({"type": "text", "text": text})

    def start_image(self):
        self.shown.append(DRAWING)

    def stop(self):
        """Ends the answer early: an image being drawn is dropped."""
        if self.shown and self.shown[-1] == DRAWING:
            self.shown[-1] = STOPPED

    def show_image(self, image: PIL.Image.Image, name: str, final: bool):
        path = self.folder / name
        image.save(path, format="PNG")
        self.shown[-1] = {"path": str(path), "alt_text": name}
        if final:
            self.items.append({"type": "image", "image": image})

    def message(self) -> dict:
        return {"role": "assistant", "content": list(self.shown) or [""]}

    def turn(self) -> dict:
        return {"role": "assistant", "content": list(self.items)}


class DemoApp:
    """
    The state shared by every request: one pipeline and its schedulers.

    Answers are written one at a time (`CONCURRENCY_LIMIT`): a pipeline call keeps its state (guidance, interrupt,
    scheduler) on the pipeline, so two at once on one pipeline would mix.

    Args:
        pipe: The pipeline every request runs on.
        defaults: The initial settings.
    """

    def __init__(self, pipe: DreamLLMPipeline, defaults: Settings = Settings()):
        self.pipe = pipe
        self.defaults = defaults
        self.scheduler_config = pipe.scheduler.config
        self.folder = Path(tempfile.mkdtemp(prefix="dreamllm-demo-"))
        self.running: str | None = None
        self.stopping = False
        pipe.set_progress_bar_config(disable=True)

    def respond(
        self,
        message: dict,
        chat: list,
        conversation: list,
        steps: int,
        guidance: float,
        max_images: int,
        temperature: float,
        top_p: float,
        seed: int,
        scheduler: str,
        max_new_tokens: int,
        request: gr.Request = None,
    ) -> Iterator[tuple]:
        """
        Writes the answer to `message` (`{"text", "files"}`) after `conversation`, yielding the chat, the model's
        conversation and the cleared textbox each time something new shows. Bad input becomes a message in the chat;
        Stop (from the same browser tab) ends the answer where it is.
        """
        settings = Settings(steps, guidance, max_images, temperature, top_p, seed, scheduler, max_new_tokens)
        chat = list(chat or [])
        conversation = list(conversation or [])
        try:
            turn, shown = self.user_turn(message)
        except ValueError as error:
            yield chat + [{"role": "assistant", "content": f"⚠️ {error}"}], conversation, None
            return
        chat += shown
        conversation.append(turn)
        answer = Answer(Path(tempfile.mkdtemp(dir=self.folder)))
        self.running, self.stopping = session(request), False
        try:
            for event in self.events(conversation, settings):
                if self.stopping:
                    answer.stop()
                    break
                self.apply(answer, event)
                if not isinstance(event, DocumentDone):
                    yield chat + [answer.message()], conversation + [answer.turn()], None
        except Exception as error:  # the app keeps serving; the user reads what went wrong
            logger.exception("answer failed")
            problem = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            yield chat + [answer.message(), {"role": "assistant", "content": f"⚠️ {problem}"}], conversation[:-1], None
            return
        finally:
            self.running = None
        yield chat + [answer.message()], conversation + [answer.turn()], None

    def stop(self, request: gr.Request = None):
        """Stops the answer being written, if it is this browser tab's: it ends at the next event."""
        if self.running is not None and self.running == session(request):
            self.stopping = True
            self.pipe._interrupt = True  # the denoising loop skips its remaining steps

    def user_turn(self, message: dict) -> tuple[dict, list]:
        """The user's turn for the model and its messages for the chat; a `ValueError` for an unusable message."""
        text = (message or {}).get("text", "").strip()
        files = (message or {}).get("files", [])
        if not text and not files:
            raise ValueError("Type a message (and attach pictures if you like).")
        pictures = [open_picture(file) for file in files]
        content = [{"type": "image", "image": picture} for picture in pictures]
        content.append({"type": "text", "text": text})
        shown = [{"role": "user", "content": {"path": file_path(file)}} for file in files]
        if text:
            shown.append({"role": "user", "content": text})
        return {"role": "user", "content": content}, shown

    def events(self, conversation: list, settings: Settings):
        """The pipeline's events for the conversation, with the settings' scheduler and seed."""
        self.pipe.scheduler = SCHEDULERS[settings.scheduler].from_config(self.scheduler_config)
        seed = torch.Generator().seed() if settings.seed < 0 else int(settings.seed)
        return self.pipe.stream(
            conversation,
            generator=torch.Generator().manual_seed(seed),
            num_inference_steps=int(settings.steps),
            guidance_scale=float(settings.guidance),
            max_images=int(settings.max_images),
            max_new_tokens=int(settings.max_new_tokens),
            preview_every=max(1, int(settings.steps) // 4),
            **settings.decoding(),
        )

    @staticmethod
    def apply(answer: Answer, event):
        if isinstance(event, TextDelta):
            answer.add_text(event.text)
        elif isinstance(event, ImageStarted):
            answer.start_image()
        elif isinstance(event, ImagePreview):
            answer.show_image(event.image, f"image_{event.index}_step_{event.step}.png", final=False)
        elif isinstance(event, ImageDone):
            answer.show_image(event.image, f"image_{event.index}.png", final=True)

    def build(self) -> gr.Blocks:
        """The page: chat, message box with attachments, Stop and Clear, settings and examples."""
        defaults = self.defaults
        with gr.Blocks(title=TITLE) as blocks:
            gr.Markdown(f"## {TITLE}\nAsk for a picture story, or attach a picture and ask about it.")
            chat = gr.Chatbot(label="Conversation", height=520, elem_id="chat")
            conversation = gr.State([])
            box = gr.MultimodalTextbox(
                placeholder="Show me a red circle and then a blue triangle.", file_types=["image"],
                file_count="multiple", show_label=False, elem_id="message", sources=["upload"],
            )
            with gr.Row():
                stop = gr.Button("Stop", variant="stop", elem_id="stop")
                clear = gr.Button("Clear", elem_id="clear")
            with gr.Accordion("Settings", open=False):
                settings = [
                    gr.Slider(1, 200, value=defaults.steps, step=1, label="Denoising steps", elem_id="steps"),
                    gr.Slider(0, 15, value=defaults.guidance, step=0.5, label="Guidance scale"),
                    gr.Slider(0, 8, value=defaults.max_images, step=1, label="Max images"),
                    gr.Slider(0, 2, value=defaults.temperature, step=0.05, label="Temperature (0: greedy)"),
                    gr.Slider(0.05, 1, value=defaults.top_p, step=0.05, label="Top-p"),
                    gr.Number(value=defaults.seed, precision=0, label="Seed (-1: random)"),
                    gr.Dropdown(list(SCHEDULERS), value=defaults.scheduler, label="Scheduler"),
                    gr.Slider(1, 1024, value=defaults.max_new_tokens, step=1, label="Max new tokens"),
                ]
            gr.Examples(examples=self.examples(), inputs=box, label="Examples (they work on the built-in toy model)")
            # The box is locked while an answer is written (Stop unlocks it), so a message never starts mid-answer.
            locked = box.submit(lambda: gr.MultimodalTextbox(interactive=False), None, box, api_name=False)
            answer = locked.then(
                self.respond, [box, chat, conversation, *settings], [chat, conversation, box],
                concurrency_limit=CONCURRENCY_LIMIT, api_name="respond",
            )
            answer.then(unlock, None, box, api_name=False)
            stop.click(self.stop, None, None, api_name=False, queue=False)
            clear.click(lambda: ([], []), None, [chat, conversation], api_name=False, cancels=[answer])
        return blocks

    def examples(self) -> list[dict]:
        picture = self.folder / "green_square.png"
        draw_green_square().save(picture)
        return [
            {"text": "Show me a red circle and then a blue triangle.", "files": []},
            {"text": "Draw a purple square.", "files": []},
            {"text": "What colour is the shape?", "files": [str(picture)]},
        ]

    def launch(self, host: str = "127.0.0.1", port: int | None = None, **launch_kwargs):
        """Starts the web server (requests queued); the page is `self.blocks`. Returns what `gr.Blocks.launch` returns."""
        self.blocks = blocks = self.build()
        blocks.queue(default_concurrency_limit=CONCURRENCY_LIMIT)
        return blocks.launch(server_name=host, server_port=port, allowed_paths=[str(self.folder)], **launch_kwargs)


def session(request: gr.Request | None) -> str:
    """The browser tab a request comes from ("" outside Gradio)."""
    return getattr(request, "session_hash", None) or ""


def unlock() -> gr.MultimodalTextbox:
    """The message box, ready for the next message."""
    return gr.MultimodalTextbox(interactive=True)


def file_path(file) -> str:
    return file if isinstance(file, str) else file.get("path", "")


def open_picture(file) -> PIL.Image.Image:
    """An attached file as an RGB picture; a `ValueError` naming it when it is not a readable image."""
    path = file_path(file)
    try:
        with PIL.Image.open(path) as picture:
            return picture.convert("RGB")
    except (OSError, ValueError) as error:
        raise ValueError(f"Cannot read {Path(path).name} as a picture ({error}).") from error


def draw_green_square() -> PIL.Image.Image:
    """A 64x64 picture of the toy world: a green square on white, for the image example."""
    picture = PIL.Image.new("RGB", (64, 64), "white")
    PIL.ImageDraw.Draw(picture).rectangle([18, 18, 46, 46], fill=(40, 170, 60))
    return picture


__all__ = ["DemoApp", "Settings"]
