"""The `dreamllm demo` chat app on the built-in toy model: Gradio's client API, and a real browser (Chromium)."""

import os
import shutil
import socket
import threading
from pathlib import Path

import PIL.Image
import pytest

gradio_client = pytest.importorskip("gradio_client")
from dreamllm.demo.app import DemoApp, Settings, draw_green_square  # noqa: E402
from dreamllm.pipelines import DreamLLMPipeline  # noqa: E402
from dreamllm.toy_world import analyze_image  # noqa: E402

README_PROMPT = "Show me a red circle and then a blue triangle."
README_SHAPES = [("red", "circle"), ("blue", "triangle")]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
STEPS = 8


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def app():
    pipe = DreamLLMPipeline.from_pretrained()
    return DemoApp(pipe, Settings(steps=STEPS))


@pytest.fixture(scope="module")
def url(app):
    port = free_port()
    app.launch("127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    app.blocks.close()


def answer_parts(message: dict) -> list:
    """An assistant message of the client API as text segments and image paths."""
    return [item["text"] if item["type"] == "text" else Path(item["file"]) for item in message["content"]]


def shown_parts(content: list) -> list:
    """An assistant message as `DemoApp.respond` shows it, as text segments and image paths."""
    return [item if isinstance(item, str) else Path(item["path"]) for item in content]


def assert_draws_the_readme_shapes(parts: list):
    """The answer shows a red circle then a blue triangle (read back from the pixels), each right after a text that
    names it."""
    positions = [index for index, part in enumerate(parts) if not isinstance(part, str)]
    pictures = [analyze_image(PIL.Image.open(parts[index])) for index in positions]
    assert pictures == README_SHAPES, parts
    for index, (colour, shape) in zip(positions, README_SHAPES):
        assert index > 0 and f"{colour} {shape}" in parts[index - 1], parts


def ask(app, message, conversation=(), **overrides):
    """The last update of `app.respond` (the finished answer), driven directly as Gradio drives it."""
    settings = {**Settings(steps=STEPS).__dict__, **overrides}
    *_, last = app.respond(message, [], list(conversation), **settings)
    return last


def test_client_api_writes_the_readme_document(url):
    client = gradio_client.Client(url, verbose=False)
    chat, box = client.predict({"text": README_PROMPT, "files": []}, [], api_name="/respond")
    assert box == {"text": "", "files": []}
    assert chat[0]["role"] == "user" and chat[0]["content"][0]["text"] == README_PROMPT
    parts = answer_parts(chat[1])
    assert_draws_the_readme_shapes(parts)
    assert all(PIL.Image.open(part).size == (64, 64) for part in parts if not isinstance(part, str))


def test_second_tab_waits_its_turn(url):
    """Two clients at once: the queue runs them one after the other and both get the seeded document."""
    clients = [gradio_client.Client(url, verbose=False) for _ in range(2)]
    jobs = [client.submit({"text": README_PROMPT, "files": []}, [], api_name="/respond") for client in clients]
    first, second = (answer_parts(job.result(timeout=120)[0][1]) for job in jobs)
    assert [part for part in first if isinstance(part, str)] == [part for part in second if isinstance(part, str)]
    assert_draws_the_readme_shapes(first)
    assert_draws_the_readme_shapes(second)


def test_streamed_updates_show_previews_then_the_image(app):
    updates = [chat[-1]["content"] for chat, _, _ in app.respond(
        {"text": README_PROMPT, "files": []}, [], [], **Settings(steps=STEPS).__dict__)]
    shown_paths = [str(item["path"]) for content in updates for item in content if isinstance(item, dict)]
    assert any("_step_" in path for path in shown_paths)  # previews while drawn
    assert any(item == "*(drawing an image ...)*" for content in updates for item in content)
    assert len(updates) > 4
    final = updates[-1]
    assert_draws_the_readme_shapes(shown_parts(final))
    assert not any("_step_" in str(item["path"]) for item in final if isinstance(item, dict))


def test_history_reaches_the_model(app, tmp_path, monkeypatch):
    picture = tmp_path / "square.png"
    draw_green_square().save(picture)
    _, conversation, _ = ask(app, {"text": "What colour is the shape?", "files": [str(picture)]})
    assert [turn["role"] for turn in conversation] == ["user", "assistant"]
    seen = []
    real_stream = app.pipe.stream
    monkeypatch.setattr(app.pipe, "stream", lambda prompt, **kwargs: seen.append(prompt) or real_stream(prompt, **kwargs))
    chat, conversation, _ = ask(app, {"text": "Now draw it.", "files": []}, conversation)
    prompt = seen[0]
    assert [turn["role"] for turn in prompt] == ["user", "assistant", "user"]
    assert prompt[0]["content"][0]["type"] == "image" and prompt[0]["content"][1]["text"] == "What colour is the shape?"
    assert prompt[1]["content"][0]["type"] == "text" and prompt[1]["content"][0]["text"]
    assert [turn["role"] for turn in conversation] == ["user", "assistant", "user", "assistant"]


def test_a_picture_question_after_a_drawn_document_is_answered_about_the_new_picture(app, tmp_path):
    _, conversation, _ = ask(app, {"text": README_PROMPT, "files": []})
    picture = tmp_path / "square.png"
    draw_green_square().save(picture)
    chat, _, _ = ask(app, {"text": "What colour is the shape?", "files": [str(picture)]}, conversation)
    answer = " ".join(part for part in chat[-1]["content"] if isinstance(part, str)).lower()
    assert "green" in answer and "red" not in answer and "blue" not in answer
    assert all(isinstance(part, str) for part in chat[-1]["content"])


@pytest.mark.parametrize(
    "message, shown",
    [
        ({"text": "What is this?", "files": ["{text_file}"]}, "Cannot read not-a-picture.png as a picture"),
        ({"text": "", "files": []}, "Type a message"),
        ({"text": "word " * 2000, "files": []}, "shorten the prompt"),
    ],
    ids=["unreadable-upload", "empty", "past-the-context"],
)
def test_bad_input_is_a_message_and_the_app_keeps_serving(app, tmp_path, message, shown):
    text_file = tmp_path / "not-a-picture.png"
    text_file.write_text("hello")
    message = {**message, "files": [file.format(text_file=text_file) for file in message["files"]]}
    chat, conversation, _ = ask(app, message)
    assert shown in chat[-1]["content"] and chat[-1]["content"].startswith("⚠️")
    assert conversation == []
    chat, _, _ = ask(app, {"text": README_PROMPT, "files": []})
    assert_draws_the_readme_shapes(shown_parts(chat[-1]["content"]))


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--device", "gpu0"], "argument --device: unknown device 'gpu0'"),
        (["--model", "./does-not-exist"], "--model ./does-not-exist: the folder does not exist"),
        (["--port", "http"], "argument --port: invalid int value"),
    ],
)
def test_demo_command_reports_mistakes_in_one_line(capsys, arguments, message):
    from dreamllm.cli import main

    try:
        code = main(["demo", *arguments])
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("dreamllm demo: error: ") and message in errors[0]


def test_demo_help_shows_examples(capsys):
    from dreamllm.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--help"])
    assert exit_.value.code == 0
    assert "examples:" in capsys.readouterr().out


def browser_page(playwright, tmp_path):
    browser = playwright.chromium.launch_persistent_context(
        str(tmp_path / "profile"), executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
        viewport={"width": 900, "height": 1100},
    )
    return browser, browser.pages[0] if browser.pages else browser.new_page()


def send(page, text: str, picture: Path | None = None):
    if picture is not None:
        page.locator("#message input[type=file]").set_input_files(str(picture))
        page.locator("#message img").first.wait_for(timeout=30_000)  # the attachment is shown before sending
    sent_before = page.locator("#chat").inner_text().count(text)
    box = page.locator("#message textarea")
    box.fill(text)
    box.press("Enter")
    page.wait_for_function(
        "([text, count]) => document.querySelector('#chat').innerText.split(text).length - 1 > count",
        arg=[text, sent_before], timeout=30_000,
    )


def wait_for_answer(page, images: int, timeout: float = 120_000):
    """Waits until the answer is written (the message box unlocks) and the chat shows `images` finished images."""
    page.wait_for_function(
        """(images) => {
            const finished = [...document.querySelectorAll('#chat img')].filter(
                img => /image_\\d+\\.png/.test(img.src) && !img.src.includes('_step_'));
            return !document.querySelector('#message textarea').disabled && finished.length >= images;
        }""",
        arg=images, timeout=timeout,
    )


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Chromium is not installed (apt-get install chromium)")
def test_browser_document_picture_question_and_stop(url, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser, page = browser_page(playwright, tmp_path)
        try:
            errors = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(url)
            send(page, README_PROMPT)
            wait_for_answer(page, 2)
            answer_text = page.locator("#chat").inner_text().split(README_PROMPT, 1)[1]
            assert 0 <= answer_text.find("red circle") < answer_text.find("blue triangle")
            screenshot = Path(os.environ.get("DREAMLLM_DEMO_SCREENSHOT", tmp_path / "document.png"))
            page.screenshot(path=str(screenshot), full_page=True)
            assert screenshot.stat().st_size > 10_000

            picture = tmp_path / "square.png"
            draw_green_square().save(picture)
            send(page, "What colour is the shape?", picture)
            wait_for_answer(page, 2)
            reply = page.locator("#chat").inner_text().rsplit("What colour is the shape?", 1)[1].lower()
            assert "green" in reply and "red" not in reply and "blue" not in reply

            page.get_by_role("button", name="Settings ▼").click()
            steps = page.locator("#steps input[type=number]")
            steps.fill("200")
            steps.press("Enter")
            send(page, README_PROMPT)
            page.wait_for_function(
                "() => document.querySelector('#chat').innerText.includes('drawing an image')", timeout=120_000
            )
            page.locator("#stop").click()
            wait_for_answer(page, 2)
            page.wait_for_timeout(1500)
            stopped = page.locator("#chat").inner_text()
            page.wait_for_timeout(1500)
            assert page.locator("#chat").inner_text() == stopped  # nothing more is written after Stop
            assert "blue triangle" not in stopped.rsplit(README_PROMPT, 1)[1]  # the stopped answer did not get that far
            assert stopped.endswith("(stopped)")
            assert not page.locator(".toast-body.error, .toast-wrap .error").count()
            assert "Error" not in page.locator("body").inner_text()
            assert errors == []
        finally:
            browser.close()
