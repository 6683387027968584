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

Left out on purpose: A1111's emphasis syntax (`(tag:1.2)`, `[tag]`) and `BREAK`; tags are plain
text here, and brackets and colons mean something else in derpibooru tags.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers.loaders import TextualInversionLoaderMixin

# From where each is defined: diffusers' top level shows type checkers stand-in classes.
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import (
    StableDiffusionImg2ImgPipeline,
)

# The pipelines whose text encoder is read here: text to image, and its img2img view.
SD1Pipeline = StableDiffusionPipeline | StableDiffusionImg2ImgPipeline

# A1111's `comma_padding_backtrack` default: how far back a chunk break may move to a comma.
COMMA_BACKTRACK = 20


@dataclass(frozen=True)
class Encoded:
    """A job's conditioning, for `pipe(prompt_embeds=..., negative_prompt_embeds=...)`.

    Both tensors are (count, chunks * 77, hidden size), already repeated once per image."""

    prompt_embeds: torch.Tensor = field(repr=False)
    negative_prompt_embeds: torch.Tensor = field(repr=False)
    # Prompt tokens without BOS/EOS, as the user would count them.
    tokens: int
    negative_tokens: int
    # Chunks of 75 tokens in each tensor (prompt and negative are padded to the same number).
    chunks: int
    chunk_tokens: int = 75

    def note(self) -> str | None:
        """What to tell the user when the prompt did not fit in one CLIP window; None if it did."""
        if self.chunks <= 1:
            return None
        what = "prompt" if self.tokens > self.chunk_tokens else "negative prompt"
        count = self.tokens if what == "prompt" else self.negative_tokens
        return (
            f"{what} is {count} tokens: encoded in {self.chunks} chunks of {self.chunk_tokens}"
        )


def tokenize(pipe: SD1Pipeline, text: str) -> list[int]:
    """The prompt's token ids without BOS/EOS and without truncation."""
    if isinstance(pipe, TextualInversionLoaderMixin):
        text = pipe.maybe_convert_prompt(text, pipe.tokenizer)
    # verbose=False: the "longer than the maximum sequence length" warning is what we handle.
    return pipe.tokenizer(
        text, add_special_tokens=False, truncation=False, verbose=False
    ).input_ids


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


def _comma_id(pipe: SD1Pipeline) -> int | None:
    """The id of the tag-separating comma (`,</w>` in CLIP's vocabulary), if there is one."""
    tokenizer = pipe.tokenizer
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    return None if comma is None or comma == tokenizer.unk_token_id else comma


def _window(pipe: SD1Pipeline) -> int:
    """Positions the text encoder reads at once (77 for CLIP)."""
    return int(pipe.tokenizer.model_max_length)


def _encode_chunks(
    pipe: SD1Pipeline, chunks: list[list[int]], device: torch.device
) -> torch.Tensor:
    """(1, len(chunks) * 77, hidden): every chunk wrapped in BOS/EOS, padded, its own sequence."""
    tokenizer, window = pipe.tokenizer, _window(pipe)
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    rows = [[bos, *chunk, eos] + [pad] * (window - 2 - len(chunk)) for chunk in chunks]
    ids = torch.tensor(rows, dtype=torch.long, device=device)
    attention_mask = None
    if getattr(pipe.text_encoder.config, "use_attention_mask", False):
        # Like the tokenizer's mask: BOS, the tokens and EOS count, the padding does not.
        attention_mask = torch.tensor(
            [[1] * (len(chunk) + 2) + [0] * (window - 2 - len(chunk)) for chunk in chunks],
            device=device,
        )
    hidden = pipe.text_encoder(ids, attention_mask=attention_mask)[0]
    return hidden.reshape(1, len(chunks) * window, hidden.shape[-1])


def _repeat(embeds: torch.Tensor, count: int) -> torch.Tensor:
    # The way diffusers' encode_prompt duplicates embeddings per image (mps-friendly).
    batch, length, _ = embeds.shape
    return embeds.repeat(1, count, 1).view(batch * count, length, -1)


@torch.inference_mode()
def encode_prompts(
    pipe: SD1Pipeline,
    prompt: str,
    negative_prompt: str | None = None,
    count: int = 1,
    *,
    backtrack: int = COMMA_BACKTRACK,
) -> Encoded:
    """Encode `prompt` and `negative_prompt` (None = "") for `count` images, in chunks of 75."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    device = pipe._execution_device
    size = _window(pipe) - 2
    comma_id = _comma_id(pipe)

    positive_ids = tokenize(pipe, prompt)
    negative_ids = tokenize(pipe, negative_prompt or "")
    positive = split_chunks(positive_ids, size=size, comma_id=comma_id, backtrack=backtrack)
    negative = split_chunks(negative_ids, size=size, comma_id=comma_id, backtrack=backtrack)
    chunks = max(len(positive), len(negative))
    # Empty chunks encode to the embedding of "": A1111's padding of the shorter conditioning.
    positive += [[]] * (chunks - len(positive))
    negative += [[]] * (chunks - len(negative))

    # One text-encoder call per prompt (not one for both): with a single chunk each this is the
    # same computation as diffusers' encode_prompt, so the results are bit-identical.
    dtype = pipe.text_encoder.dtype
    prompt_embeds = _encode_chunks(pipe, positive, device).to(dtype=dtype, device=device)
    negative_embeds = _encode_chunks(pipe, negative, device).to(dtype=dtype, device=device)
    return Encoded(
        prompt_embeds=_repeat(prompt_embeds, count),
        negative_prompt_embeds=_repeat(negative_embeds, count),
        tokens=len(positive_ids),
        negative_tokens=len(negative_ids),
        chunks=chunks,
        chunk_tokens=size,
    )
