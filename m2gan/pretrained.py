"""Pretrained text models read from a local folder with ``transformers``: CLIP text, T5 encoder, BERT-style.

Nothing is downloaded: a folder written by ``save_pretrained`` (or a downloaded hub snapshot) is
read with ``local_files_only=True``. A folder is known by the SHA-256 of the files a model is read
from (:func:`model_files`), so a checkpoint can name the folder without holding its frozen weights,
and loading can refuse a folder whose weights or tokenizer changed since.

``transformers`` is optional (``pip install -e '.[hf]'``); it is imported only here, and only when
a folder is read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

KINDS = {
    "clip": "clip",  # a whole CLIP model: its text tower is read
    "clip_text_model": "clip",
    "t5": "t5",  # T5's encoder only, even from a whole encoder-decoder folder
    "mt5": "t5",
    "bert": "bert",
    "roberta": "bert",
    "xlm-roberta": "bert",
    "distilbert": "bert",
    "deberta-v2": "bert",
    "electra": "bert",
    "mpnet": "bert",
}
"""The ``model_type`` values of ``config.json`` that can encode captions, and the family each belongs to."""
SPECIAL_TOKENS = {"clip": ("bos_token", "eos_token"), "t5": ("eos_token",), "bert": ("cls_token", "sep_token")}
"""The special tokens a family's model expects around a caption; its tokenizer must have them."""
IGNORED_SUFFIXES = (".md", ".h5", ".msgpack", ".onnx", ".ot", ".tflite")
"""Files of a model folder that transformers does not read into a PyTorch model (docs, other frameworks' weights)."""


class PretrainedTextError(ValueError):
    """A folder that does not hold a usable pretrained text model; the message names it and the reason."""


@dataclass
class PretrainedText:
    """A pretrained text model and its tokenizer, as read from ``folder``."""

    folder: Path
    model: nn.Module
    tokenizer: Any  # a transformers PreTrainedTokenizerBase
    kind: str  # "clip", "t5" or "bert"
    digest: bytes  # SHA-256 of the folder's model files

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def max_positions(self) -> int | None:
        """The most tokens the model embeds positions for (None: relative positions, as T5's)."""
        return getattr(self.model.config, "max_position_embeddings", None)


def model_files(folder: Path) -> list[Path]:
    """The files of ``folder`` that make its model and tokenizer, sorted: what is hashed and exported.

    Everything but hidden files, documentation and other frameworks' weights; ``*.bin`` weights
    count only when the folder has no ``*.safetensors`` (transformers reads those first).
    """
    files = sorted(
        path
        for path in folder.rglob("*")
        if path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
        and not path.name.endswith(IGNORED_SUFFIXES)
    )
    if any(path.suffix == ".safetensors" for path in files):
        files = [path for path in files if path.suffix != ".bin"]
    return files


def folder_digest(folder: Path) -> bytes:
    """SHA-256 over the model files' relative paths and contents."""
    digest = hashlib.sha256()
    for path in model_files(folder):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with path.open("rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
    return digest.digest()


def copy_model_files(folder: Path, destination: Path) -> None:
    """Copy the model files of ``folder`` into ``destination`` byte for byte (so the copy hashes the same)."""
    for path in model_files(folder):
        target = destination / path.relative_to(folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)


@contextlib.contextmanager
def _quiet(transformers: Any) -> Iterator[None]:
    """Silence transformers' load reports and progress bars: a training run prints its own lines."""
    logging = transformers.utils.logging
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def _first_line(error: Exception) -> str:
    return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:200]}"


def load_pretrained_text(folder: str | Path) -> PretrainedText:
    """Read the text model and tokenizer saved in ``folder``, in eval mode.

    Raises:
        PretrainedTextError: no such folder, no model in it, a model of a kind that cannot encode
            captions, a tokenizer that does not belong to the model, or no ``transformers``.
    """
    folder = Path(folder).expanduser()
    where = f"text encoder {folder}"
    if not folder.is_dir():
        raise PretrainedTextError(f"{where}: no such folder")
    if not (folder / "config.json").is_file():
        raise PretrainedTextError(f"{where}: holds no transformers model (no config.json)")
    files = model_files(folder)
    if not any(path.suffix in (".safetensors", ".bin") for path in files):
        raise PretrainedTextError(f"{where}: holds no model weights (no *.safetensors or pytorch_model.bin)")
    try:
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as error:
        raise PretrainedTextError(f"{where}: config.json is not a model config ({_first_line(error)})") from None
    kind = KINDS.get(model_type)
    if kind is None:
        raise PretrainedTextError(
            f"{where}: holds a {model_type!r} model, which cannot encode captions here; supported model types: "
            + ", ".join(sorted(KINDS))
        )
    try:
        import transformers
    except ImportError:
        raise PretrainedTextError(
            f"{where}: reading it needs the transformers package: pip install -e '.[hf]'"
        ) from None
    model_class = {
        "clip": transformers.CLIPTextModel,
        "t5": transformers.MT5EncoderModel if model_type == "mt5" else transformers.T5EncoderModel,
        "bert": transformers.AutoModel,
    }[kind]
    with _quiet(transformers):
        try:
            model = model_class.from_pretrained(folder, local_files_only=True)
        except Exception as error:  # noqa: BLE001 - transformers raises many error types for bad folders
            raise PretrainedTextError(f"{where}: its model could not be read ({_first_line(error)})") from None
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except Exception as error:  # noqa: BLE001
            reason = _first_line(error)
            raise PretrainedTextError(f"{where}: holds no tokenizer that could be read ({reason})") from None
    if not getattr(tokenizer, "is_fast", False):
        raise PretrainedTextError(
            f"{where}: its tokenizer ({type(tokenizer).__name__}) is not a fast (tokenizers-backed) one, "
            "which reading caption words needs; save the model's fast tokenizer (tokenizer.json) in the folder"
        )
    embedded = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > embedded:
        raise PretrainedTextError(
            f"{where}: its tokenizer has {len(tokenizer)} tokens but the model embeds only {embedded}: "
            "the tokenizer belongs to another model"
        )
    missing = [name for name in SPECIAL_TOKENS[kind] if getattr(tokenizer, f"{name}_id", None) is None]
    if missing:
        raise PretrainedTextError(
            f"{where}: its tokenizer lacks the {', '.join(missing)} a {model_type} model expects: "
            "the tokenizer belongs to another model"
        )
    return PretrainedText(folder, model.eval(), tokenizer, kind, folder_digest(folder))


def write_random_text_model(
    folder: str | Path,
    kind: str,
    words: list[str],
    hidden_size: int = 32,
    layers: int = 2,
    heads: int = 4,
    seed: int = 0,
) -> Path:
    """Save a randomly initialised model of ``kind`` ("clip", "t5" or "bert") and a tokenizer to ``folder``.

    For trying the plumbing, tests and timing without downloads: the tokenizer knows ``words``
    whole and spells any other word in letters; the model is the family's own class at the given
    sizes (the real ones are e.g. 512 wide, 12 layers for CLIP ViT-B's text tower).
    """
    import string

    import torch
    import transformers

    folder = Path(folder)
    letters = list(string.ascii_lowercase + string.digits + string.punctuation)
    words = list(dict.fromkeys(w.lower() for w in words))
    if kind == "clip":
        vocab: dict[str, int] = {}
        merges: list[tuple[str, str]] = []
        for token in [*letters, *(c + "</w>" for c in letters)]:
            vocab.setdefault(token, len(vocab))
        for word in words:  # merge letter by letter into the whole word
            parts = [*word[:-1], word[-1] + "</w>"]
            while len(parts) > 1:
                if (parts[0], parts[1]) not in merges:
                    merges.append((parts[0], parts[1]))
                vocab.setdefault(parts[0] + parts[1], len(vocab))
                parts = [parts[0] + parts[1], *parts[2:]]
        for token in ("<|startoftext|>", "<|endoftext|>"):
            vocab.setdefault(token, len(vocab))
        tokenizer = transformers.CLIPTokenizer(vocab=vocab, merges=merges)
        config = transformers.CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=hidden_size,
            intermediate_size=4 * hidden_size,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            max_position_embeddings=77,
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
        )
        model_class = transformers.CLIPTextModel
    elif kind == "t5":
        pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
        pieces += [("▁" + word, -1.0) for word in words] + [(c, -5.0) for c in letters]
        tokenizer = transformers.T5Tokenizer(vocab=pieces, extra_ids=0)
        config = transformers.T5Config(
            vocab_size=len(pieces),
            d_model=hidden_size,
            d_kv=hidden_size // heads,
            d_ff=4 * hidden_size,
            num_layers=layers,
            num_heads=heads,
        )
        model_class = transformers.T5EncoderModel
    elif kind == "bert":
        tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *letters, *("##" + c for c in letters)]
        tokenizer = transformers.BertTokenizer(vocab={t: i for i, t in enumerate(dict.fromkeys(tokens))})
        config = transformers.BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=4 * hidden_size,
        )
        model_class = transformers.BertModel
    else:
        raise ValueError(f"kind must be 'clip', 't5' or 'bert', got {kind!r}")
    with torch.random.fork_rng(devices=[]):  # the caller's random state stays as it was
        torch.manual_seed(seed)
        model = model_class(config)
    with _quiet(transformers):
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return folder
