"""Prompt encoding without CLIP's 77-token cut: long prompts in 75-token chunks, as the web UIs do.

CLIP's text encoder reads 77 positions: a BOS token, 75 prompt tokens, an EOS token. diffusers
truncates anything longer (with only a log warning), so the tail of a long tag list, often the
quality and score tags, silently has no effect. AUTOMATIC1111's web UI, which most pony prompts
were written for, instead:

1. tokenizes the whole prompt without truncation;
2. splits the tokens into chunks of 75; a chunk that would cut through a tag is broken after the
   last comma instead, if one lies within the last 20 tokens (its `comma_padding_backtrack`), so
   a tag is not split over two chunks unless it sits at the end of a long comma-free stretch;
3. wraps every chunk in BOS/EOS and pads it to 77 with the padding token (EOS for SD 1.x);
4. runs the text encoder on every chunk as a sequence of its own (here: one batched call) and
   concatenates the hidden states along the sequence axis: a 2-chunk prompt is a (1, 154, 768)
   conditioning. The UNet's cross-attention reads any sequence length;
5. pads the shorter of prompt and negative prompt with empty chunks (the encoding of "") so both
   have the same shape, as classifier-free guidance needs.

For a prompt and negative prompt of at most 75 tokens each this is exactly what the pipeline's
own `encode_prompt` computes, bit for bit (one chunk each, the same token ids, the same single
text-encoder call), so short prompts draw the same pictures as `pipe(prompt=...)`.

A model whose captions were cut at 77 tokens in training (`caption.long_prompts = "truncate"`,
e.g. V2) is encoded the way its tooling did: each prompt cut at 75 tokens, one 77-token window
each, so a long negative prompt can never pad the positive into a second chunk.

SD 2.x reads one OpenCLIP tower the same way. SDXL reads two towers over the same windows (both
tokenizers share CLIP's BPE vocabulary, so the chunk breaks are the same), concatenates their
hidden states along the feature axis (768 + 1280 = 2048 for the real model) and takes the pooled
embedding from text_encoder_2's projection of the FIRST chunk, as A1111 does
(`modules/sd_hijack_clip.py`, `FrozenCLIPEmbedderWithCustomWordsBase.forward`:
`return torch.hstack(zs), zs[0].pooled`). An empty SDXL negative prompt is all zeros, hidden
states and pooled, as A1111 (`modules/sd_models_xl.py`: `force_zero_negative_prompt`) and
diffusers (`force_zeros_for_empty_prompt`) do.

CLIP skip (`ModelEntry.clip_skip`) counts like A1111: 1 = the tower's last layer, 2 = the one
before it, and so on:
- SD 1.x/2.x: layer `-k`, then the final layer norm (A1111 `FrozenCLIPEmbedderWithCustomWords.
  encode_with_transformers`: `hidden_states[-CLIP_stop_at_last_layers]` then
  `final_layer_norm`; diffusers' `encode_prompt(clip_skip=k - 1)` computes the same). For SD 2.x
  "layer 1" is diffusers' converted text encoder's last layer, which is already OpenCLIP's
  penultimate one (the 24th layer is dropped at conversion; SD 2's own `layer: penultimate`).
- SDXL: layer `-k` of BOTH towers, WITHOUT the final layer norm. SDXL was trained on the
  penultimate layer of both (Stability-AI/generative-models `sgm/modules/encoders/modules.py`:
  `FrozenOpenCLIPEmbedder2` returns `outputs["penultimate"]` without `ln_final` when not
  legacy, and the SDXL config uses `layer: hidden, layer_idx: 11` for CLIP-L), i.e. k = 2: what
  A1111 always uses for SDXL (`FrozenCLIPEmbedderForSDXLWithCustomWords`), what ComfyUI's
  `CLIPSetLastLayer -2` selects on both towers (`comfy/sdxl_clip.py`: `SDXLClipModel.clip_layer`
  sets both, `layer_norm_hidden_state=False`), and diffusers' SDXL default (`hidden_states[-2]`;
  its `clip_skip=j` means `hidden_states[-(j + 2)]`). k = 1 is the last layer (ComfyUI's
  `CLIPSetLastLayer -1`): the "low quality blobs" Pony Diffusion V6 XL's card warns about, so
  SDXL entries say `clip_skip = 2`. The pooled embedding is always the last layer's, normed and
  projected (sgm's `pool`), whatever the skip.

Left out on purpose: A1111's emphasis syntax (`(tag:1.2)`, `[tag]`) and `BREAK`; tags are plain
text here, and brackets and colons mean something else in derpibooru tags.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.loaders import TextualInversionLoaderMixin

# From where each is defined: diffusers' top level shows type checkers stand-in classes.
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import (
    StableDiffusionImg2ImgPipeline,
)
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import (
    StableDiffusionXLPipeline,
)
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_img2img import (
    StableDiffusionXLImg2ImgPipeline,
)

from ponybot_core.config import LongPrompts, ModelEntry

# The pipelines whose text encoders are read here: text to image, and their img2img views.
SD1Pipeline = StableDiffusionPipeline | StableDiffusionImg2ImgPipeline
XLPipeline = StableDiffusionXLPipeline | StableDiffusionXLImg2ImgPipeline
AnyPipeline = SD1Pipeline | XLPipeline

# A1111's `comma_padding_backtrack` default: how far back a chunk break may move to a comma.
COMMA_BACKTRACK = 20


@dataclass(frozen=True)
class TextOptions:
    """How one model reads its prompts (from its config entry)."""

    clip_skip: int = 1
    # Cut each prompt at one window instead of chunking it (`caption.long_prompts`).
    truncate: bool = False

    @classmethod
    def of(cls, entry: ModelEntry | None) -> TextOptions:
        if entry is None:
            return cls()
        return cls(clip_skip=entry.clip_skip,
                   truncate=entry.caption.long_prompts is LongPrompts.TRUNCATE)


@dataclass(frozen=True)
class Encoded:
    """A job's conditioning, for `pipe(prompt_embeds=..., negative_prompt_embeds=...)` (and
    for SDXL `pooled_prompt_embeds=..., negative_pooled_prompt_embeds=...`).

    The embeddings are (count, chunks * 77, hidden size), the pooled ones (count, projection
    size), already repeated once per image."""

    prompt_embeds: torch.Tensor = field(repr=False)
    negative_prompt_embeds: torch.Tensor = field(repr=False)
    # Prompt tokens without BOS/EOS, as the user would count them.
    tokens: int
    negative_tokens: int
    # Chunks of 75 tokens in each tensor (prompt and negative are padded to the same number).
    chunks: int
    chunk_tokens: int = 75
    # SDXL only: text_encoder_2's projected pooled output of the first chunk.
    pooled_prompt_embeds: torch.Tensor | None = field(default=None, repr=False)
    negative_pooled_prompt_embeds: torch.Tensor | None = field(default=None, repr=False)
    # The prompts were cut at one window (a truncating model), not chunked.
    truncated: bool = False

    def note(self) -> str | None:
        """What to tell the user when the prompt did not fit in one CLIP window; None if it did."""
        if self.truncated:
            if self.tokens <= self.chunk_tokens:
                return None
            return (f"prompt is {self.tokens} tokens: this model reads the first "
                    f"{self.chunk_tokens}, the rest was left out")
        if self.chunks <= 1:
            return None
        what = "prompt" if self.tokens > self.chunk_tokens else "negative prompt"
        count = self.tokens if what == "prompt" else self.negative_tokens
        return (
            f"{what} is {count} tokens: encoded in {self.chunks} chunks of {self.chunk_tokens}"
        )

    def pipeline_kwargs(self) -> dict[str, torch.Tensor]:
        """The conditioning as diffusers' keyword arguments."""
        kwargs = {"prompt_embeds": self.prompt_embeds,
                  "negative_prompt_embeds": self.negative_prompt_embeds}
        if self.pooled_prompt_embeds is not None and \
                self.negative_pooled_prompt_embeds is not None:
            kwargs["pooled_prompt_embeds"] = self.pooled_prompt_embeds
            kwargs["negative_pooled_prompt_embeds"] = self.negative_pooled_prompt_embeds
        return kwargs


def concatenated(encoded: Sequence[Encoded]) -> dict[str, torch.Tensor]:
    """The conditioning of several jobs of the same prompt length, as one batch."""
    parts = [e.pipeline_kwargs() for e in encoded]
    return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}


def is_xl(pipe: Any) -> bool:
    return isinstance(pipe, StableDiffusionXLPipeline | StableDiffusionXLImg2ImgPipeline)


@dataclass(frozen=True)
class _Tower:
    tokenizer: Any
    encoder: Any


def _towers(pipe: AnyPipeline) -> list[_Tower]:
    if is_xl(pipe):
        return [_Tower(pipe.tokenizer, pipe.text_encoder),
                _Tower(pipe.tokenizer_2, pipe.text_encoder_2)]
    return [_Tower(pipe.tokenizer, pipe.text_encoder)]


def tokenize(pipe: AnyPipeline, text: str, tokenizer: Any = None) -> list[int]:
    """The prompt's token ids without BOS/EOS and without truncation."""
    tokenizer = tokenizer if tokenizer is not None else pipe.tokenizer
    if isinstance(pipe, TextualInversionLoaderMixin):
        text = pipe.maybe_convert_prompt(text, tokenizer)
    # verbose=False: the "longer than the maximum sequence length" warning is what we handle.
    return tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids


def split_chunks(
    ids: list[int], *, size: int = 75, comma_id: int | None = None, backtrack: int = COMMA_BACKTRACK
) -> list[list[int]]:
    """Token ids -> chunks of at most `size` tokens, A1111's way (see the module docstring).

    A chunk full at `size` tokens whose last comma is at most `backtrack` tokens back ends
    after that comma; the tokens after it start the next chunk. Always at least one chunk.
    """
    chunks: list[list[int]] = []
    chunk: list[int] = []
    last_comma = -1
    for token in ids:
        if token == comma_id:
            last_comma = len(chunk)
        elif backtrack and len(chunk) == size and last_comma != -1 and (
            len(chunk) - last_comma <= backtrack
        ):
            chunks.append(chunk[: last_comma + 1])
            chunk = chunk[last_comma + 1 :]
            last_comma = -1
        if len(chunk) == size:
            chunks.append(chunk)
            chunk = []
            last_comma = -1
        chunk.append(token)
    if chunk or not chunks:
        chunks.append(chunk)
    return chunks


def _comma_id(pipe: AnyPipeline) -> int | None:
    """The id of the tag-separating comma (`,</w>` in CLIP's vocabulary), if there is one."""
    tokenizer = pipe.tokenizer
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    return None if comma is None or comma == tokenizer.unk_token_id else comma


def _window(pipe: AnyPipeline) -> int:
    """Positions the text encoder reads at once (77 for CLIP)."""
    return int(pipe.tokenizer.model_max_length)


def _same_windows(chunks: list[list[int]], ids: list[int]) -> list[list[int]]:
    """`ids` (another tower's tokens of the same text) cut where `chunks` were cut."""
    out, start = [], 0
    for chunk in chunks:
        out.append(ids[start:start + len(chunk)])
        start += len(chunk)
    return out


def _hidden(encoder: Any, ids: torch.Tensor, attention_mask: torch.Tensor | None,
            clip_skip: int, xl: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(hidden states of layer `clip_skip` as A1111 counts, pooled projection or None)."""
    layers = int(encoder.config.num_hidden_layers)
    if not 1 <= clip_skip <= layers:
        raise ValueError(f"clip_skip {clip_skip}: the text encoder has {layers} layers")
    states = xl or clip_skip > 1
    out = encoder(ids, attention_mask=attention_mask, output_hidden_states=states)
    pooled = getattr(out, "text_embeds", None)
    if xl:
        hidden = out.hidden_states[-clip_skip]
    elif clip_skip > 1:
        # transformers 5 has the norm on the model itself, 4.x on its `text_model`.
        norm = getattr(encoder, "final_layer_norm", None) or encoder.text_model.final_layer_norm
        hidden = norm(out.hidden_states[-clip_skip])
    else:
        hidden = out.last_hidden_state
    return hidden, pooled


def _encode_chunks(
    pipe: AnyPipeline, tower: _Tower, chunks: list[list[int]], device: torch.device,
    clip_skip: int,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(1, len(chunks), 77, hidden) for every chunk wrapped in BOS/EOS and padded, each its own
    sequence; and the first chunk's pooled output, (1, projection), when the tower has one."""
    tokenizer, window = tower.tokenizer, _window(pipe)
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    rows = [[bos, *chunk, eos] + [pad] * (window - 2 - len(chunk)) for chunk in chunks]
    ids = torch.tensor(rows, dtype=torch.long, device=device)
    attention_mask = None
    if getattr(tower.encoder.config, "use_attention_mask", False):
        # Like the tokenizer's mask: BOS, the tokens and EOS count, the padding does not.
        attention_mask = torch.tensor(
            [[1] * (len(chunk) + 2) + [0] * (window - 2 - len(chunk)) for chunk in chunks],
            device=device,
        )
    hidden, pooled = _hidden(tower.encoder, ids, attention_mask, clip_skip, is_xl(pipe))
    return hidden.unsqueeze(0), (pooled[:1] if pooled is not None else None)


def _encode(pipe: AnyPipeline, per_tower: list[list[list[int]]], device: torch.device,
            clip_skip: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(1, chunks * 77, hidden of all towers), pooled of the last tower that has one."""
    hiddens, pooled = [], None
    for tower, chunks in zip(_towers(pipe), per_tower, strict=True):
        hidden, tower_pooled = _encode_chunks(pipe, tower, chunks, device, clip_skip)
        hiddens.append(hidden.to(dtype=tower.encoder.dtype))
        pooled = tower_pooled if tower_pooled is not None else pooled
    joined = torch.cat(hiddens, dim=-1)  # SDXL: CLIP-L's features, then OpenCLIP bigG's
    _, count, window, width = joined.shape
    return joined.reshape(1, count * window, width), pooled


def _repeat(embeds: torch.Tensor, count: int) -> torch.Tensor:
    # The way diffusers' encode_prompt duplicates embeddings per image (mps-friendly).
    if embeds.ndim == 2:
        return embeds.repeat(1, count).view(embeds.shape[0] * count, -1)
    batch, length, _ = embeds.shape
    return embeds.repeat(1, count, 1).view(batch * count, length, -1)


@torch.inference_mode()
def encode_prompts(
    pipe: AnyPipeline,
    prompt: str,
    negative_prompt: str | None = None,
    count: int = 1,
    *,
    backtrack: int = COMMA_BACKTRACK,
    options: TextOptions | None = None,
) -> Encoded:
    """Encode `prompt` and `negative_prompt` (None = "") for `count` images: in chunks of 75,
    or cut at 75 for a truncating model (`options`)."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    options = options or TextOptions()
    device = pipe._execution_device
    size = _window(pipe) - 2
    comma_id = _comma_id(pipe)
    towers = _towers(pipe)

    def chunked(text: str) -> tuple[int, list[list[list[int]]]]:
        ids = [tokenize(pipe, text, tower.tokenizer) for tower in towers]
        if options.truncate:
            return len(ids[0]), [[tower_ids[:size]] for tower_ids in ids]
        first = split_chunks(ids[0], size=size, comma_id=comma_id, backtrack=backtrack)
        # The same windows for every tower (one vocabulary: the same ids, the same breaks).
        return len(ids[0]), [first, *(_same_windows(first, other) if len(other) == len(ids[0])
                                      else split_chunks(other, size=size, comma_id=comma_id,
                                                        backtrack=backtrack)
                                      for other in ids[1:])]

    tokens, positive = chunked(prompt)
    negative_tokens, negative = chunked(negative_prompt or "")
    chunks = max(len(c) for c in (*positive, *negative))
    # Empty chunks encode to the embedding of "": A1111's padding of the shorter conditioning.
    for per_tower in (positive, negative):
        for tower_chunks in per_tower:
            tower_chunks += [[]] * (chunks - len(tower_chunks))

    # One text-encoder call per prompt and tower (not one for both prompts): with a single
    # chunk each this is the same computation as diffusers' encode_prompt, bit for bit.
    prompt_embeds, pooled = _encode(pipe, positive, device, options.clip_skip)
    if is_xl(pipe) and not negative_prompt and getattr(
            pipe.config, "force_zeros_for_empty_prompt", False):
        negative_embeds = torch.zeros_like(prompt_embeds)
        negative_pooled = torch.zeros_like(pooled) if pooled is not None else None
    else:
        negative_embeds, negative_pooled = _encode(pipe, negative, device, options.clip_skip)
    dtype = towers[-1].encoder.dtype
    return Encoded(
        prompt_embeds=_repeat(prompt_embeds.to(dtype=dtype, device=device), count),
        negative_prompt_embeds=_repeat(negative_embeds.to(dtype=dtype, device=device), count),
        tokens=tokens,
        negative_tokens=negative_tokens,
        chunks=chunks,
        chunk_tokens=size,
        pooled_prompt_embeds=(_repeat(pooled.to(dtype=dtype, device=device), count)
                              if pooled is not None else None),
        negative_pooled_prompt_embeds=(
            _repeat(negative_pooled.to(dtype=dtype, device=device), count)
            if negative_pooled is not None else None),
        truncated=options.truncate,
    )
