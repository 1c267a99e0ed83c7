"""The reading-LM family (explorer.model.reading_lm) and its character reader (explorer.model.text_reader): text is exactly the
Llama base, media positions alone move, generation equals step-by-step greedy, folders round-trip through the Auto
classes, and the reader's decoding and line cutting are exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from explorer.inputs.typography import TextLayout, render_text_image
from explorer.model.reading_lm import ReadingLMConfig, ReadingLMForCausalLM
from explorer.model.text_reader import (
    CHARSET,
    ReaderConfig,
    TextReader,
    ctc_greedy,
    line_pixels,
)


def _tiny(seed: int = 0) -> ReadingLMForCausalLM:
    torch.manual_seed(seed)
    config = ReadingLMConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                             num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    model = ReadingLMForCausalLM(config).eval()
    with torch.no_grad():
        for projector in model.media_projectors.values():
            projector.bias.add_(torch.randn(32))
    return model


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, 64, (2, 9), generator=torch.Generator().manual_seed(1))
    types = torch.zeros_like(ids)
    types[:, 2:5] = 1
    types[1, 5:7] = 2
    return ids, types


def test_text_positions_are_the_llama_base_and_media_positions_move():
    model = _tiny()
    ids, types = _inputs()
    with torch.no_grad():
        mixed = model(input_ids=ids, mm_token_type_ids=types).logits
        text = model(input_ids=ids).logits
        zeros = model(input_ids=ids, mm_token_type_ids=torch.zeros_like(ids)).logits
    assert torch.equal(text, zeros)
    torch.testing.assert_close(mixed[:, :2], text[:, :2])  # causal: positions before the first media token agree
    assert (mixed[:, 2:] - text[:, 2:]).abs().amax() > 1e-2


def test_an_untrained_projector_is_the_identity():
    torch.manual_seed(0)
    config = ReadingLMConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2)
    model = ReadingLMForCausalLM(config).eval()
    ids, types = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids, mm_token_type_ids=types).logits, model(input_ids=ids).logits)


def test_generate_equals_step_by_step_greedy_with_generated_tokens_as_text():
    model = _tiny()
    ids, types = _inputs()
    generated = model.generate(input_ids=ids, mm_token_type_ids=types, attention_mask=torch.ones_like(ids),
                               max_new_tokens=5, do_sample=False)
    current, current_types = ids, types
    with torch.no_grad():
        for _ in range(5):
            logits = model(input_ids=current, mm_token_type_ids=current_types).logits[:, -1]
            step = logits.argmax(-1, keepdim=True)
            current, current_types = torch.cat([current, step], 1), torch.cat([current_types, torch.zeros_like(step)], 1)
    assert torch.equal(generated, current)


def test_a_saved_folder_loads_through_the_auto_classes(tmp_path):
    from transformers import AutoConfig, AutoModelForMultimodalLM

    model = _tiny()
    model.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).model_type == "sge_reading_lm"
    loaded = AutoModelForMultimodalLM.from_pretrained(tmp_path).eval()
    ids, types = _inputs()
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids, mm_token_type_ids=types).logits,
                           model(input_ids=ids, mm_token_type_ids=types).logits)


def test_bad_modality_ids_are_refused():
    model = _tiny()
    ids, types = _inputs()
    with pytest.raises(ValueError, match="must match input_ids"):
        model(input_ids=ids, mm_token_type_ids=types[:, :4])
    with pytest.raises(ValueError, match="no projector for: \\[3\\]"):
        model(input_ids=ids, mm_token_type_ids=torch.full_like(ids, 3))
    with pytest.raises(ValueError, match="media_modalities"):
        ReadingLMConfig(media_modalities=("video",))


def test_ctc_greedy_merges_repeats_and_drops_blanks():
    def one_hot(classes: list[int]) -> torch.Tensor:
        return torch.nn.functional.one_hot(torch.tensor(classes), len(CHARSET) + 1).float().log()

    l, o = CHARSET.index("l") + 1, CHARSET.index("o") + 1
    assert ctc_greedy(one_hot([0, l, l, 0, l, o, o, 0])) == "llo"
    assert ctc_greedy(one_hot([0, 0])) == ""


def test_line_cutting_finds_every_rendered_line_at_the_reader_height():
    layout = TextLayout(width=448, height=224, font_size=16, min_font_size=16, margin=8)
    reader = TextReader(ReaderConfig())
    image = render_text_image("Can you write a short poem about the quiet morning light over the hills and the sea?",
                              layout)
    lines = reader.lines_of(image)
    assert len(lines) == 2 and all(line.shape[:2] == (1, 16) for line in lines)
    assert all(0.0 <= float(line.min()) and float(line.max()) <= 1.0 for line in lines)
    assert reader.read(Image.new("RGB", (64, 32), "white")) == ""
    blank = line_pixels(np.full((20, 40), 255.0), 4, 16, 0, 40, 16)
    assert float(blank.abs().max()) == 0.0


def test_reader_round_trips_through_its_folder(tmp_path):
    torch.manual_seed(0)
    reader = TextReader(ReaderConfig()).eval()
    reader.save_pretrained(tmp_path)
    loaded = TextReader.from_pretrained(tmp_path)
    pixels = torch.rand(2, 1, 16, 40)
    assert torch.equal(loaded(pixels), reader(pixels))
    (tmp_path / "reader_config.json").write_text('{"kind": "other"}')
    with pytest.raises(ValueError, match="does not hold a text reader"):
        TextReader.from_pretrained(tmp_path)


class _Says:
    """Stands in for a trained reader: reads every picture or clip as one sentence."""

    def __init__(self, text: str) -> None:
        self.text = text

    def read(self, _media) -> str:
        return self.text


def test_the_processor_puts_read_and_heard_tokens_in_place_of_their_marks():
    from tiny_models import chatml_tokenizer

    from explorer.model.models import chat_messages
    from explorer.model.reading_processor import (
        AUDIO_MARK,
        CHAT_TEMPLATE,
        IMAGE_MARK,
        ReadingProcessor,
    )

    tokenizer = chatml_tokenizer(CHAT_TEMPLATE)
    processor = ReadingProcessor(tokenizer, _Says("bake bread"), speech_reader=_Says("the sea"))  # type: ignore[arg-type]
    assert processor.modalities == ("text", "image", "audio")
    shown, heard = (processor.apply_chat_template(chat_messages("Respond to it.", image, not image)) for image in (1, 0))
    assert shown.count(IMAGE_MARK) == 1 and heard.count(AUDIO_MARK) == 1
    batch = processor(text=[shown, heard], images=[Image.new("RGB", (8, 8))], audio=[np.zeros(1600, np.float32)],
                      sampling_rate=16000)
    for row, (said, kind) in enumerate((("bake bread", 1), ("the sea", 2))):
        types, ids, mask = batch["mm_token_type_ids"][row], batch["input_ids"][row], batch["attention_mask"][row]
        read = tokenizer(said, add_special_tokens=False)["input_ids"]
        first, end = int(types.nonzero()[0]), int(mask.sum())  # the medium's mark runs from its tokens to the end
        assert ids[first : first + len(read)].tolist() == read
        assert types[first:end].eq(kind).all() and types[:first].eq(0).all() and types[end:].eq(0).all()
        assert tokenizer.decode(ids[first + len(read) : end]).startswith("\nRespond to it.")
    with pytest.raises(ValueError, match="1 audio clip marks but 0 audio clips"):
        processor(text=[heard])
    with pytest.raises(ValueError, match="hears 16000 Hz audio"):
        processor(text=[heard], audio=[np.zeros(10, np.float32)], sampling_rate=8000)
    assert ReadingProcessor(tokenizer).modalities == ("text",)
