"""``m2gan-demo``: play with a trained model in the browser — prompt to images, image to caption.

    pip install -e '.[demo]'
    m2gan-demo runs/m2gan/<run id>/checkpoints/last.ckpt        # http://127.0.0.1:7860

Two tabs, served by Gradio on this machine only unless ``--host`` says otherwise: *Text → image*
(prompt, number of images, seed, truncation) and *Image → text* (an uploaded image, beam width).
Nothing is sent anywhere: Gradio's usage analytics are off and no public share link is made.
Every input goes through the sampling pipeline's own checks; a bad one is shown as one message.
"""

from __future__ import annotations

import argparse
import os
import sys

MAX_IMAGES = 16
"""Most images per prompt the demo draws at once."""


def build_demo(model, title: str = "M2GAN"):
    """The Gradio app for a :class:`~m2gan.pipeline.SamplingPipeline`; API names ``/generate`` and ``/caption``."""
    import gradio as gr

    def generate(prompt: str, num_images: float, seed: float, truncation: float):
        try:
            images = model.generate([prompt], num_images=int(num_images), seed=int(seed), truncation=truncation or None)
        except ValueError as error:
            raise gr.Error(str(error)) from None
        return [image.permute(1, 2, 0).numpy() for image in images]  # (H, W, 3) uint8 each

    def caption(image, num_beams: float) -> str:
        if image is None:
            raise gr.Error("upload an image first")
        try:
            return model.caption([image], num_beams=int(num_beams))[0]
        except ValueError as error:
            raise gr.Error(str(error)) from None

    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(f"# {title}")
        with gr.Tab("Text → image"):
            prompt = gr.Textbox(label="Prompt", value="a large red circle in the top left")
            with gr.Row():
                num_images = gr.Slider(1, MAX_IMAGES, value=4, step=1, label="Images")
                seed = gr.Number(value=0, precision=0, minimum=0, label="Seed")
                truncation = gr.Slider(0, 3, value=0, step=0.05, label="Truncation ψ (0 = off)")
            draw = gr.Button("Generate", variant="primary")
            gallery = gr.Gallery(label="Images", columns=4, format="png")  # lossless: the pixels drawn
            draw.click(generate, [prompt, num_images, seed, truncation], gallery, api_name="generate")
        with gr.Tab("Image → text"):
            image = gr.Image(type="pil", label="Image")
            num_beams = gr.Slider(1, 8, value=1, step=1, label="Beams (1 = greedy)")
            read = gr.Button("Caption", variant="primary")
            text = gr.Textbox(label="Caption")
            read.click(caption, [image, num_beams], text, api_name="caption")
    return demo


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``m2gan-demo``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="m2gan-demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", help="a .ckpt written by train.py, or a folder written by m2gan-export")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=7860, help="port to serve on")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: cuda if present")
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        print(f"m2gan-demo: error: --port must be 1 to 65535, got {args.port}", file=sys.stderr)
        return 1
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio  # noqa: F401
    except ImportError:
        print("m2gan-demo: error: needs Gradio: pip install 'm2gan[demo]'", file=sys.stderr)
        return 1
    from m2gan.export import load
    from m2gan.sample import pick_device

    try:
        model = load(args.checkpoint, map_location=pick_device(args.device))
    except (ValueError, FileNotFoundError) as error:
        print(f"m2gan-demo: error: {error}", file=sys.stderr)
        return 1
    try:
        build_demo(model).launch(server_name=args.host, server_port=args.port, share=False)
    except OSError as error:
        print(f"m2gan-demo: error: cannot serve on {args.host}:{args.port} ({error})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
