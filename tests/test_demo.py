"""The Gradio demo: every endpoint through gradio_client against a server on 127.0.0.1, and its input errors."""

import os
import socket

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
gradio_client = pytest.importorskip("gradio_client")

from diffusers import DDPMScheduler  # noqa: E402

from pipeline import CelebADiffusionPipeline  # noqa: E402
from pipeline.data.preprocess import Preprocessing  # noqa: E402
from pipeline.demo import FaceDemo, build_demo, launch  # noqa: E402
from pipeline.demo_inputs import drawn_mask  # noqa: E402
from pipeline.pipeline_folder import load_pipeline  # noqa: E402

from conftest import FIXTURE  # noqa: E402


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(smoke_pipeline_dir):
    demo = FaceDemo(load_pipeline(str(smoke_pipeline_dir)), mixed_precision="no")
    app = build_demo(demo)
    port = free_port()
    launch(app, "127.0.0.1", port, max_queue=4, block=False)
    yield f"http://127.0.0.1:{port}/", demo
    app.close()


@pytest.fixture
def face_file(tmp_path):
    path = tmp_path / "face.png"
    Image.open(FIXTURE / "img_align_celeba" / "000001.jpg").save(path)  # an aligned 178x218 CelebA image
    return path


def test_every_endpoint_answers(server, face_file, tmp_path):
    url, demo = server
    client = gradio_client.Client(url, verbose=False)
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/generate", "/inpaint", "/colorize", "/interpolate"} <= names
    gallery = client.predict("ddpm", 3, 0, 2, api_name="/generate")
    assert len(gallery) == 2 and Image.open(gallery[0]["image"]).size == (32, 32)
    mask = np.zeros((218, 178, 4), dtype=np.uint8)
    mask[80:140, 50:130] = 255  # painted: the centre of the face
    Image.fromarray(mask).save(tmp_path / "layer.png")
    editor = {"background": gradio_client.handle_file(str(face_file)),
              "layers": [gradio_client.handle_file(str(tmp_path / "layer.png"))], "composite": None}
    seen, filled = client.predict(editor, "pc", 10, 0, api_name="/inpaint")
    assert Image.open(filled).size == (32, 32) and Image.open(seen).size == (32, 32)
    grey, coloured = client.predict(gradio_client.handle_file(str(face_file)), "repaint", 10, 0,
                                    api_name="/colorize")
    assert np.asarray(Image.open(grey).convert("RGB")).std(axis=2).max() == 0  # the grey input is grey
    frames = client.predict(gradio_client.handle_file(str(face_file)), gradio_client.handle_file(str(face_file)),
                            3, 10, api_name="/interpolate")
    assert len(frames) == 3


def test_errors_reach_the_user_as_messages(server, face_file):
    url, _ = server
    client = gradio_client.Client(url, verbose=False)
    editor = {"background": gradio_client.handle_file(str(face_file)), "layers": [], "composite": None}
    with pytest.raises(Exception, match="No mask drawn"):
        client.predict(editor, "pc", 10, 0, api_name="/inpaint")
    with pytest.raises(Exception, match="greater than maximum value 16"):  # the slider's own bound
        client.predict("ddpm", 3, 0, 40, api_name="/generate")


def test_mask_and_upload_checks():
    face = np.zeros((64, 64, 3), dtype=np.uint8)
    layer = np.zeros((64, 64, 4), dtype=np.uint8)
    layer[10:20, 10:20, 3] = 255
    _, known = drawn_mask({"background": face, "layers": [layer]}, Preprocessing(resolution=32))
    assert known.shape == (1, 1, 32, 32) and known[0, 0, 5:10, 5:10].sum() == 0 and known.mean() > 0.9
    import gradio as gr

    with pytest.raises(gr.Error, match="at most 2048 pixels"):
        drawn_mask({"background": np.zeros((3000, 3000, 3), dtype=np.uint8), "layers": [layer]},
                   Preprocessing(resolution=32))
    with pytest.raises(gr.Error, match="No mask drawn"):
        drawn_mask({"background": face, "layers": []}, Preprocessing(resolution=32))


def test_estimates_follow_the_settings(server):
    _, demo = server
    assert "20 network evaluations x 8 image(s)" in demo.generate_estimate("ddpm", 20, 8)
    assert "39 network evaluations x 1 image(s)" in demo.generate_estimate("heun", 20, 1)


@pytest.mark.browser
def test_a_real_browser_generates_and_shows_the_inpaint_error(server, tmp_path):
    """Headless Chromium: Generate fills the gallery; Inpaint with nothing drawn shows the message in the page."""
    from selenium.webdriver.common.by import By

    from benchmarks.demo_screenshots import headless_chromium, open_tab, wait_for

    url, _ = server
    driver = headless_chromium(str(tmp_path / "profile"))  # fails (never skips) when Chromium is not installed
    try:
        driver.get(url)
        wait_for(driver, lambda d: d.find_elements(By.ID, "generate-button"), 120)
        driver.find_element(By.ID, "generate-button").click()
        wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#generate-gallery img"), 300)
        driver.save_screenshot(str(tmp_path / "generate.png"))
        assert (tmp_path / "generate.png").stat().st_size > 0
        open_tab(driver, "Inpaint")
        wait_for(driver, lambda d: d.find_elements(By.ID, "inpaint-button"), 60)[0].click()  # nothing drawn
        wait_for(driver, lambda d: "Upload a face (or pick one) first" in d.find_element(By.TAG_NAME, "body").text,
                 300)
    finally:
        driver.quit()


@pytest.fixture
def attribute_server():
    """An unconditional tiny pipeline with a tiny attribute model beside it (``--attributes_model``)."""
    from test_attributes import attribute_pipeline, tiny_unet

    plain_pipe = CelebADiffusionPipeline(unet=tiny_unet(), scheduler=DDPMScheduler())
    demo = FaceDemo(plain_pipe, mixed_precision="no", attribute_pipe=attribute_pipeline())
    app = build_demo(demo)
    port = free_port()
    launch(app, "127.0.0.1", port, max_queue=4, block=False)
    yield f"http://127.0.0.1:{port}/", demo
    app.close()


def test_an_attribute_model_gets_an_attributes_tab(attribute_server):
    from test_attributes import attribute_pipeline, tiny_unet

    url, demo = attribute_server
    plain_pipe = demo.pipe
    assert "Smiling" in demo.attribute_names and FaceDemo(plain_pipe, mixed_precision="no").attribute_names == []
    assert FaceDemo(attribute_pipeline(), mixed_precision="no").attribute_names == demo.attribute_names  # --model
    with pytest.raises(ValueError, match="the attributes model has no attribute_encoder"):
        FaceDemo(plain_pipe, mixed_precision="no", attribute_pipe=CelebADiffusionPipeline(
            unet=tiny_unet(), scheduler=DDPMScheduler()))
    guided, conditional = (demo.attributes_estimate(["Smiling"], [], w, "ddim", 10, 1) for w in (3, 1))
    assert "(20 network evaluations x 1 image(s))" in guided and "(10 network evaluations" in conditional
    client = gradio_client.Client(url, verbose=False)
    assert "/attributes" in client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    smiling = client.predict(["Smiling"], [], 3, "ddim", 4, 0, 2, api_name="/attributes")
    plain = client.predict([], [], 3, "ddim", 4, 0, 2, api_name="/attributes")
    unconditional = client.predict("ddim", 4, 0, 2, api_name="/generate")  # the unconditional pipeline's samples
    assert len(smiling) == 2 and Image.open(smiling[0]["image"]).size == (8, 8)
    pixels = [np.asarray(Image.open(result[0]["image"])) for result in (smiling, plain, unconditional)]
    assert not np.array_equal(pixels[0], pixels[1]) and not np.array_equal(pixels[1], pixels[2])
    with pytest.raises(Exception, match="Smiling cannot be both present and absent"):
        client.predict(["Smiling"], ["Smiling"], 3, "ddim", 4, 0, 2, api_name="/attributes")


@pytest.mark.browser
def test_a_real_browser_asks_for_an_attribute(attribute_server, tmp_path):
    """Headless Chromium: ticking Smiling on the Attributes tab and pressing Generate fills its gallery."""
    from selenium.webdriver.common.by import By

    from benchmarks.demo_screenshots import headless_chromium, open_tab, tick, wait_for, wait_for_images

    url, _ = attribute_server
    driver = headless_chromium(str(tmp_path / "profile"))
    try:
        driver.get(url)
        wait_for(driver, lambda d: d.find_elements(By.ID, "generate-button"), 120)
        open_tab(driver, "Attributes")
        tick(driver, "attributes-present", "Smiling")
        ticked = driver.find_elements(By.CSS_SELECTOR, "#attributes-present label:has(input:checked)")
        assert [box.text.strip() for box in ticked] == ["Smiling"]
        with pytest.raises(ValueError, match="no checkbox 'Smiling!'"):
            tick(driver, "attributes-present", "Smiling!")
        driver.find_element(By.ID, "attributes-button").click()
        wait_for_images(driver, "#attributes-gallery img", count=8, seconds=300)  # the tab's default batch
    finally:
        driver.quit()
