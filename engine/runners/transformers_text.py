"""Text classification with Hugging Face ``transformers``, batched by a token budget.

Two kinds of model go through here:
- a sequence classifier (``AutoModelForSequenceClassification``), scored as
  ``pipeline("text-classification")`` scores it (softmax, or sigmoid for one label and
  multi-label models), so results equal the pipeline's;
- an encoder plus a linear head (``head = "file.safetensors"``): mean-pooled, L2-normalised
  embeddings (the sentence-transformers recipe) fed to the head.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from itertools import chain
from typing import Any

import numpy as np

from core.config import Settings, get_settings
from core.jobs.predictions import Prediction
from core.models.registry import ModelSpec, Task
from engine.batching import plan_batches
from engine.runners.activations import sigmoid, softmax
from engine.runners.base import Finish, ModelLoadError, Progress, Runner, top_k_columns
from engine.runners.fast_tokens import Encode, fast_encoder
from engine.runners.heads import read_head
from engine.runners.hub import load_pretrained
from engine.runners.token_prefetch import TokenPrefetch
from engine.threads import configure_torch_threads

log = logging.getLogger(__name__)

# Waits for one batch's forward pass and returns its output rows.
Waiter = Callable[[], np.ndarray]
FALLBACK_MAX_LENGTH = 512
# The inputs a text model may take, in the order they are passed.
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# The rows tokenising keeps per text: not the attention mask, which is all ones on an
# unpadded row and is made from the rows' lengths when they are padded (``_padded``).
TOKEN_ROWS = ("input_ids", "token_type_ids")


class TransformersTextRunner(Runner):
    """A runner for ``task = "text-classification"`` (or feature extraction) models."""

    def __init__(self, spec: ModelSpec, settings: Settings | None = None) -> None:
        self.spec = spec
        self.name = spec.name
        self.revision = spec.revision
        self.settings = settings or get_settings()
        self.max_batch_size = spec.batch_size(self.settings)
        self.max_batch_tokens = spec.batch_tokens(self.settings)
        self.threads = self.settings.torch_threads
        self.device = "cpu"
        self.model: Any = None
        self.tokenizer: Any = None
        self.labels: list[str] = []
        self.head: tuple[Any, Any] | None = None
        self.is_classifier = False
        self.activation = softmax
        self.max_length = FALLBACK_MAX_LENGTH
        self.first_token_only = False
        self.tokens = TokenPrefetch(self._tokenize)
        # The Rust tokenizer without offsets, when it gives the same rows (fast_tokens.py).
        self.fast_encode: Encode | None = None

    # -- setup -------------------------------------------------------------------------
    def setup(self, device: str = "cpu") -> None:
        import torch
        from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        # Our own progress bar covers the job; transformers' weight-loading bar is noise.
        hf_logging.disable_progress_bar()

        self.threads = configure_torch_threads(torch, self.settings)
        self.device = device
        self.max_batch_size = self.spec.batch_size(self.settings, device)
        self.max_batch_tokens = self.spec.batch_tokens(self.settings, device)
        self.tokenizer = load_pretrained(self.spec, AutoTokenizer.from_pretrained)
        encoder_only = self.spec.head is not None or self.spec.task == Task.FEATURE_EXTRACTION
        model_class = AutoModel if encoder_only else AutoModelForSequenceClassification
        self.model = load_pretrained(self.spec, model_class.from_pretrained, use_safetensors=True)
        self.model.eval()
        if self.spec.head is not None:
            self.head, self.labels = self._load_head(torch)
        elif not encoder_only:
            self._classify_with(self.model.config)
        self.max_length = self._max_length()
        self._choose_encoder()
        # Pruned while still fp32 on the CPU, where the check against the full layer is
        # exact; int8 and fp16 then apply to the pruned layer's modules as to any other.
        if self.is_classifier and self.settings.first_token_last_layer:
            self.first_token_only = self._prune_last_layer()
        self._apply_precision(torch)
        if isinstance(self.model, torch.nn.Module):  # not an ONNX Runtime session
            self.model.to(device)
        # Warm up once so the first real batch does not pay for lazy initialisation.
        self._run_sorted(["warm up"], None)

    def _classify_with(self, config: Any) -> None:
        """Labels and activation of a sequence classifier, as its ``config`` states them."""
        self.is_classifier = True
        self.labels = [config.id2label[i] for i in range(config.num_labels)]
        multi = config.problem_type == "multi_label_classification" or config.num_labels == 1
        self.activation = sigmoid if multi else softmax

    def _prune_last_layer(self) -> bool:
        """Compute only token 0 in the last layer, if the model checks out (first_token.py)."""
        # Deferred: it imports torch, which this module imports only in setup().
        from engine.runners import first_token

        return first_token.install(self.model, self._probe())

    def _probe(self) -> dict[str, Any]:
        """A padded batch of two texts, as torch tensors: for checks and for tracing."""
        texts = ["a probe", "a longer probe, so that the batch holds padding and a mask"]
        encoded, keys = self._encode(texts)
        return self._tensors(encoded, keys, [0, 1])

    def _choose_encoder(self) -> None:
        """Take the fast token path if it gives this tokenizer's own rows (call in setup,
        once ``max_length`` is known)."""
        self.fast_encode = fast_encoder(self.tokenizer, self.max_length, self._tokenize_in_full)

    def _tokenize(self, texts: list[str]) -> dict[str, list[Any]]:
        if self.fast_encode is not None:
            return self.fast_encode(texts)
        return self._tokenize_in_full(texts)

    def _tokenize_in_full(self, texts: list[str]) -> dict[str, list[Any]]:
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_length)
        return {key: encoded[key] for key in TOKEN_ROWS if key in encoded}

    def prefetch(self, batch: Sequence[Any]) -> None:
        """Tokenise ``batch`` (the next window's texts) in the background
        (:mod:`engine.runners.token_prefetch`)."""
        if self.tokenizer is not None:
            self.tokens.announce([str(text) for text in batch])

    def _encode(self, texts: Sequence[str]) -> tuple[Any, list[str]]:
        """Token ids of ``texts`` (truncated, not padded) and the model's input names: those
        rows, and the attention mask where the model takes one (made when padding)."""
        encoded = self.tokens.encode([str(text) for text in texts])
        takes_mask = "attention_mask" in self.tokenizer.model_input_names
        keys = [
            key
            for key in MODEL_INPUTS
            if key in encoded or (key == "attention_mask" and takes_mask)
        ]
        return encoded, keys

    def close(self) -> None:
        self.tokens.close()

    def _tensors(self, encoded: Any, keys: Sequence[str], batch: Sequence[int]) -> dict[str, Any]:
        """The rows ``batch`` of ``encoded``, padded, as the torch tensors a forward pass takes.

        Filled straight into numpy: ``tokenizer.pad`` builds Python objects per row and was
        the largest CPU cost of a GPU worker after the model (bench/README.md).
        """
        import torch

        return {
            key: torch.from_numpy(value)
            for key, value in self._padded(encoded, keys, batch).items()
        }

    def _padded(
        self, encoded: Any, keys: Sequence[str], batch: Sequence[int]
    ) -> dict[str, np.ndarray]:
        """The rows ``batch`` of ``encoded``, padded to the longest, as int64 arrays.

        One pass over all of a key's values (``np.fromiter`` over the chained rows) and one
        masked assignment, instead of a numpy conversion per row: that loop held the GIL
        the tokenizer and writer threads wait for (bench/README.md, the stand-in ceiling).
        """
        lengths = np.fromiter((len(encoded["input_ids"][i]) for i in batch), np.int64, len(batch))
        longest = int(lengths.max())
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        columns = np.arange(longest)
        # Where the real tokens go: the first (right padding) or last (left) of each row.
        real = columns >= (longest - lengths)[:, None] if left else columns < lengths[:, None]
        total = int(lengths.sum())
        fills = {
            "input_ids": self.tokenizer.pad_token_id or 0,
            "token_type_ids": getattr(self.tokenizer, "pad_token_type_id", 0) or 0,
            "attention_mask": 0,
        }
        padded = {}
        for key in keys:
            if key == "attention_mask":
                # Rows come unpadded, so every real token's mask is 1: the mask is ``real``.
                padded[key] = real.astype(np.int64)
                continue
            rows = encoded[key]
            array = np.full((len(batch), longest), fills[key], dtype=np.int64)
            # Row-major order of ``real`` is the rows' own order, value after value.
            array[real] = np.fromiter(chain.from_iterable(rows[i] for i in batch), np.int64, total)
            padded[key] = array
        return padded

    def _model_config(self) -> Any:
        """The model's ``config`` (labels, positions); the stand-in reads it without weights."""
        return self.model.config

    def _max_length(self) -> int:
        candidates = [
            self.spec.max_length,
            getattr(self._model_config(), "max_position_embeddings", None),
        ]
        model_max = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(model_max, int) and model_max < 1_000_000:
            candidates.append(model_max)
        return min([c for c in candidates if c] or [FALLBACK_MAX_LENGTH])

    def _apply_precision(self, torch: Any) -> None:
        precision = self.spec.precision
        if precision in ("int8", "onnx-int8") and self.device != "cpu":
            raise ModelLoadError(f"model {self.name!r}: precision {precision} is for CPU workers")
        if precision == "onnx-int8":
            # Deferred: ONNX and ONNX Runtime, for this precision only.
            from engine.runners.onnx_int8 import onnx_int8_model

            output = "logits" if self.is_classifier else "last_hidden_state"
            self.model = onnx_int8_model(self.model, self._probe(), output, self.threads)
        elif precision == "int8":
            # Dynamic quantization: int8 weights for every Linear, activations quantized on
            # the fly; no calibration data needed and the accuracy cost is measured in bench/.
            # Deferred: it imports torch, which this module imports only in setup().
            from engine.runners.int8 import quantize_int8

            self.model = quantize_int8(self.model)
        elif precision in ("fp16", "bf16"):
            if self.device == "cpu":
                log.warning("model %s: %s requested on CPU; using fp32", self.name, precision)
            else:
                self.model.to(torch.float16 if precision == "fp16" else torch.bfloat16)

    def _load_head(self, torch: Any) -> tuple[tuple[Any, Any], list[str]]:
        head = self.spec.head
        assert head is not None  # only called for a model with a head
        # A head is always a local file, never a hub id (see ModelSpec.file_path).
        path = self.spec.file_path(head)
        if not path.exists():
            raise ModelLoadError(
                f"model {self.name!r}: head file {head!r} not found: looked for {path} "
                f"({self.spec.where(head)})"
            )
        try:
            weight, bias, labels = read_head(path.read_bytes())
        except ModelLoadError as exc:
            raise ModelLoadError(f"model {self.name!r}: head {path}: {exc}") from exc
        return (torch.from_numpy(weight), torch.from_numpy(bias)), labels

    # -- inference -------------------------------------------------------------------------
    @property
    def _on_gpu(self) -> bool:
        return str(self.device).startswith("cuda")

    def _forward(self, features: dict[str, Any], embeddings: bool) -> np.ndarray:
        """Class scores (or, with ``embeddings``, pooled embeddings) for one padded batch."""
        return self._launch(features, embeddings)()

    def _launch(self, features: dict[str, Any], embeddings: bool) -> Waiter:
        """Queue one padded batch's forward pass; the call that waits for its output rows.

        On a GPU, torch queues the kernels and returns: the copies are non-blocking from
        pinned memory and only the waiter synchronises, when it copies the rows back. On a
        CPU the pass runs here and the waiter only converts.
        """
        import torch

        if self._on_gpu:
            # Page-locked, so that the copy to the device is asynchronous.
            features = {key: value.pin_memory() for key, value in features.items()}
        features = {
            key: value.to(self.device, non_blocking=True) for key, value in features.items()
        }
        with torch.inference_mode():
            if self.is_classifier:
                output = self.model(**features).logits.float()
            else:
                hidden = self.model(**features).last_hidden_state.float()
                mask = features["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                output = torch.nn.functional.normalize(pooled, p=2, dim=1)
                if not embeddings and self.head is not None:
                    weight, bias = self.head
                    output = output @ weight.to(output.device).T + bias.to(output.device)
        return lambda: output.cpu().numpy()

    def _start_forward(self, features: dict[str, Any], embeddings: bool) -> Waiter:
        """Start one batch's forward pass; the call that waits for its rows.

        On a GPU the pass is only queued (:meth:`_launch`), so :meth:`_start_sorted` pads the
        next batch while the device computes this one. On a CPU it runs now, in
        :meth:`_forward`.
        """
        if self._on_gpu:
            return self._launch(features, embeddings)
        rows = self._forward(features, embeddings)
        return lambda: rows

    def _run_sorted(
        self, texts: Sequence[str], progress: Progress | None, embeddings: bool = False
    ) -> np.ndarray:
        """One output row per text, in input order, computed in length-sorted batches."""
        return self._start_sorted(texts, progress, embeddings)()

    def _start_sorted(
        self, texts: Sequence[str], progress: Progress | None, embeddings: bool = False
    ) -> Callable[[], np.ndarray]:
        """Start the length-sorted batches of ``texts``; the call that waits for their rows.

        Every batch is padded and started before any is waited for: a device (a GPU, or
        the stand-in's) works on batch ``k`` while the CPU pads batch ``k + 1``, and once
        the last is queued the caller may start the next call's batches before it waits
        for these (:meth:`start_predict`). On a CPU the passes run here, one by one. Each
        batch's rows go into their places with one array assignment, not a Python
        assignment per text.
        """
        encoded, keys = self._encode(texts)
        lengths = [len(ids) for ids in encoded["input_ids"]]
        started = [
            (batch, self._start_forward(self._tensors(encoded, keys, batch), embeddings))
            for batch in plan_batches(lengths, self.max_batch_size, self.max_batch_tokens)
        ]

        def rows() -> np.ndarray:
            outputs: np.ndarray | None = None
            for batch, waiting in started:
                done = np.asarray(waiting())
                if outputs is None:
                    outputs = np.empty((len(texts), *done.shape[1:]), dtype=done.dtype)
                outputs[batch] = done
                if progress is not None:
                    progress(len(batch))
            assert outputs is not None, "plan_batches covers every text"
            return outputs

        return rows

    def embed(self, texts: Sequence[str], progress: Progress | None = None) -> np.ndarray:
        """Mean-pooled, L2-normalised embeddings (encoder models only)."""
        if self.is_classifier:
            raise ValueError(f"model {self.name!r} is a classifier, not an encoder")
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return self._run_sorted(texts, progress, embeddings=True)

    def predict(self, batch: Sequence[Any], progress: Progress | None = None) -> list[Prediction]:
        return list(self._predict_steps(batch, progress)())

    def start_predict(self, batch: Sequence[Any], progress: Progress | None = None) -> Finish:
        """Tokens, padding and every forward pass started; top-k when finished."""
        return self._predict_steps(batch, progress)

    def _predict_steps(self, batch: Sequence[Any], progress: Progress | None) -> Finish:
        if not self.labels:
            raise ValueError(f"model {self.name!r} is an encoder; it has no labels to predict")
        if not batch:
            return list
        rows = self._start_sorted([str(text) for text in batch], progress)
        k = min(self.spec.top_k, len(self.labels))
        # Columns of arrays, not a Prediction per text (engine.runners.base.TopKColumns).
        return lambda: top_k_columns(self.labels, self.activation(rows()), k)
