"""Screenshots of every tab of the browser demo, driven in headless Chromium (Debian's chromium + chromium-driver).

    python benchmarks/demo_screenshots.py --model pretrained/celeba-64 \
        --attributes_model pretrained/celeba-64-attributes --celeba ../shared/celeba --out results/demo

Starts ``pipeline.demo`` on 127.0.0.1, runs each tab once (Generate; Attributes, asking for smiling faces, when an
attribute model is given; Inpaint and Colorize on a held-out test face; Interpolate between two of them) and saves
one PNG per tab. Nothing calls out: Selenium gets the local chromedriver
(SE_AVOID_STATS=true), Chromium runs without background networking or component updates.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("SE_AVOID_STATS", "true")

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-quic", "--window-size=1280,1400")


def headless_chromium(user_data_dir: str):
    """A Selenium Chrome driver on Debian's Chromium, offline; a clear error if the browser is not installed."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(f"{', '.join(missing)} not found: install Debian's chromium and chromium-driver "
                                f"(apt-get install chromium chromium-driver; .ci/run does this as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={user_data_dir}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def open_tab(driver, name: str) -> None:
    from selenium.webdriver.common.by import By

    for button in driver.find_elements(By.CSS_SELECTOR, "button[role=tab]"):
        if button.text.strip() == name:
            button.click()
            return
    raise ValueError(f"no tab {name!r} in the page")


def tick(driver, group_id: str, label: str) -> None:
    """Tick the checkbox labelled ``label`` in the checkbox group with element id ``group_id``."""
    from selenium.webdriver.common.by import By

    for box in driver.find_elements(By.CSS_SELECTOR, f"#{group_id} label"):
        if box.text.strip() == label:
            box.click()
            return
    raise ValueError(f"no checkbox {label!r} in #{group_id}")


def paint_stroke(driver, canvas) -> None:
    """Drag the brush across the middle of the image editor's canvas (a short horizontal stroke at its centre),
    slowly enough for the canvas to see every pointer move."""
    from selenium.webdriver.common.action_chains import ActionChains

    actions = ActionChains(driver, duration=50).move_to_element_with_offset(canvas, -60, 0).click_and_hold()
    for _ in range(12):
        actions.move_by_offset(10, 0).pause(0.05)
    actions.release().perform()


def wait_for(driver, condition, seconds: float = 600):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds).until(condition)


def wait_for_images(driver, selector: str, count: int = 1, seconds: float = 600) -> None:
    """Until at least ``count`` images match ``selector`` and every one of them has loaded (a gallery fills in one by
    one: a screenshot taken at the first image shows empty frames)."""
    script = ("const images = [...document.querySelectorAll(arguments[0])];"
              "return images.length >= arguments[1]"
              " && images.every(image => image.complete && image.naturalWidth > 0);")
    wait_for(driver, lambda d: d.execute_script(script, selector, count), seconds)


def main(argv=None) -> int:
    from selenium.webdriver.common.by import By

    from pipeline.cli import ArgumentParser
    from pipeline.data.preprocess import pipeline_preprocessing
    from pipeline.demo import FaceDemo, build_demo, heldout_faces, launch
    from pipeline.pipeline_folder import load_pipeline

    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="pretrained/celeba-64")
    parser.add_argument("--attributes_model", default=None, help="an attribute model: screenshot its tab too")
    parser.add_argument("--celeba", required=True, help="CelebA folder: held-out test faces for the edit tabs")
    parser.add_argument("--out", default="results/demo")
    args = parser.parse_args(argv)
    pipe = load_pipeline(args.model)
    attribute_pipe = load_pipeline(args.attributes_model) if args.attributes_model else None
    faces = heldout_faces(args.celeba, pipeline_preprocessing(pipe), count=2)
    app = build_demo(FaceDemo(pipe, faces=faces, attribute_pipe=attribute_pipe))
    port = free_port()
    launch(app, "127.0.0.1", port, max_queue=4, block=False)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        paths = []
        for index, face in enumerate(faces):
            paths.append(os.path.join(scratch, f"face{index}.png"))
            face.save(paths[-1])
        driver = headless_chromium(os.path.join(scratch, "profile"))
        try:
            driver.get(f"http://127.0.0.1:{port}/")
            wait_for(driver, lambda d: d.find_elements(By.ID, "generate-button"), 120)
            driver.find_element(By.ID, "generate-button").click()
            wait_for_images(driver, "#generate-gallery img", count=8)  # the tab's default batch
            driver.save_screenshot(str(out / "generate.png"))
            if attribute_pipe is not None:
                open_tab(driver, "Attributes")
                tick(driver, "attributes-present", "Smiling")
                driver.find_element(By.ID, "attributes-button").click()
                wait_for_images(driver, "#attributes-gallery img", count=8)
                driver.save_screenshot(str(out / "attributes.png"))
            open_tab(driver, "Inpaint")
            upload = wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#inpaint-editor input[type=file]"))
            upload[0].send_keys(paths[0])
            canvas = wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#inpaint-editor canvas"))[-1]
            paint_stroke(driver, canvas)
            driver.find_element(By.ID, "inpaint-button").click()
            wait_for_images(driver, "#inpaint-result img")
            driver.save_screenshot(str(out / "inpaint.png"))
            for tab, count, result, shown in (("Colorize", 1, "#colorize-result img", 1),
                                              ("Interpolate", 2, "#interpolate-gallery img", 8)):  # 8 frames
                open_tab(driver, tab)
                inputs = [e for e in driver.find_elements(By.CSS_SELECTOR, f"#{tab.lower()}-inputs input[type=file]")]
                for element, path in zip(inputs[:count], paths):
                    element.send_keys(path)
                driver.find_element(By.ID, f"{tab.lower()}-button").click()
                wait_for_images(driver, result, shown)
                driver.save_screenshot(str(out / f"{tab.lower()}.png"))
        finally:
            driver.quit()
            app.close()
    print(f"wrote screenshots of every tab to {out}")
    return 0


if __name__ == "__main__":
    from pipeline.cli import run_cli

    sys.exit(run_cli(main))
