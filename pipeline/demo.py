"""A browser demo of a saved pipeline (Gradio): generate, inpaint, colorize and interpolate faces, and ask an
attribute model for attributes.

    python -m pipeline.demo --model pretrained/celeba-64 [--attributes_model pretrained/celeba-64-attributes] \
        [--celeba ../shared/celeba] [--host 127.0.0.1 --port 7860]

Each tab is also an API endpoint (``/generate``, ``/inpaint``, ``/colorize``, ``/interpolate``, and ``/attributes``
when there is an attribute model: ``--attributes_model``, or ``--model`` itself) for ``gradio_client``. The demo runs
offline (no analytics, no share link, local fonts), serves one request at a time with a short queue (requests beyond
it are refused with a message), shows the expected time of a request before it runs, and reports bad input (no mask
drawn, a huge or odd-sized upload) in the page. It calls the same functions as
``pipeline.generate`` and ``pipeline.edit``.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: nothing may call out

import sys  # noqa: E402
import time  # noqa: E402

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from .cli import DEFAULT_DEVICE, ArgumentParser, device_argument, run_cli  # noqa: E402
from .data.preprocess import Preprocessing, pipeline_preprocessing, to_uint8_nhwc  # noqa: E402
from .demo_inputs import drawn_mask, input_error, square_face  # noqa: E402
from .generate import MIXED_PRECISION_HELP, generate  # noqa: E402
from .pipeline_folder import load_pipeline  # noqa: E402
from .sampling.editing import METHODS, colorize, impute, interpolate  # noqa: E402
from .sampling.schedulers import EDM_SAMPLERS, VP_SAMPLERS, default_sampler, nfe  # noqa: E402

MAX_BATCH = 16
MAX_GUIDANCE = 10.0
LOCAL_FONTS = dict(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    return [Image.fromarray(image) for image in to_uint8_nhwc(images)]


def attribute_names(pipe) -> list[str]:
    """The attributes a pipeline can be asked for (none for an unconditional one)."""
    encoder = getattr(pipe, "attribute_encoder", None)
    return [] if encoder is None else list(encoder.config.attribute_names)


class FaceDemo:
    """The demo's actions on a pipeline (and, for the Attributes tab, an attribute model: ``attribute_pipe``, by
    default ``pipe`` itself when it is one); every method is an endpoint, its errors are ``gr.Error`` messages.
    ValueError when ``attribute_pipe`` is not an attribute model."""

    def __init__(self, pipe, mixed_precision: str | None = None, faces: list[Image.Image] | None = None,
                 attribute_pipe=None):
        if attribute_pipe is not None and not attribute_names(attribute_pipe):
            raise ValueError("the attributes model has no attribute_encoder: give an attribute model such as "
                             "pretrained/celeba-64-attributes")
        self.pipe, self.mixed_precision, self.faces = pipe, mixed_precision, faces or []
        self.attribute_pipe = attribute_pipe if attribute_pipe is not None else (
            pipe if attribute_names(pipe) else None)
        self.attribute_names = attribute_names(self.attribute_pipe)
        self.prep = pipeline_preprocessing(pipe)
        self.resolution = self.prep.resolution
        offered = (EDM_SAMPLERS if pipe.config.edm_schedule is not None else ()) + VP_SAMPLERS
        # the model's own sampler first, at its default step count (adaptive ode-rk45 has no time estimate)
        first = default_sampler(pipe)
        self.samplers = [first, *(name for name in offered if name not in ("ode-rk45", first))]
        self.default_steps = pipe.config.default_num_inference_steps
        self.seconds_per_image_evaluation = self._time_one_evaluation()

    def _time_one_evaluation(self) -> float:
        """Seconds per network evaluation per image, measured once on a batch of 4 (for the time estimates)."""
        x = torch.zeros(4, 3, self.resolution, self.resolution, device=self.pipe.device)
        with torch.inference_mode(), self.pipe.precision(self.mixed_precision):
            self.pipe.denoiser(x, torch.tensor([500] * 4, device=x.device))
            started = time.perf_counter()
            self.pipe.denoiser(x, torch.tensor([500] * 4, device=x.device))
        return (time.perf_counter() - started) / 4

    def estimate(self, evaluations: int, images: int) -> str:
        seconds = evaluations * images * self.seconds_per_image_evaluation
        return f"Expected time: about {max(seconds, 1):.0f} s ({evaluations} network evaluations x {images} image(s))."

    def generate_estimate(self, sampler: str, steps: int, batch: int) -> str:
        return self.estimate(nfe(sampler, int(steps)) or 300, int(batch))

    def edit_estimate(self, method: str, steps: int) -> str:
        return self.estimate(2 * int(steps) if method == "pc" else int(steps) * 3, 1)

    def attributes_estimate(self, present: list[str], absent: list[str], guidance: float, sampler: str, steps: int,
                            batch: int) -> str:
        """Guidance other than 0 and 1 runs the network twice per step (with and without the attributes)."""
        guided = bool(present or absent) and float(guidance) not in (0.0, 1.0)
        return self.estimate((nfe(sampler, int(steps)) or 300) * (2 if guided else 1), int(batch))

    def generate(self, sampler: str, steps: float, seed: float, batch: float, progress=gr.Progress(track_tqdm=True)):
        return self._sample(self.pipe, sampler, steps, seed, batch)

    def _sample(self, pipe, sampler: str, steps: float, seed: float, batch: float, attributes: dict | None = None,
                guidance: float = 1.0) -> list[Image.Image]:
        if sampler not in self.samplers:
            raise input_error(f"Unknown sampler {sampler!r}; choose one of {', '.join(self.samplers)}.")
        if not 1 <= int(batch) <= MAX_BATCH or int(steps) < 1:
            raise input_error(f"Batch must be 1-{MAX_BATCH} and steps at least 1.")
        try:
            images, _ = generate(pipe, int(batch), sampler, int(steps), int(seed), batch_size=int(batch),
                                 progress=True, mixed_precision=self.mixed_precision, attributes=attributes,
                                 guidance_scale=guidance)
        except ValueError as error:   # e.g. a step count DDIM cannot take, an attribute the model does not know
            raise input_error(str(error)) from None
        return [Image.fromarray(image) for image in images]

    def generate_with_attributes(self, present: list[str], absent: list[str], guidance: float, sampler: str,
                                 steps: float, seed: float, batch: float, progress=gr.Progress(track_tqdm=True)):
        both = sorted(set(present or []) & set(absent or []))
        if both:
            raise input_error(f"{', '.join(both)} cannot be both present and absent.")
        if not 0 <= float(guidance) <= MAX_GUIDANCE:
            raise input_error(f"Guidance must be 0-{MAX_GUIDANCE}.")
        attributes = {**{name: 1 for name in present or []}, **{name: -1 for name in absent or []}}
        return self._sample(self.attribute_pipe, sampler, steps, seed, batch, attributes or None,
                            float(guidance) if attributes else 1.0)

    def pick_face(self, event: gr.SelectData) -> dict:
        """The ImageEditor value of the held-out face clicked in the picker."""
        face = np.asarray(self.faces[event.index])
        return {"background": face, "layers": [], "composite": face}

    def _edit_options(self, method: str, steps: float, seed: float) -> dict:
        if method not in METHODS or int(steps) < 1:
            raise input_error(f"Method must be one of {', '.join(METHODS)} and steps at least 1.")
        steps = int(steps)
        options = {"method": method, "steps": steps, "generator": torch.Generator().manual_seed(int(seed))}
        if method == "repaint":  # jumps of a tenth of the steps, resampled 3 times: ~3x the steps in evaluations
            options.update(jump_length=max(1, steps // 10), jump_n_sample=3)
        return options

    def inpaint(self, editor: dict, method: str, steps: float, seed: float, progress=gr.Progress(track_tqdm=True)):
        face, known = drawn_mask(editor, self.prep)
        with self.pipe.precision(self.mixed_precision):
            result, _ = impute(self.pipe, face[None], known, progress_bar=self.pipe.progress_bar,
                               **self._edit_options(method, steps, seed))
        return to_pil(face[None] * known - (1 - known))[0], to_pil(result)[0]

    def colorize(self, image: np.ndarray, method: str, steps: float, seed: float,
                 progress=gr.Progress(track_tqdm=True)):
        face = square_face(image, self.prep)
        with self.pipe.precision(self.mixed_precision):
            result, _ = colorize(self.pipe, face[None], progress_bar=self.pipe.progress_bar,
                                 **self._edit_options(method, steps, seed))
        return to_pil(face.mean(dim=0, keepdim=True).expand(3, -1, -1)[None])[0], to_pil(result)[0]

    def interpolate(self, first: np.ndarray, second: np.ndarray, frames: float, steps: float,
                    progress=gr.Progress(track_tqdm=True)):
        if not 2 <= int(frames) <= MAX_BATCH or int(steps) < 1:
            raise input_error(f"Frames must be 2-{MAX_BATCH} and steps at least 1.")
        a, b = square_face(first, self.prep), square_face(second, self.prep)
        with self.pipe.precision(self.mixed_precision):
            return to_pil(interpolate(self.pipe, a, b, int(frames), int(steps)))


def build_demo(demo: FaceDemo) -> gr.Blocks:
    """The Blocks app: a tab per action, each button a named API endpoint."""
    with gr.Blocks(title="CelebA diffusion", analytics_enabled=False) as app:
        gr.Markdown("# CelebA 64x64 diffusion\nUnconditional faces from a diffusers `UNet2DModel`, and edits of real "
                    "faces with the same model. One request runs at a time on this machine.")
        with gr.Tab("Generate"):
            with gr.Row():
                sampler = gr.Dropdown(demo.samplers, value=demo.samplers[0], label="Sampler")
                steps = gr.Slider(1, 1000, value=demo.default_steps, step=1, label="Steps")
                seed = gr.Number(0, precision=0, label="Seed")
                batch = gr.Slider(1, MAX_BATCH, value=8, step=1, label="Images")
            estimate = gr.Markdown(demo.generate_estimate(demo.samplers[0], demo.default_steps, 8))
            button = gr.Button("Generate", variant="primary", elem_id="generate-button")
            gallery = gr.Gallery(label="Samples", columns=8, format="png", elem_id="generate-gallery")
            for control in (sampler, steps, batch):
                control.change(demo.generate_estimate, [sampler, steps, batch], estimate, api_name=False)
            button.click(demo.generate, [sampler, steps, seed, batch], gallery, api_name="generate")
        if demo.attribute_names:
            with gr.Tab("Attributes"):
                present = gr.CheckboxGroup(demo.attribute_names, label="Present", elem_id="attributes-present")
                absent = gr.CheckboxGroup(demo.attribute_names, label="Absent")
                with gr.Row():
                    guidance = gr.Slider(0, MAX_GUIDANCE, value=3, step=0.5,
                                         label="Guidance (0: ignore the attributes, 1: conditional, >1: stronger)")
                    attribute_sampler = gr.Dropdown(demo.samplers, value=demo.samplers[0], label="Sampler")
                    attribute_steps = gr.Slider(1, 1000, value=demo.default_steps, step=1, label="Steps")
                    attribute_seed = gr.Number(0, precision=0, label="Seed")
                    attribute_batch = gr.Slider(1, MAX_BATCH, value=8, step=1, label="Images")
                attribute_estimate = gr.Markdown(demo.attributes_estimate([], [], 3, demo.samplers[0],
                                                                          demo.default_steps, 8))
                attribute_button = gr.Button("Generate", variant="primary", elem_id="attributes-button")
                attribute_gallery = gr.Gallery(label="Samples", columns=8, format="png", elem_id="attributes-gallery")
                settings = [present, absent, guidance, attribute_sampler, attribute_steps]
                for control in (*settings, attribute_batch):
                    control.change(demo.attributes_estimate, [*settings, attribute_batch], attribute_estimate,
                                   api_name=False)
                attribute_button.click(demo.generate_with_attributes, [*settings, attribute_seed, attribute_batch],
                                       attribute_gallery, api_name="attributes")
        with gr.Tab("Inpaint"):
            editor = gr.ImageEditor(label="Face: paint over the region to fill", type="numpy", image_mode="RGBA",
                                    sources=["upload"], elem_id="inpaint-editor",
                                    brush=gr.Brush(default_size=6, colors=["#ff00ff"], color_mode="fixed"))
            if demo.faces:
                picker = gr.Gallery(demo.faces, label="Or pick a held-out face", columns=8, height=140,
                                    allow_preview=False)
                picker.select(demo.pick_face, None, editor, api_name=False)
            with gr.Row():
                method = gr.Radio(list(METHODS), value="repaint", label="Method")
                edit_steps = gr.Slider(10, 1000, value=100, step=10, label="Steps")
                edit_seed = gr.Number(0, precision=0, label="Seed")
            edit_estimate = gr.Markdown(demo.edit_estimate("repaint", 100))
            for control in (method, edit_steps):
                control.change(demo.edit_estimate, [method, edit_steps], edit_estimate, api_name=False)
            inpaint_button = gr.Button("Inpaint", variant="primary", elem_id="inpaint-button")
            with gr.Row():
                seen = gr.Image(label="What the model keeps", type="pil", format="png")
                filled = gr.Image(label="Inpainted", type="pil", format="png", elem_id="inpaint-result")
            inpaint_button.click(demo.inpaint, [editor, method, edit_steps, edit_seed], [seen, filled],
                                 api_name="inpaint")
        with gr.Tab("Colorize"):
            with gr.Row(elem_id="colorize-inputs"):
                colour_input = gr.Image(label="Face (its grey version is coloured)", type="numpy",
                                        sources=["upload"])
            with gr.Row():
                colour_method = gr.Radio(list(METHODS), value="repaint", label="Method")
                colour_steps = gr.Slider(10, 1000, value=100, step=10, label="Steps")
                colour_seed = gr.Number(0, precision=0, label="Seed")
            colour_button = gr.Button("Colorize", variant="primary", elem_id="colorize-button")
            with gr.Row():
                grey = gr.Image(label="Grey input", type="pil", format="png")
                coloured = gr.Image(label="Colorized", type="pil", format="png", elem_id="colorize-result")
            colour_button.click(demo.colorize, [colour_input, colour_method, colour_steps, colour_seed],
                                [grey, coloured], api_name="colorize")
        with gr.Tab("Interpolate"):
            with gr.Row(elem_id="interpolate-inputs"):
                first = gr.Image(label="First face", type="numpy", sources=["upload"])
                second = gr.Image(label="Second face", type="numpy", sources=["upload"])
            with gr.Row():
                frames = gr.Slider(2, MAX_BATCH, value=8, step=1, label="Frames")
                morph_steps = gr.Slider(10, 500, value=50, step=10, label="DDIM steps")
            morph_button = gr.Button("Interpolate", variant="primary", elem_id="interpolate-button")
            strip = gr.Gallery(label="Frames", columns=8, format="png", elem_id="interpolate-gallery")
            morph_button.click(demo.interpolate, [first, second, frames, morph_steps], strip, api_name="interpolate")
    return app


def launch(app: gr.Blocks, host: str, port: int, max_queue: int, block: bool = True):
    """One request at a time, at most ``max_queue`` waiting; offline: no share link, local fonts, no SSR server."""
    app.queue(default_concurrency_limit=1, max_size=max_queue)
    return app.launch(server_name=host, server_port=port, share=False, prevent_thread_lock=not block, quiet=True,
                      show_error=True, max_file_size="10mb", ssr_mode=False, footer_links=["api"],
                      theme=gr.themes.Default(**LOCAL_FONTS))


def heldout_faces(celeba: str | None, prep: Preprocessing, count: int = 16) -> list[Image.Image]:
    """The first ``count`` faces of CelebA's test split (never trained on), to pick from in the Inpaint tab."""
    if celeba is None:
        return []
    from .data.celeba import load_eval_images

    pixels = load_eval_images(celeba, "test", prep.resolution, count, prep=prep)
    return [Image.fromarray(image) for image in pixels.permute(0, 2, 3, 1).numpy()]


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="pretrained/celeba-64")
    parser.add_argument("--attributes_model", default=None,
                        help="an attribute model (e.g. pretrained/celeba-64-attributes) for the Attributes tab")
    parser.add_argument("--celeba", default=None, help="CelebA folder: offer its held-out test faces to edit")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--max_queue", type=int, default=4, help="requests that may wait; more are refused")
    parser.add_argument("--mixed_precision", default=None, choices=["no", "bf16"], help=MIXED_PRECISION_HELP)
    parser.add_argument("--device", type=device_argument, default=DEFAULT_DEVICE)
    args = parser.parse_args(argv)
    if args.max_queue < 1 or not 0 < args.port < 65536:
        raise ValueError("--max_queue must be >= 1 and --port in 1-65535")
    pipe = load_pipeline(args.model, args.device)
    attribute_pipe = load_pipeline(args.attributes_model, args.device) if args.attributes_model else None
    demo = FaceDemo(pipe, args.mixed_precision, heldout_faces(args.celeba, pipeline_preprocessing(pipe)),
                    attribute_pipe)
    print(f"serving {args.model} on http://{args.host}:{args.port}", flush=True)
    launch(build_demo(demo), args.host, args.port, args.max_queue)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
