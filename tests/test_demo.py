"""m2gan-demo: the Gradio app, driven through Gradio's own client over HTTP on localhost (no browser)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

import m2gan
from m2gan import demo

gradio = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")


@pytest.fixture(scope="module")
def served(checkpoint):
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    model = m2gan.load(checkpoint)
    app = demo.build_demo(model)
    app.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True, share=False)
    try:
        yield model, gradio_client.Client(app.local_url, verbose=False)
    finally:
        app.close()


def test_text_to_image_tab_draws_what_generate_draws(served):
    model, client = served
    gallery = client.predict("a red circle on the left", 3, 7, 0, api_name="/generate")
    files = [item["image"] if isinstance(item, dict) else item for item in gallery]
    drawn = torch.stack([torch.from_numpy(np.asarray(Image.open(f).convert("RGB"))).permute(2, 0, 1) for f in files])
    assert torch.equal(drawn, model.generate(["a red circle on the left"], num_images=3, seed=7))
    truncated = client.predict("a red circle on the left", 1, 7, 0.5, api_name="/generate")
    path = truncated[0]["image"] if isinstance(truncated[0], dict) else truncated[0]
    expected = model.generate(["a red circle on the left"], seed=7, truncation=0.5)[0]
    assert torch.equal(torch.from_numpy(np.asarray(Image.open(path).convert("RGB"))).permute(2, 0, 1), expected)


def test_image_to_text_tab_reads_what_caption_reads(served, tmp_path):
    model, client = served
    image = model.generate(["a big blue square at the top"], seed=1)[0]
    path = tmp_path / "upload.png"
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
    text = client.predict(gradio_client.handle_file(str(path)), 2, api_name="/caption")
    assert text == model.caption([str(path)], num_beams=2)[0]


def test_a_bad_prompt_is_one_message(served):
    _, client = served
    with pytest.raises(Exception, match="prompt 0 is empty"):
        client.predict("   ", 1, 0, 0, api_name="/generate")


def test_the_command_refuses_a_bad_checkpoint_with_one_line(tmp_path, capsys):
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    assert demo.main([str(tmp_path / "bad.ckpt")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("m2gan-demo: error:") and "bad.ckpt" in err and len(err.strip().splitlines()) == 1
    assert demo.main([str(tmp_path / "bad.ckpt"), "--port", "70000"]) == 1
    assert "--port must be 1 to 65535" in capsys.readouterr().err
